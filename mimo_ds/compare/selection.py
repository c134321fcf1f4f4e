"""Which runs to compare: by experiment, by tags, or by run id, through MLflow's search API.

MLflow's filter language has AND only, so every `--tag k=v` narrows the selection; run ids are one `IN` clause.
Unknown experiments and run ids are errors that name them, rather than an empty table that looks like "no runs".
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mlflow import MlflowClient
from mlflow.entities import Run, ViewType

from mimo_ds.errors import InputError

DEFAULT_EXPERIMENT = "mimo-ds"


class SelectionError(InputError):
    """The selection names something the store does not have, or cannot be expressed as an MLflow filter."""


@dataclass(frozen=True)
class RunSelection:
    """Experiments (names), tags that must all match, and run ids; empty means the default experiment."""

    experiments: tuple[str, ...] = ()
    tags: dict[str, str] = field(default_factory=dict)
    run_ids: tuple[str, ...] = ()


def _quote(value: str, what: str) -> str:
    if "'" in value:
        raise SelectionError(f"{what} {value!r} contains a single quote, which MLflow filters cannot hold")
    return f"'{value}'"


def build_filter(selection: RunSelection) -> str:
    """The MLflow filter string for the tag and run-id parts of a selection (keys back-quoted: tags hold dots)."""
    clauses = [f"tags.`{key}` = {_quote(value, f'tag {key}')}" for key, value in selection.tags.items()]
    if selection.run_ids:
        ids = ", ".join(_quote(run_id, "run id") for run_id in selection.run_ids)
        clauses.append(f"attributes.run_id IN ({ids})")
    return " AND ".join(clauses)


def _experiment_ids(client: MlflowClient, selection: RunSelection) -> list[str]:
    """Named experiments; all of them when only run ids are given; else the trainer's default experiment."""
    names = selection.experiments or (() if selection.run_ids else (DEFAULT_EXPERIMENT,))
    if not names:
        ids, token = [], None
        while True:
            page = client.search_experiments(view_type=ViewType.ALL, page_token=token)
            ids += [e.experiment_id for e in page]
            if not (token := page.token):
                return ids
    ids, missing = [], []
    for name in names:
        if experiment := client.get_experiment_by_name(name):
            ids.append(experiment.experiment_id)
        else:
            missing.append(name)
    if missing:
        known = sorted(e.name for e in client.search_experiments(view_type=ViewType.ALL))
        raise SelectionError(f"no experiment named {', '.join(missing)}; the store has: {', '.join(known) or 'none'}")
    return ids


def select_runs(client: MlflowClient, selection: RunSelection) -> list[Run]:
    """Runs matching `selection`, oldest first (so tables and plots keep the order runs were made in)."""
    experiment_ids = _experiment_ids(client, selection)
    filter_string = build_filter(selection)
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs(experiment_ids, filter_string, order_by=["attributes.start_time ASC"],
                                  page_token=token)
        runs += page
        if not (token := page.token):
            break
    if missing := set(selection.run_ids) - {run.info.run_id for run in runs}:
        raise SelectionError(f"run ids not found (or not matching the other filters): {', '.join(sorted(missing))}")
    return runs
