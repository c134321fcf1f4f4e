"""`mimo-ds compare --html`: one self-contained HTML file (CSS inline, figures as base64 PNG, no network).

One file because reports get mailed, attached to issues and archived next to results; a folder of images or a CDN
script would break in all three places. When runs repeat an arm over seeds, an "Arms over seeds" table follows the
per-run one and the evaluation figures show each arm's mean with ± 1 standard deviation error bars.
"""

from __future__ import annotations

import base64
import datetime as dt
from html import escape
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Run

from mimo_ds.compare import plots
from mimo_ds.compare.aggregate import format_stat
from mimo_ds.compare.table import (
    INFO_TAGS,
    Arm,
    ComparisonTable,
    format_value,
    group_arms,
    repeated,
    run_label,
    run_tag,
)
from mimo_ds.tracking import TAG_PARENT

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; }
th { background: #f2f2f2; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.group-start td { border-top: 2px solid #666; }
img { max-width: 100%; display: block; margin: 0.5em 0 1.5em; }
.note { color: #777; font-style: italic; }
.wide { overflow-x: auto; }
"""


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{data}">'


def _metrics_table(table: ComparisonTable) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in ["run", "id", *(t for _, t in INFO_TAGS), *table.metrics])
    rows = []
    previous_group = None
    for run, values in zip(table.runs, table.values):
        group = run_tag(run, table.group_by) if table.group_by else None
        css = ' class="group-start"' if table.group_by and rows and group != previous_group else ""
        previous_group = group
        cells = [escape(run_label(run)), f"<code>{escape(run.info.run_id[:8])}</code>",
                 *(escape(run_tag(run, key)) for key, _ in INFO_TAGS)]
        numbers = "".join(f'<td class="num">{format_value(v)}</td>' for v in values)
        rows.append(f"<tr{css}>{''.join(f'<td>{c}</td>' for c in cells)}{numbers}</tr>")
    return f'<div class="wide"><table id="metrics"><tr>{head}</tr>{"".join(rows)}</table></div>'


def _arms_table(arms: list[Arm], metrics: list[str]) -> str:
    """The over-seeds table: one row per arm, each metric as mean ± sample standard deviation."""
    head = "".join(f"<th>{escape(h)}</th>" for h in ["arm", "runs", "seeds", *(t for _, t in INFO_TAGS), *metrics])
    rows = []
    for arm in arms:
        tags = arm.tags
        cells = [escape(arm.label), str(len(arm.runs)), escape(",".join(arm.seeds)),
                 *(escape(tags.get(key, "")) for key, _ in INFO_TAGS)]
        numbers = "".join(f'<td class="num">{escape(format_stat(arm.stat(m)))}</td>' for m in metrics)
        rows.append(f"<tr>{''.join(f'<td>{c}</td>' for c in cells)}{numbers}</tr>")
    return f'<div class="wide"><table id="arms"><tr>{head}</tr>{"".join(rows)}</table></div>'


def _runs_table(client: MlflowClient, runs: list[Run]) -> str:
    experiments = {i: client.get_experiment(i).name for i in {run.info.experiment_id for run in runs}}
    rows = []
    for run in runs:
        started = dt.datetime.fromtimestamp(run.info.start_time / 1000).isoformat(sep=" ", timespec="seconds")
        cells = [run_label(run), run.info.run_id, experiments[run.info.experiment_id], run.info.status, started,
                 run_tag(run, TAG_PARENT)]
        rows.append("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in cells) + "</tr>")
    head = "".join(f"<th>{h}</th>" for h in ["run", "run id", "experiment", "status", "started", "parent run"])
    return f'<div class="wide"><table id="runs"><tr>{head}</tr>{"".join(rows)}</table></div>'


def _figure_or_note(png: bytes | None, alt: str, note: str) -> str:
    return _img(png, alt) if png else f'<p class="note">{escape(note)}</p>'


def render_report(client: MlflowClient, table: ComparisonTable, tracking_uri: str) -> str:
    """The whole report as one HTML string."""
    runs = table.runs
    arms = group_arms(runs)
    over_seeds = (f"<h2>Arms over seeds</h2>\n<p>Each arm's runs (one per seed): mean ± sample standard deviation "
                  f"(n − 1); n/a where an arm has one run.</p>\n{_arms_table(arms, table.metrics)}"
                  if repeated(arms) else "")
    curves = plots.loss_curves(client, runs)
    curve_html = "".join(_img(png, f"loss curves, stage {stage}") for stage, png in curves.items()) or (
        '<p class="note">No run logged a loss metric.</p>')
    generated = dt.datetime.now().isoformat(sep=" ", timespec="seconds")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>mimo-ds run comparison</title><style>{_STYLE}</style></head>
<body>
<h1>mimo-ds run comparison</h1>
<p>{len(runs)} runs from <code>{escape(tracking_uri)}</code>, generated {generated}.</p>
<h2>Final metrics</h2>
{_metrics_table(table)}
{over_seeds}
<h2>Loss curves</h2>
{curve_html}
<h2>nDCG@20 per benchmark</h2>
{_figure_or_note(plots.ndcg_bars(arms), "nDCG@20 per benchmark", "No run logged <benchmark>/ndcg_at_20.")}
<h2>Sweeps</h2>
{_figure_or_note(plots.sweep_curves(arms), "nDCG@20 along each sweep",
                 "No objective's runs differ by a setting it declares swept.")}
<h2>Alignment and uniformity</h2>
{_figure_or_note(plots.alignment_uniformity(arms), "alignment vs uniformity",
                 "No run logged both <benchmark>/alignment and <benchmark>/uniformity.")}
<h2>Language clustering</h2>
<p>Share of each query's top 20 in the query's own language, by query language (lower is less clustered; the dashed
line is what a language-blind ranking would give).</p>
{_figure_or_note(plots.language_clustering(arms), "own-language share of the top 20 per query language",
                 "No run logged <benchmark>/lang/<language>/own_language_share_at_20.")}
<h2>Runs</h2>
{_runs_table(client, runs)}
</body></html>
"""


def write_report(path: str | Path, client: MlflowClient, table: ComparisonTable, tracking_uri: str) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_report(client, table, tracking_uri), encoding="utf-8")
    return out
