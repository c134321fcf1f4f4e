"""The report's figures, rendered to PNG bytes with Matplotlib's Agg canvas.

Figures are built with `matplotlib.figure.Figure` directly, not pyplot: no global figure registry, no GUI backend,
nothing left open between reports. Each function returns None when no run has the data, so the report can say so
instead of showing an empty axis.
"""

from __future__ import annotations

import io
import math
from collections import defaultdict
from fnmatch import fnmatchcase

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from mlflow import MlflowClient
from mlflow.entities import Run

from mimo_ds.compare.table import run_label, run_tag
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


def ndcg_bars(runs: list[Run]) -> bytes | None:
    """Grouped bars: one group per benchmark (`<benchmark>/ndcg_at_20`, and `<benchmark>/xself/ndcg_at_20` as its own
    group; per-language breakdowns left out), one bar per run."""
    benchmarks = sorted({key[: -len(NDCG_SUFFIX)] for run in runs for key in run.data.metrics
                         if key.endswith(NDCG_SUFFIX) and not _per_language(key)})
    if not benchmarks:
        return None
    fig = Figure(figsize=(max(6.0, 1.2 * len(benchmarks) * max(1, len(runs)) / 2), 4), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / len(runs)
    for index, run in enumerate(runs):
        heights = [run.data.metrics.get(f"{b}{NDCG_SUFFIX}", math.nan) for b in benchmarks]
        positions = [b + (index - (len(runs) - 1) / 2) * width for b in range(len(benchmarks))]
        ax.bar(positions, heights, width=width, label=run_label(run))
    ax.set_xticks(range(len(benchmarks)), benchmarks)
    ax.set(ylabel="nDCG@20", title="nDCG@20 per benchmark", ylim=(0, 1))
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small", ncols=min(4, len(runs)))
    return to_png(fig)


def _per_language(key: str) -> bool:
    """`<benchmark>/lang/<a>/...` and `<benchmark>/pair/<a>-<b>/...`: breakdowns, not a benchmark's own number."""
    return "/lang/" in key or "/pair/" in key


def scatter_label(run: Run) -> str:
    """'objective λ=…' when the run has those tags (sweeps differ by them), else the run's name."""
    parts = [run_tag(run, TAG_OBJECTIVE)] + ([f"λ={run_tag(run, TAG_LAMBDA)}"] if run_tag(run, TAG_LAMBDA) else [])
    return " ".join(p for p in parts if p) or run_label(run)


def sweeps(runs: list[Run]) -> dict[tuple[str, str], list[tuple[float, Run]]]:
    """(objective, swept setting) → that objective's runs in order of the setting, for every setting its objective
    declares swept (`mimo.swept` tag) that the runs give at least two values."""
    found: dict[tuple[str, str], list[tuple[float, Run]]] = defaultdict(list)
    for run in runs:
        for name, value in swept_of(run.data.tags).items():
            found[(run_tag(run, TAG_OBJECTIVE), name)].append((float(value), run))
    return {key: sorted(sweep, key=lambda item: item[0]) for key, sweep in sorted(found.items())
            if len({value for value, _ in sweep}) > 1}


def sweep_curves(runs: list[Run]) -> bytes | None:
    """One panel per sweep: each benchmark's nDCG@20 against the swept setting, one line per benchmark."""
    found = sweeps(runs)
    benchmarks = sorted({key[: -len(NDCG_SUFFIX)] for run in runs for key in run.data.metrics
                         if key.endswith(NDCG_SUFFIX) and not _per_language(key)})
    if not found or not benchmarks:
        return None
    fig, axes = _grid(len(found))
    for ax, ((objective, name), sweep) in zip(axes, found.items()):
        for benchmark in benchmarks:
            points = [(value, run.data.metrics[f"{benchmark}{NDCG_SUFFIX}"]) for value, run in sweep
                      if f"{benchmark}{NDCG_SUFFIX}" in run.data.metrics]
            if points:
                ax.plot(*zip(*points), marker="o", label=benchmark)
        ax.set(title=f"{objective}: {name} sweep", xlabel=name, ylabel="nDCG@20")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return to_png(fig)


def alignment_uniformity(runs: list[Run]) -> bytes | None:
    """One panel per benchmark with both `<benchmark>/alignment` and `/uniformity`: one labelled point per run, and
    the runs of each sweep joined by a line in order of the swept setting."""
    benchmarks = sorted({key[: -len(ALIGNMENT_SUFFIX)] for run in runs for key in run.data.metrics
                         if key.endswith(ALIGNMENT_SUFFIX)
                         and f"{key[: -len(ALIGNMENT_SUFFIX)]}{UNIFORMITY_SUFFIX}" in run.data.metrics})
    if not benchmarks:
        return None
    fig, axes = _grid(len(benchmarks), width=5.5, height=4.5)
    for ax, benchmark in zip(axes, benchmarks):
        for run in runs:
            metrics = run.data.metrics
            x, y = metrics.get(f"{benchmark}{ALIGNMENT_SUFFIX}"), metrics.get(f"{benchmark}{UNIFORMITY_SUFFIX}")
            if x is None or y is None:
                continue
            ax.scatter([x], [y], s=40)
            ax.annotate(scatter_label(run), (x, y), textcoords="offset points", xytext=(5, 5), fontsize="small")
        for (objective, name), sweep in sweeps(runs).items():
            points = [(run.data.metrics.get(f"{benchmark}{ALIGNMENT_SUFFIX}"),
                       run.data.metrics.get(f"{benchmark}{UNIFORMITY_SUFFIX}")) for _, run in sweep]
            points = [(x, y) for x, y in points if x is not None and y is not None]
            if len(points) > 1:
                ax.plot(*zip(*points), linestyle="--", zorder=0, label=f"{objective} {name} sweep ({name} ↑)")
                ax.legend(fontsize="small")
        ax.set(title=benchmark, xlabel="alignment (lower is better)", ylabel="uniformity (lower is better)")
        ax.grid(alpha=0.3)
        ax.margins(0.2)
    return to_png(fig)


def language_clustering(runs: list[Run]) -> bytes | None:
    """Per benchmark protocol with `<...>/lang/<a>/own_language_share_at_20`: grouped bars, one group per query
    language and one bar per run (the share of the top 20 in the query's own language), and the share a
    language-blind ranking would give as a dashed line."""
    prefixes = sorted({key.split("/lang/")[0] for run in runs for key in run.data.metrics
                       if fnmatchcase(key, SHARE_PATTERN)})
    if not prefixes:
        return None
    fig, axes = _grid(len(prefixes), width=max(6.0, 0.9 * len(runs) + 4), height=4.0)
    for ax, prefix in zip(axes, prefixes):
        suffix = "/own_language_share_at_20"
        langs = sorted({key[len(prefix) + 6 : -len(suffix)] for run in runs for key in run.data.metrics
                        if key.startswith(f"{prefix}/lang/") and key.endswith(suffix)})
        width = 0.8 / len(runs)
        for index, run in enumerate(runs):
            heights = [run.data.metrics.get(f"{prefix}/lang/{lang}{suffix}", math.nan) for lang in langs]
            positions = [i + (index - (len(runs) - 1) / 2) * width for i in range(len(langs))]
            ax.bar(positions, heights, width=width, label=run_label(run))
        blind = [run.data.metrics[f"{prefix}{BLIND_SUFFIX}"] for run in runs if f"{prefix}{BLIND_SUFFIX}" in run.data.metrics]
        if blind:
            ax.axhline(sum(blind) / len(blind), linestyle="--", color="grey", label="language-blind")
        ax.set_xticks(range(len(langs)), langs)
        ax.set(title=f"{prefix}: own-language share of the top 20", xlabel="query language", ylabel="share",
               ylim=(0, 1))
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize="x-small", ncols=min(3, len(runs) + 1))
    return to_png(fig)
