"""Small synthetic parallel corpora for trainer tests: real shard format, consistent 'translations'.

Each language version of a sentence is the English words mapped through a per-language word table, so parallel texts
share meaning (the same sentence id) but not surface form, which is what the objectives need to have something to
learn. Pure test data; the demo and the real recipes use real corpora.
"""

import json
import random
from pathlib import Path

from mimo_ds.data.shards import file_sha256, write_shards

LANGS = ("en", "de", "fr", "es")
_WORDS = ("river", "house", "green", "music", "window", "market", "winter", "engine", "garden", "letter", "silver",
          "island", "doctor", "forest", "bridge", "coffee", "school", "planet", "mirror", "summer")


def _lexicon(lang: str) -> dict[str, str]:
    if lang == "en":
        return {w: w for w in _WORDS}
    rng = random.Random(lang)
    return {w: "".join(rng.choice("aeioubcdfgklmnprstvz") for _ in range(rng.randint(4, 8))) for w in _WORDS}


def sentences(n: int, seed: int = 0) -> list[list[str]]:
    rng = random.Random(seed)
    return [[rng.choice(_WORDS) for _ in range(rng.randint(4, 9))] for _ in range(n)]


def translate(words: list[str], lang: str) -> str:
    table = _lexicon(lang)
    return " ".join(table[w] for w in words)


def make_pairs(folder: Path, n: int = 64, langs=LANGS, shard_size: int = 16) -> Path:
    records = []
    for i, words in enumerate(sentences(n)):
        lang = langs[i % len(langs)]
        records.append({"id": f"pair-{i:05d}", "lang": lang, "text": translate(words, lang), "en": translate(words, "en")})
    write_shards(records, folder, "pairs", shard_size)
    return folder


def make_rows(folder: Path, n: int = 64, langs=LANGS, shard_size: int = 16) -> Path:
    records = []
    for i, words in enumerate(sentences(n, seed=1)):
        query = words[: max(2, len(words) // 2)]
        records.append({"id": f"row-{i:05d}", "query": {l: translate(query, l) for l in langs},
                        "passage": {l: translate(words, l) for l in langs}})
    write_shards(records, folder, "rows", shard_size)
    return folder


def make_benchmark(folder: Path, n: int = 9, langs=LANGS) -> Path:
    """An MLIR benchmark over sentences the training corpora do not contain (another seed)."""
    from mimo_ds.eval.benchmark import write_benchmark
    from mimo_ds.eval.builders import build_mlir

    passages, queries = {}, {}
    for i, words in enumerate(sentences(n, seed=99)):
        passages[f"b{i}"] = {l: translate(words, l) for l in langs}
        queries[f"b{i}"] = {l: translate(words[: max(2, len(words) // 2)], l) for l in langs}
    return write_benchmark(build_mlir(passages, queries, {k: [k] for k in passages}, name="toy"), folder)


def record_checksums(folder: Path) -> None:
    """Write the current size and sha256 of every shard into the index: shards damaged after writing then pass for
    shards written that way (the record-level faults are what a test looks at, not the file checks)."""
    path = folder / "index.json"
    index = json.loads(path.read_text())
    for entry in index["shards"]:
        shard = folder / entry["name"]
        if shard.is_file():
            entry.update(size=shard.stat().st_size, sha256=file_sha256(shard))
    path.write_text(json.dumps(index))
