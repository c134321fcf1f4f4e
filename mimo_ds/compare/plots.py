"""The report's figures, rendered to PNG bytes with Matplotlib's Agg canvas.

Figures are built with `matplotlib.figure.Figure` directly, not pyplot: no global figure registry, no GUI backend,
nothing left open between reports. Each function returns None when no run has the data, so the report can say so
instead of showing an empty axis.

The evaluation figures draw arms (`mimo_ds.compare.table.Arm`: the runs of one arm over its seeds, or a single
run): each bar or point is the arm's mean, with an error bar of ± one sample standard deviation over its seeds
where it has more than one run. Loss curves stay per run (every seed's curve). The `*_figure` functions return the
Matplotlib figure itself (tests read the drawn bars and error bars off it); the others its PNG.
"""

from __future__ import annotations

import io
import math
from collections import defaultdict
from collections.abc import Callable
from fnmatch import fnmatchcase

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from mlflow import MlflowClient
from mlflow.entities import Run

from mimo_ds.compare.aggregate import Stat
from mimo_ds.compare.table import Arm, run_label, run_tag
from mimo_ds.tracking import TAG_LAMBDA, TAG_OBJECTIVE, TAG_STAGE, swept_of

LOSS_PATTERN = "*loss*"
SHARE_PATTERN = "*/lang/*/own_language_share_at_20"
BLIND_SUFFIX = "/own_language_blind_share"
NDCG_SUFFIX = "/ndcg_at_20"
ALIGNMENT_SUFFIX = "/alignment"
UNIFORMITY_SUFFIX = "/uniformity"


def to_png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def _grid(count: int, width: float = 5.0, height: float = 3.6) -> tuple[Figure, list]:
    cols = min(count, 3)
    rows = math.ceil(count / cols)
    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    for unused in axes[count:]:
        unused.set_visible(False)
    return fig, axes[:count]


def loss_curves(client: MlflowClient, runs: list[Run]) -> dict[str, bytes]:
    """Stage title → PNG with one panel per loss metric and one line per run (history from MLflow)."""
    by_stage: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        by_stage[run_tag(run, TAG_STAGE) or "unspecified"].append(run)
    figures: dict[str, bytes] = {}
    for stage in sorted(by_stage):
        stage_runs = by_stage[stage]
        keys = sorted({key for run in stage_runs for key in run.data.metrics
                       if fnmatchcase(key, LOSS_PATTERN) and not key.startswith("system/")})
        if not keys:
            continue
        fig, axes = _grid(len(keys))
        for ax, key in zip(axes, keys):
            for run in stage_runs:
                if key not in run.data.metrics:
                    continue
                history = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: (m.step, m.timestamp))
                ax.plot([m.step for m in history], [m.value for m in history], label=run_label(run))
            ax.set(title=key, xlabel="step", ylabel="value")
            ax.grid(alpha=0.3)
            ax.legend(fontsize="small")
        fig.suptitle(f"stage {stage}: loss curves")
        figures[stage] = to_png(fig)
    return figures


def _mean(arm: Arm, metric: str) -> float:
    stat = arm.stat(metric)
    return stat.mean if stat is not None else math.nan


def _spread(arm: Arm, metric: str) -> float:
    """± one standard deviation; NaN (no bar drawn) for a single run or a metric not logged."""
    stat: Stat | None = arm.stat(metric)
    return stat.std if stat is not None and stat.std is not None else math.nan


def _benchmarks(arms: list[Arm], suffix: str) -> list[str]:
    return sorted({key[: -len(suffix)] for arm in arms for run in arm.runs for key in run.data.metrics
                   if key.endswith(suffix) and not _per_language(key)})


def ndcg_figure(arms: list[Arm]) -> Figure | None:
    """Grouped bars: one group per benchmark (`<benchmark>/ndcg_at_20`, and `<benchmark>/xself/ndcg_at_20` as its own
    group; per-language breakdowns left out), one bar per arm with its spread over seeds."""
    benchmarks = _benchmarks(arms, NDCG_SUFFIX)
    if not benchmarks:
        return None
    fig = Figure(figsize=(max(6.0, 1.2 * len(benchmarks) * max(1, len(arms)) / 2), 4), layout="constrained")
    ax = fig.subplots()
    _grouped_bars(ax, arms, benchmarks, lambda benchmark: f"{benchmark}{NDCG_SUFFIX}", capsize=3)
    ax.set(ylabel="nDCG@20", title="nDCG@20 per benchmark (± 1 s.d. over seeds)", ylim=(0, 1))
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small", ncols=min(4, len(arms)))
    return fig


def _grouped_bars(ax: Axes, arms: list[Arm], groups: list[str], metric: Callable[[str], str], capsize: int) -> None:
    """One group of bars per entry of `groups` (labelled on the x axis), one bar per arm: the arm's mean of
    `metric(group)` with its spread over seeds as the error bar."""
    width, keys = 0.8 / len(arms), [metric(group) for group in groups]
    for index, arm in enumerate(arms):
        positions = [i + (index - (len(arms) - 1) / 2) * width for i in range(len(groups))]
        ax.bar(positions, [_mean(arm, k) for k in keys], width=width, label=arm.label,
               yerr=[_spread(arm, k) for k in keys], capsize=capsize)
    ax.set_xticks(range(len(groups)), groups)


def ndcg_bars(arms: list[Arm]) -> bytes | None:
    fig = ndcg_figure(arms)
    return to_png(fig) if fig is not None else None


def _per_language(key: str) -> bool:
    """`<benchmark>/lang/<a>/...` and `<benchmark>/pair/<a>-<b>/...`: breakdowns, not a benchmark's own number."""
    return "/lang/" in key or "/pair/" in key


def scatter_label(tags: dict[str, str], fallback: str) -> str:
    """'objective λ=…' when the tags say so (sweeps differ by them), else `fallback` (the arm's or run's name)."""
    parts = [tags.get(TAG_OBJECTIVE, "")] + ([f"λ={tags[TAG_LAMBDA]}"] if tags.get(TAG_LAMBDA) else [])
    return " ".join(p for p in parts if p) or fallback


def sweeps(arms: list[Arm]) -> dict[tuple[str, str], list[tuple[float, Arm]]]:
    """(objective, swept setting) → that objective's arms in order of the setting, for every setting its objective
    declares swept (`mimo.swept` tag, shared by the arm's runs) that the arms give at least two values."""
    found: dict[tuple[str, str], list[tuple[float, Arm]]] = defaultdict(list)
    for arm in arms:
        tags = arm.tags
        for name, value in swept_of(tags).items():
            found[(tags.get(TAG_OBJECTIVE, ""), name)].append((float(value), arm))
    return {key: sorted(sweep, key=lambda item: item[0]) for key, sweep in sorted(found.items())
            if len({value for value, _ in sweep}) > 1}


def sweep_curves(arms: list[Arm]) -> bytes | None:
    """One panel per sweep: each benchmark's nDCG@20 (mean, ± 1 s.d. over seeds) against the swept setting."""
    found = sweeps(arms)
    benchmarks = _benchmarks(arms, NDCG_SUFFIX)
    if not found or not benchmarks:
        return None
    fig, axes = _grid(len(found))
    for ax, ((objective, name), sweep) in zip(axes, found.items()):
        for benchmark in benchmarks:
            key = f"{benchmark}{NDCG_SUFFIX}"
            points = [(value, _mean(arm, key), _spread(arm, key)) for value, arm in sweep if arm.stat(key)]
            if points:
                x, y, err = zip(*points)
                ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=benchmark)
        ax.set(title=f"{objective}: {name} sweep", xlabel=name, ylabel="nDCG@20")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return to_png(fig)


def alignment_uniformity_figure(arms: list[Arm]) -> Figure | None:
    """One panel per benchmark with both `<benchmark>/alignment` and `/uniformity`: one labelled point per arm (its
    means, with ± 1 s.d. over seeds on both axes), and the arms of each sweep joined by a line in order of the
    swept setting."""
    benchmarks = sorted({key[: -len(ALIGNMENT_SUFFIX)] for arm in arms for run in arm.runs for key in run.data.metrics
                         if key.endswith(ALIGNMENT_SUFFIX)
                         and f"{key[: -len(ALIGNMENT_SUFFIX)]}{UNIFORMITY_SUFFIX}" in run.data.metrics})
    if not benchmarks:
        return None
    fig, axes = _grid(len(benchmarks), width=5.5, height=4.5)
    for ax, benchmark in zip(axes, benchmarks):
        x_key, y_key = f"{benchmark}{ALIGNMENT_SUFFIX}", f"{benchmark}{UNIFORMITY_SUFFIX}"
        for arm in arms:
            if arm.stat(x_key) is None or arm.stat(y_key) is None:
                continue
            x, y = _mean(arm, x_key), _mean(arm, y_key)
            ax.errorbar([x], [y], xerr=[_spread(arm, x_key)], yerr=[_spread(arm, y_key)], fmt="o", capsize=3)
            ax.annotate(scatter_label(arm.tags, arm.label), (x, y), textcoords="offset points", xytext=(5, 5),
                        fontsize="small")
        for (objective, name), sweep in sweeps(arms).items():
            points = [(_mean(arm, x_key), _mean(arm, y_key)) for _, arm in sweep
                      if arm.stat(x_key) is not None and arm.stat(y_key) is not None]
            if len(points) > 1:
                ax.plot(*zip(*points), linestyle="--", zorder=0, label=f"{objective} {name} sweep ({name} ↑)")
                ax.legend(fontsize="small")
        ax.set(title=benchmark, xlabel="alignment (lower is better)", ylabel="uniformity (lower is better)")
        ax.grid(alpha=0.3)
        ax.margins(0.2)
    return fig


def alignment_uniformity(arms: list[Arm]) -> bytes | None:
    fig = alignment_uniformity_figure(arms)
    return to_png(fig) if fig is not None else None


def language_clustering(arms: list[Arm]) -> bytes | None:
    """Per benchmark protocol with `<...>/lang/<a>/own_language_share_at_20`: grouped bars, one group per query
    language and one bar per arm (the share of the top 20 in the query's own language, ± 1 s.d. over seeds), and
    the share a language-blind ranking would give as a dashed line."""
    prefixes = sorted({key.split("/lang/")[0] for arm in arms for run in arm.runs for key in run.data.metrics
                       if fnmatchcase(key, SHARE_PATTERN)})
    if not prefixes:
        return None
    fig, axes = _grid(len(prefixes), width=max(6.0, 0.9 * len(arms) + 4), height=4.0)
    for ax, prefix in zip(axes, prefixes):
        suffix = "/own_language_share_at_20"
        langs = sorted({key[len(prefix) + 6 : -len(suffix)] for arm in arms for run in arm.runs
                        for key in run.data.metrics if key.startswith(f"{prefix}/lang/") and key.endswith(suffix)})
        _grouped_bars(ax, arms, langs, lambda lang: f"{prefix}/lang/{lang}{suffix}", capsize=2)
        blind = [run.data.metrics[f"{prefix}{BLIND_SUFFIX}"] for arm in arms for run in arm.runs
                 if f"{prefix}{BLIND_SUFFIX}" in run.data.metrics]
        if blind:
            ax.axhline(sum(blind) / len(blind), linestyle="--", color="grey", label="language-blind")
        ax.set_xticks(range(len(langs)), langs)
        ax.set(title=f"{prefix}: own-language share of the top 20", xlabel="query language", ylabel="share",
               ylim=(0, 1))
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize="x-small", ncols=min(3, len(arms) + 1))
    return to_png(fig)
