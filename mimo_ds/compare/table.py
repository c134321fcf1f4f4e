"""The comparison table: one row per run, the run's identifying tags, then the chosen metrics' final values; and
when runs repeat an arm over seeds (`mimo.arm` / `mimo.seed` tags, `mimo_ds.compare.aggregate`), one row per arm
with each metric's mean ± standard deviation over its seeds.

Values come straight from MLflow (`run.data.metrics` holds each metric's value at its last step), so the terminal
table and the HTML report show the same numbers the MLflow UI does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from difflib import get_close_matches
from fnmatch import fnmatchcase
from functools import cached_property

from mlflow.entities import Run
from rich.table import Table

from mimo_ds.compare.aggregate import TAG_ARM, TAG_SEED, Stat, aggregate, format_stat
from mimo_ds.compare.selection import SelectionError
from mimo_ds.tracking import TAG_GROUP, TAG_LAMBDA, TAG_OBJECTIVE, TAG_STAGE, sanitize_name

#: Final loss parts and every benchmark's nDCG@20; system metrics never match (they live under "system/").
DEFAULT_METRIC_PATTERNS = ("loss/*", "*/ndcg_at_20")

#: Tags shown beside the run name, with their column titles.
INFO_TAGS = ((TAG_STAGE, "stage"), (TAG_OBJECTIVE, "objective"), (TAG_LAMBDA, "λ"), (TAG_GROUP, "group"))

_GLOB_CHARS = set("*?[")


def run_label(run: Run) -> str:
    """A run's display name: its MLflow run name, else the start of its id."""
    return run.info.run_name or run.info.run_id[:8]


def run_tag(run: Run, key: str) -> str:
    return run.data.tags.get(key, "")


def choose_metrics(runs: list[Run], patterns: tuple[str, ...] | list[str] = DEFAULT_METRIC_PATTERNS, *,
                   require_match: bool = False) -> list[str]:
    """Metric columns: names and globs in the order given; globs expand to the sorted names some run has.

    Patterns are sanitised like logged names, so `mlir/ndcg@20` finds `mlir/ndcg_at_20`. With `require_match`
    (patterns the user typed), a name or glob that no selected run has is a SelectionError naming it and the
    nearest logged names, rather than a column of blanks or none; otherwise an exact name still gets its column.
    """
    available = sorted({key for run in runs for key in run.data.metrics if not key.startswith("system/")})
    chosen: list[str] = []
    for raw in patterns:
        pattern = raw.replace("@", "_at_")
        if _GLOB_CHARS & set(pattern):
            # a glob matches names as deep as itself: '*/ndcg_at_20' is per benchmark, not per language under it
            depth = pattern.count("/")
            matches = [key for key in available if key.count("/") == depth and fnmatchcase(key, pattern)]
        else:
            matches = [sanitize_name(pattern)]
        if require_match and not set(matches) & set(available):
            raise SelectionError(_unknown_metric(raw, pattern, available))
        chosen += [key for key in matches if key not in chosen]
    return chosen


def _unknown_metric(raw: str, pattern: str, available: list[str]) -> str:
    close = get_close_matches(pattern, available, n=5, cutoff=0.5)
    known = close or available[:12]
    return (f"--metrics {raw!r}: no selected run logged such a metric; "
            + (f"{'close' if close else 'logged'} names: {', '.join(known)}" if known else "the runs logged none")
            + ("" if close or len(available) <= 12 else f" (and {len(available) - 12} more)"))


@dataclass(frozen=True)
class ComparisonTable:
    """Runs (in display order) × metrics; a missing metric is None."""

    runs: list[Run]
    metrics: list[str]
    group_by: str | None = None

    @property
    def values(self) -> list[list[float | None]]:
        return [[run.data.metrics.get(metric) for metric in self.metrics] for run in self.runs]


def build_table(runs: list[Run], metrics: list[str], group_by: str | None = None) -> ComparisonTable:
    """Order runs by the `group_by` tag (stable, so runs keep their start order inside a group)."""
    ordered = sorted(runs, key=lambda run: run_tag(run, group_by)) if group_by else list(runs)
    return ComparisonTable(ordered, metrics, group_by)


def format_value(value: float | None) -> str:
    if value is None:
        return "–"
    if math.isnan(value):
        return "nan"
    return f"{value:.4f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3e}"


def render_table(table: ComparisonTable) -> Table:
    """A rich table; with `group_by`, a rule separates the groups."""
    out = Table(title="mimo-ds runs", show_lines=False)
    out.add_column("run", style="bold", no_wrap=True)
    out.add_column("id", style="dim")
    for _, title in INFO_TAGS:
        out.add_column(title)
    for metric in table.metrics:
        out.add_column(metric, justify="right", no_wrap=True, min_width=len(metric))
    for index, (run, row) in enumerate(zip(table.runs, table.values)):
        last_of_group = table.group_by is not None and (
            index + 1 == len(table.runs) or run_tag(table.runs[index + 1], table.group_by) != run_tag(run, table.group_by)
        )
        out.add_row(run_label(run), run.info.run_id[:8], *(run_tag(run, key) for key, _ in INFO_TAGS),
                    *(format_value(value) for value in row), end_section=last_of_group)
    return out


@dataclass(frozen=True)
class Arm:
    """The runs of one arm (one `mimo.arm` tag value, its seeds in start order), or one run without that tag."""

    label: str
    runs: tuple[Run, ...]

    @property
    def tags(self) -> dict[str, str]:
        """The tags every run of the arm shares (objective, λ, swept settings; not the seed)."""
        first, *rest = self.runs
        return {k: v for k, v in first.data.tags.items() if all(r.data.tags.get(k) == v for r in rest)}

    @property
    def seeds(self) -> list[str]:
        return [run_tag(run, TAG_SEED) for run in self.runs if run_tag(run, TAG_SEED)]

    @cached_property
    def stats(self) -> dict[str, Stat]:
        return aggregate([run.data.metrics for run in self.runs])

    def stat(self, metric: str) -> Stat | None:
        return self.stats.get(metric)


def group_arms(runs: list[Run]) -> list[Arm]:
    """Runs → arms in the order each arm's first run started; a run without a `mimo.arm` tag is an arm of its own,
    labelled by its name."""
    groups: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        arm = run_tag(run, TAG_ARM)
        groups.setdefault(("arm", arm) if arm else ("run", run.info.run_id), []).append(run)
    return [Arm(key if kind == "arm" else run_label(members[0]), tuple(members))
            for (kind, key), members in groups.items()]


def repeated(arms: list[Arm]) -> bool:
    """Whether some arm holds more than one run (then the over-seeds table is worth showing)."""
    return any(len(arm.runs) > 1 for arm in arms)


def render_arm_table(arms: list[Arm], metrics: list[str]) -> Table:
    """One row per arm: its seeds, the tags its runs share, each metric's mean ± sample standard deviation."""
    out = Table(title="mimo-ds arms over seeds (mean ± sample standard deviation; n/a: one run)")
    out.add_column("arm", style="bold", no_wrap=True)
    out.add_column("runs", justify="right")
    out.add_column("seeds")
    for _, title in INFO_TAGS:
        out.add_column(title)
    for metric in metrics:
        out.add_column(metric, justify="right", no_wrap=True, min_width=len(metric))
    for arm in arms:
        tags = arm.tags
        out.add_row(arm.label, str(len(arm.runs)), ",".join(arm.seeds), *(tags.get(key, "") for key, _ in INFO_TAGS),
                    *(format_stat(arm.stat(metric)) for metric in metrics))
    return out
