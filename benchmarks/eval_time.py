"""Where an evaluation's time goes, and what the fairness metrics' own rank code saves over scipy's per-call functions.

The demo evaluates every model it trains on its two MLIR benchmarks (`mimo_ds.demo.build_benchmarks`), so evaluation
time is part of the demo's hour. This benchmark encodes both benchmarks once with the demo's untrained start (the
lower 4 layers of multilingual-e5-small, as `mimo-ds demo` evaluates it), then times, with repeats:
- `evaluate_benchmark` end to end, as a run's final evaluation calls it, and the encoding inside it;
- MRC@k for every k the runner reports: ours (`mean_rank_correlation`) against the same definition computed with
  `scipy.stats.spearmanr` per language pair;
- PEER@k for every k the runner reports: ours (`peer`) against `scipy.stats.kruskal` per query.
Each pair of implementations runs side by side, interleaved, on the same embeddings and top-k lists, and their
results are checked equal (1e-9) before any time is reported. Prints a table; writes JSON (`result_file.py`).

    python benchmarks/eval_time.py --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from result_file import write_result
from scipy.stats import kruskal, spearmanr

from mimo_ds.data.wheels import DEMO_LANGUAGES
from mimo_ds.demo import STUDENTS, build_benchmarks
from mimo_ds.eval.benchmark import Benchmark, load_benchmark
from mimo_ds.eval.encoding import encode_all, load_encoder
from mimo_ds.eval.fairness import mean_rank_correlation, peer
from mimo_ds.eval.runner import MRC_K, PEER_K, evaluate_benchmark, relevant_positions
from mimo_ds.eval.search import top_k
from mimo_ds.models.loading import resolve_model_path


def mrc_scipy(q: np.ndarray, d: np.ndarray, top: np.ndarray, langs: list[str], groups: list[str | None],
              k: int) -> tuple[float, dict[str, float]]:
    """MRC@k by its definition (fairness.py's docstring) with one `spearmanr` call per pair of parallel queries."""
    members: dict[str, dict[str, int]] = defaultdict(dict)
    for i, (lang, group) in enumerate(zip(langs, groups)):
        if group is not None:
            members[group].setdefault(lang, i)
    per_lang: dict[str, list[float]] = defaultdict(list)
    for rows in members.values():
        scores = dict(zip(rows, q[list(rows.values())] @ d.T))  # as ours: float32 scores are compared, not recomputed
        for a in rows:
            rhos = []
            for b in rows:
                union = np.union1d(top[rows[a], :k], top[rows[b], :k])
                if b == a or len(union) < 2:
                    continue
                rho = spearmanr(scores[a][union], scores[b][union]).statistic
                if not np.isnan(rho):
                    rhos.append(rho)
            if rhos:
                per_lang[a].append(float(np.mean(rhos)))
    by_lang = {lang: 100.0 * float(np.mean(v)) for lang, v in sorted(per_lang.items())}
    return float(np.mean(list(by_lang.values()))), by_lang


def peer_scipy(top: np.ndarray, relevant: list[list[int]], doc_langs: list[str], langs: list[str],
               k: int) -> tuple[float, dict[str, float]]:
    """PEER@k by its definition with one `kruskal` call per query (p = 1 where every capped rank ties)."""
    per_lang: dict[str, list[float]] = defaultdict(list)
    for i, rel in enumerate(relevant):
        positions = {int(doc): r + 1 for r, doc in enumerate(top[i, :k])}
        by_lang: dict[str, list[int]] = defaultdict(list)
        for doc in rel:
            by_lang[doc_langs[doc]].append(positions.get(doc, k + 1))
        if len(by_lang) < 2:
            continue
        pooled = {r for ranks in by_lang.values() for r in ranks}
        per_lang[langs[i]].append(1.0 if len(pooled) == 1 else float(kruskal(*by_lang.values()).pvalue))
    by_lang_p = {lang: float(np.mean(v)) for lang, v in sorted(per_lang.items())}
    return float(np.mean([p for v in per_lang.values() for p in v])), by_lang_p


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    started = time.perf_counter()
    out = fn()
    return time.perf_counter() - started, out


def same(a: tuple[float, dict[str, float]], b: tuple[float, dict[str, float]]) -> bool:
    return a[1].keys() == b[1].keys() and all(np.isclose([a[0], *a[1].values()], [b[0], *b[1].values()],
                                                         rtol=1e-9, atol=1e-12))


def compare(bench: Benchmark, q: np.ndarray, d: np.ndarray, top: np.ndarray, repeats: int) -> list[dict]:
    """Ours against scipy per call, interleaved, for every MRC and PEER cut-off the runner reports."""
    langs = [query.lang for query in bench.queries]
    groups = [query.group for query in bench.queries]
    doc_langs = [doc.lang for doc in bench.corpus]
    relevant = relevant_positions(bench)
    cases = [(f"mrc_at_{k}", lambda k=k: mean_rank_correlation(q, d, top, langs, groups, k),
              lambda k=k: mrc_scipy(q, d, top, langs, groups, k)) for k in MRC_K]
    cases += [(f"peer_at_{k}", lambda k=k: peer(top, relevant, doc_langs, langs, k),
               lambda k=k: peer_scipy(top, relevant, doc_langs, langs, k)) for k in PEER_K]
    rows = []
    for metric, ours, reference in cases:
        times: dict[str, list[float]] = {"ours": [], "scipy": []}
        for _ in range(repeats):
            t_ours, got = timed(ours)
            t_ref, want = timed(reference)
            if not same(got, want):
                raise SystemExit(f"{bench.name} {metric}: ours {got[0]} != scipy {want[0]}")
            times["ours"].append(t_ours)
            times["scipy"].append(t_ref)
        rows.append({"benchmark": bench.name, "part": metric, "value": got[0],
                     **{f"{who}_s": summary(t) for who, t in times.items()}})
    return rows


def summary(times: list[float]) -> dict[str, float]:
    return {"median": statistics.median(times), "min": min(times), "max": max(times), "n": len(times)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, help="JSON path (default benchmarks/results/<host>/eval_time.json)")
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        benchmarks = [load_benchmark(path) for path in build_benchmarks(Path(tmp), DEMO_LANGUAGES)]
    student = STUDENTS["e5"]  # as `evaluate_start` loads it (untrimmed: the demo's trim keeps every token the same)
    encoder = load_encoder(Path(resolve_model_path(student.path)), query_prompt=student.query_prompt,
                           passage_prompt=student.passage_prompt, max_length=64, device="cpu",
                           num_layers=student.num_layers)
    rows = []
    for bench in benchmarks:
        infos = [evaluate_benchmark(bench, encoder.encode, batch_size=64).info for _ in range(args.repeats)]
        size = {"queries": len(bench.queries), "docs": len(bench.corpus)}
        rows.append({"benchmark": bench.name, "part": "evaluate_benchmark (all)", **size,
                     "ours_s": summary([info["total_s"] for info in infos])})
        rows.append({"benchmark": bench.name, "part": "  of which encoding", **size,
                     "ours_s": summary([info["encode_s"] for info in infos])})
        d = encode_all(encoder.encode, [doc.text for doc in bench.corpus], "passage", batch_size=64).numpy()
        q = encode_all(encoder.encode, [query.text for query in bench.queries], "query", batch_size=64).numpy()
        top = top_k(torch.from_numpy(q), torch.from_numpy(d), max(*MRC_K, *PEER_K))[1].numpy()
        rows += compare(bench, q, d, top, args.repeats)
    print(f"{'benchmark':22} {'part':40} {'ours s (min-max)':>22} {'scipy s (min-max)':>22} {'ratio':>6}")
    for row in rows:
        cells = [f"{s['median']:.3f} ({s['min']:.3f}-{s['max']:.3f})" if (s := row.get(f"{who}_s")) else "-"
                 for who in ("ours", "scipy")]
        ratio = f"{row['scipy_s']['median'] / row['ours_s']['median']:.1f}x" if "scipy_s" in row else ""
        print(f"{row['benchmark']:22} {row['part']:40} {cells[0]:>22} {cells[1]:>22} {ratio:>6}")
    write_result("eval_time", {"student": f"{student.path}@{student.num_layers}", "repeats": args.repeats,
                               "rows": rows}, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
