"""The training loop of one stage, on `deepspeed.initialize` (ZeRO-2/3), with a co-located frozen teacher.

`run` is called on every rank after `train.py` validated the config (and chose the checkpoint to resume from, if
any); it owns the process group's lifetime. Each step: fetch the batches (the ranks agree that every rank has them),
accumulate the gradients (`mimo_ds.step`), agree on whether the loss is finite and whether a stop signal came, let
DeepSpeed step (it skips a non-finite gradient norm), judge the step (`mimo_ds.guard`), record, log, evaluate,
checkpoint (`mimo_ds.checkpoint`). Every agreement is one tiny all-reduce, so a failure or a signal on one rank
stops all of them together instead of leaving the others waiting in a collective.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist
from transformers import PreTrainedTokenizerBase

from mimo_ds.batch import Batch
from mimo_ds.checkpoint import CheckpointManager, OutOfSpace
from mimo_ds.config import RunConfig
from mimo_ds.data.audit import AuditTrail
from mimo_ds.data.bad_report import BAD_RECORDS_FILE, bad_record_report, report_metrics
from mimo_ds.data.loader import LoaderSpec, TrainLoader, build_train_loader
from mimo_ds.data.shards import read_index
from mimo_ds.data.teacher_cache import read_cache_meta, teacher_width
from mimo_ds.distributed import agree_any, first_rank, init_process_group
from mimo_ds.ds_config import (
    build_ds_config,
    keeps_resident,
    make_resident,
    offloads_optimizer,
    resolve_precision,
    zero_stage,
)
from mimo_ds.errors import RunAborted, RunError
from mimo_ds.guard import StepGuard, is_finite
from mimo_ds.jsonl import keep_until
from mimo_ds.models.encoding import encode_texts
from mimo_ds.models.stage_output import gather_fp32_state, read_student_meta, write_stage_output
from mimo_ds.models.student import Student, build_student, student_size, student_tokenizer
from mimo_ds.models.teacher import Teacher
from mimo_ds.objectives import Objective, build_objective, objective_class
from mimo_ds.progress import StepMeter
from mimo_ds.run_dir import METRICS_FILE, SetAside, run_identity
from mimo_ds.signals import EXIT_PREEMPTED, Preempted, StopRequests
from mimo_ds.step import accumulate_gradients
from mimo_ds.tracking import (
    RUN_ID_FILE_ENV,
    TAG_CHECKPOINT,
    TAG_OBJECTIVE,
    TAG_RECIPE,
    TAG_RESUMABLE,
    TAG_STAGE,
    Tracker,
    resolve_tracking_uri,
    sweep_tags,
)

if TYPE_CHECKING:
    from deepspeed import DeepSpeedEngine
    from transformers.integrations import HfDeepSpeedConfig


def seed_everything(seed: int, rank: int) -> None:
    """Same seed for model init on every rank (ZeRO-3 partitions identical weights); data order is the loader's job."""
    random.seed(seed + rank)
    np.random.seed(seed + rank)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def linear_warmup_decay(total_steps: int, warmup_ratio: float):
    """HF Trainer's linear schedule: 0 → 1 over the warm-up steps, then 1 → 0 at the last step."""
    warmup = math.ceil(total_steps * warmup_ratio)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return factor


def build_optimizer(student: Student, cfg: RunConfig, ds: dict[str, Any]) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases and norms. DeepSpeedCPUAdam when ZeRO offloads the optimizer (it insists)."""
    decay, no_decay = [], []
    for name, param in student.named_parameters():
        (no_decay if param.ndim < 2 or "norm" in name.lower() else decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    kwargs = {"lr": cfg.optim.lr, "betas": cfg.optim.betas, "eps": cfg.optim.eps}
    if offloads_optimizer(ds):
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(groups, adamw_mode=True, **kwargs)
    return torch.optim.AdamW(groups, **kwargs)


def total_steps(cfg: RunConfig, batches_per_epoch: int) -> int:
    """Optimizer steps: the loader's batches per epoch (identical on every rank) / grad_accum × epochs, capped."""
    steps = batches_per_epoch // cfg.batch.grad_accum * cfg.epochs
    if steps < 1:
        raise ValueError(f"{cfg.data.train} yields {batches_per_epoch} batches per epoch on each rank: fewer than "
                         f"grad_accum ({cfg.batch.grad_accum}); use fewer ranks, a smaller batch or more data")
    return min(steps, cfg.max_steps) if cfg.max_steps else steps


def build_loader(cfg: RunConfig, tokenizer: PreTrainedTokenizerBase, teacher: Teacher | None, rank: int,
                 world: int) -> TrainLoader:
    spec = LoaderSpec(
        shards=cfg.data.train, objective=cfg.objective.kind, student_tokenizer=tokenizer,
        batch_size=cfg.batch.per_device, teacher_tokenizer=teacher.tokenizer if teacher else None,
        student_prompts=(cfg.student.query_prompt, cfg.student.passage_prompt),
        teacher_query_prompt=cfg.teacher.query_prompt if cfg.teacher else "",
        teacher_passage_prompt=cfg.teacher.passage_prompt if cfg.teacher else "",
        languages=cfg.data.languages, student_max_length=cfg.student.max_length,
        teacher_max_length=cfg.teacher.max_length if cfg.teacher else 256, seed=cfg.seed, rank=rank,
        world_size=world, num_workers=cfg.data.num_workers, shuffle_buffer=cfg.data.shuffle_buffer,
        resampled=cfg.data.resampled, steps_per_epoch=cfg.data.steps_per_epoch,
        max_bad_fraction=cfg.data.max_bad_fraction, teacher_cache=cfg.data.teacher_cache,
    )
    return build_train_loader(spec)


def teacher_dim_for(cfg: RunConfig, teacher: Teacher | None) -> int | None:
    """P's output width: the live teacher's, else the one its cache records; None for a teacher-free objective."""
    if not objective_class(cfg.objective.kind).needs_teacher():
        return None
    return teacher.dim if teacher is not None else teacher_width(cfg)


def _parent_run_id(cfg: RunConfig) -> str | None:
    """The MLflow run that produced `init_from` (recorded in its stage metadata), so stage 2 links to stage 1."""
    return read_student_meta(cfg.init_from).get("run_id") if cfg.init_from is not None else None


def student_meta(cfg: RunConfig, student: Student) -> dict[str, Any]:
    """What a stage output (and a checkpoint) records about how the student encodes and how it was trained."""
    return {"pooling": student.pooling, "hidden_size": student.hidden_size, "max_length": cfg.student.max_length,
            "prompts": [cfg.student.query_prompt, cfg.student.passage_prompt], "stage": cfg.stage,
            "objective": cfg.objective.kind}


@dataclass
class Session:
    """Everything one stage holds between setup and finish (tests inspect it, e.g. the teacher's parameters)."""

    cfg: RunConfig
    engine: DeepSpeedEngine
    scheduler: torch.optim.lr_scheduler.LRScheduler
    teacher: Teacher | None
    tokenizer: PreTrainedTokenizerBase
    loader: TrainLoader
    objective: Objective
    tracker: Tracker
    checkpoints: CheckpointManager
    guard: StepGuard
    audit: AuditTrail | None
    steps: int
    start_step: int  # the step a resumed run continues after; 0 for a fresh run
    rank: int
    world: int
    hf_ds: HfDeepSpeedConfig | None  # alive while the engine is: ZeRO-3's hook on transformers
    aside: SetAside | None = None  # --overwrite: the earlier outputs, until this run writes a checkpoint or output
    history: list[dict[str, float]] = field(default_factory=list)

    def replaced(self) -> None:
        """This run has written a checkpoint or its output: the outputs --overwrite set aside can go (rank 0)."""
        if self.aside is not None and self.rank == 0:
            self.aside.discard()
        self.aside = None


def setup(cfg: RunConfig, resume_from: Path | None = None, aside: SetAside | None = None) -> Session:
    """Process group, teacher (before ZeRO-3's HF config exists), student (under it), loader, engine, tracking, and
    the state of the checkpoint `resume_from` when given. `aside` (--overwrite): rank 0 moves the earlier outputs
    into it before any rank writes."""
    import deepspeed

    init_process_group()
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device(deepspeed.get_accelerator().device_name(int(os.environ.get("LOCAL_RANK", "0"))))
    if aside is not None and rank == 0:
        aside.move()
    dist.barrier()
    seed_everything(cfg.seed, rank)
    ds = build_ds_config(cfg, world, device)

    needs_live_teacher = cfg.teacher is not None and cfg.data.teacher_cache is None
    teacher = _collectively(lambda: Teacher.load(cfg.teacher, device), device) if needs_live_teacher else None
    teacher_dim = teacher_dim_for(cfg, teacher)
    hf_ds, student, tokenizer = _collectively(lambda: _build_student(cfg, ds, teacher_dim, device), device)

    loader = build_loader(cfg, tokenizer, teacher, rank, world)
    if cfg.projection.init == "lstsq" and resume_from is None:  # a resumed run restores P from its checkpoint
        from mimo_ds.projection_init import fit_projection

        _collectively(lambda: fit_projection(student, build_loader(cfg, tokenizer, teacher, rank, world),
                                             build_objective(cfg.objective), teacher, cfg.projection, device), device)
    steps = total_steps(cfg, len(loader))
    optimizer = build_optimizer(student, cfg, ds)
    schedule = linear_warmup_decay(steps, cfg.optim.warmup_ratio)
    engine, _, _, scheduler = deepspeed.initialize(  # the schedule is bound to ZeRO's wrapped optimizer
        model=student, optimizer=optimizer, config=ds,
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, schedule),
    )
    checkpoints = CheckpointManager(cfg.output_dir, cfg.checkpoint.every_steps, cfg.checkpoint.keep, rank, world)
    start_step, run_id, skipped = 0, None, 0
    if resume_from is not None:
        restored = _collectively(lambda: checkpoints.read_own(resume_from), device)
        _collectively(lambda: _load_loader_state(loader, restored.loader_state, resume_from), device)
        checkpoints.load_engine(engine, restored)
        start_step, run_id = restored.step, restored.run_id
        skipped = int(engine.skipped_steps)
    tracker = _start_tracking(cfg, engine, ds, steps, world, device, run_id)
    if rank == 0:
        cfg.output_dir.mkdir(parents=True, exist_ok=True)
        keep_until(cfg.output_dir / METRICS_FILE, start_step)  # a resumed run's log continues after its checkpoint
        (cfg.output_dir / METRICS_FILE).touch()
    audit = AuditTrail(cfg.output_dir, rank, start_step) if cfg.data.audit else None
    return Session(cfg, engine, scheduler, teacher, tokenizer, loader, build_objective(cfg.objective), tracker,
                   checkpoints, StepGuard(cfg.guard.max_consecutive_skips, skipped), audit, steps, start_step, rank,
                   world, hf_ds, aside)


def _build_student(cfg: RunConfig, ds: dict[str, Any], teacher_dim: int | None, device: torch.device
                   ) -> tuple[HfDeepSpeedConfig | None, Student, PreTrainedTokenizerBase]:
    """ZeRO-3's HF config (residency decided first), the student under it, and its tokenizer: the part of setup
    where a model folder that passed preflight may still fail to load (a corrupt config or weights)."""
    from transformers.integrations import HfDeepSpeedConfig

    if zero_stage(ds) == 3:
        numel, largest = student_size(cfg.student, teacher_dim, cfg.init_from)
        if keeps_resident(cfg.student.resident_params, numel, resolve_precision(cfg.precision, device), device):
            make_resident(ds, largest)
    hf_ds = HfDeepSpeedConfig(ds) if zero_stage(ds) == 3 else None
    student = build_student(cfg.student, teacher_dim, cfg.init_from)
    tokenizer = student_tokenizer(cfg.student, cfg.init_from)
    return hf_ds, student, tokenizer


def _load_loader_state(loader: TrainLoader, state: dict[str, Any], folder: Path) -> None:
    try:
        loader.load_state_dict(state)
    except ValueError as exc:
        raise RunError(f"checkpoint {folder}: {exc}") from exc


def _start_tracking(cfg: RunConfig, engine: DeepSpeedEngine, ds: dict[str, Any], steps: int, world: int,
                    device: torch.device, resume_run_id: str | None) -> Tracker:
    params = {**cfg.model_dump(mode="json"), "world_size": world, "global_batch": ds["train_batch_size"],
              "zero_stage": zero_stage(ds), "precision": resolve_precision(cfg.precision, device),
              "total_steps": steps,
              "zero3_persistence_threshold": ds["zero_optimization"].get("stage3_param_persistence_threshold")}
    tags = {TAG_STAGE: str(cfg.stage), TAG_OBJECTIVE: cfg.objective.kind, TAG_RECIPE: cfg.name,
            **sweep_tags(cfg.objective.swept_values()),
            **cfg.tracking.tags}
    artifacts = {"run_config.json": cfg.model_dump(mode="json"), "deepspeed_config.json": ds,
                 "data_filter_report.json": read_index(cfg.data.train).filter_report}
    tracking = cfg.tracking.model_copy(update={"run_name": cfg.tracking.run_name or cfg.name})
    return Tracker.start(tracking, params=params, tags=tags, parent_run_id=_parent_run_id(cfg), artifacts=artifacts,
                         resume_run_id=resume_run_id)


def _collectively(action, device: torch.device):
    """Run `action` on every rank; if it fails with a RunError/ValueError/RuntimeError/OSError on any rank, every
    rank stops: the lowest failing rank raises its error (printed once), the others RunAborted (quiet)."""
    failure: BaseException | None = None
    result = None
    try:
        result = action()
    except (RunError, ValueError, RuntimeError, OSError) as exc:
        failure = exc
    reporter = first_rank(failure is not None, device)
    if reporter is None:
        return result
    if failure is not None and dist.get_rank() == reporter:
        error = failure if isinstance(failure, RunError) else RunError(str(failure))
        error.local = True
        raise error from failure
    raise RunAborted(f"rank {reporter} stopped the run")


def _remaining_batches(loader: TrainLoader, epochs: int) -> Iterator[Batch]:
    """The batches left: the rest of the loader's current epoch, then whole epochs up to `epochs`."""
    while loader.epoch < epochs:
        yield from loader


def train(s: Session, stop: StopRequests | None = None) -> list[dict[str, float]]:
    """The step loop from the step after `s.start_step`; returns (and keeps) the logged metrics of every step.

    Raises `Preempted` after writing a checkpoint when a stop signal came, `RunError` when the run must end."""
    cfg = s.cfg
    meter = StepMeter(total=s.steps, enabled=s.rank == 0, desc=f"stage {cfg.stage} {cfg.objective.kind}",
                      initial=s.start_step)
    batches = _remaining_batches(s.loader, cfg.epochs)
    s.engine.train()
    for step in range(s.start_step + 1, s.steps + 1):
        micro = _collectively(lambda: [next(batches) for _ in range(cfg.batch.grad_accum)], s.engine.device)
        epoch = s.loader.epoch  # read after the fetch: the loader moves to the next epoch lazily
        lr = s.scheduler.get_last_lr()[0]
        started = time.perf_counter()
        parts = accumulate_gradients(s.engine, s.objective, micro, s.teacher, cfg.batch.mini_batch)
        nonfinite, stopping = agree_any([not is_finite(parts), stop is not None and stop.requested], s.engine.device)
        skipped_before = s.engine.skipped_steps
        s.engine.step()
        metrics = meter.update(parts, micro, lr=lr, seconds=time.perf_counter() - started, world_size=s.world,
                               mini_batch=cfg.batch.mini_batch)
        metrics.update(s.guard.update(step, parts, loss_finite=not nonfinite,
                                      step_skipped=s.engine.skipped_steps > skipped_before))
        if (norm := s.engine.get_global_grad_norm()) is not None:
            metrics["optim/grad_norm"] = float(norm)
        if s.audit is not None:
            s.audit.record(step, epoch, [i for batch in micro for i in batch.ids])
        if cfg.eval.every_steps and step % cfg.eval.every_steps == 0 and step < s.steps:
            metrics.update(_evaluate(s))
        _log(s, metrics, step)
        if s.checkpoints.due(step) or stopping:
            folder = save_checkpoint(s, step)
            if stopping:
                meter.close()
                raise Preempted(step, folder)
    meter.close()
    final = report_bad_records(s)
    if cfg.eval.at_end and cfg.eval.benchmarks:
        final.update(_evaluate(s))
    _log(s, final, s.steps)
    return s.history


def save_checkpoint(s: Session, step: int) -> Path:
    """Collective: the engine state, every rank's RNG and loader state, and what a resume and an export need."""
    student = s.engine.module
    meta = {**run_identity(s.cfg, s.world), "run_id": s.tracker.run_id, "epoch": s.loader.epoch,
            "student": student_meta(s.cfg, student), "teacher": _teacher_fingerprint(s)}

    def write_spec(folder: Path) -> None:
        student.encoder.config.save_pretrained(folder)
        s.tokenizer.save_pretrained(folder)

    folder = s.checkpoints.save(s.engine, step, loader_state=s.loader.state_dict(), meta=meta,
                                run_config=s.cfg.model_dump(mode="json"), write_spec=write_spec)
    s.replaced()
    s.tracker.set_tags({TAG_CHECKPOINT: str(folder)})
    s.tracker.log_metrics(report_bad_records(s), step=step)
    return folder


def report_bad_records(s: Session) -> dict[str, float]:
    """Collective: sum every rank's skipped records; rank 0 writes `data_bad_records.json` into the output folder
    and as an MLflow artifact. Returns the totals as metrics (the same on every rank)."""
    per_rank: list[Any] = [None] * s.world
    dist.all_gather_object(per_rank, (s.loader.bad_records(), s.loader.read_counts()))
    report = bad_record_report([bad for bad, _ in per_rank], [read for _, read in per_rank])
    if s.rank == 0:
        (s.cfg.output_dir / BAD_RECORDS_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        s.tracker.log_dict(report, BAD_RECORDS_FILE)
    return report_metrics(report)


def _log(s: Session, metrics: dict[str, float], step: int) -> None:
    """To MLflow (every log_every steps and the last) and to `output_dir/metrics.jsonl` (every step, rank 0)."""
    if not metrics:
        return
    s.history.append({"step": step, **metrics})
    if step % s.cfg.log_every == 0 or step == s.steps:
        s.tracker.log_metrics(metrics, step=step)
    if s.rank == 0:
        with open(s.cfg.output_dir / METRICS_FILE, "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")


def finish(s: Session, config_path: Path) -> None:
    """Write the stage output from the fp32 masters and close tracking."""
    state = gather_fp32_state(s.engine.module)
    s.hf_ds = None  # release ZeRO-3's HF hook so the export below builds a plain, unpartitioned encoder
    if s.rank == 0:
        student = s.engine.module
        meta = {**student_meta(s.cfg, student), "steps": s.steps, "run_id": s.tracker.run_id,
                "teacher": _teacher_fingerprint(s), "config": str(config_path)}
        write_stage_output(s.cfg.output_dir, student.encoder.config, state, s.tokenizer, meta)
    s.replaced()
    dist.barrier()
    s.tracker.end()


def _teacher_fingerprint(s: Session) -> dict | None:
    """The teacher the student was distilled from: the live one, or the one that made the cache."""
    if s.teacher is not None:
        return s.teacher.fingerprint()
    if s.cfg.data.teacher_cache is not None:
        return read_cache_meta(s.cfg.data.teacher_cache)["fingerprint"]
    return None


def run(cfg: RunConfig, config_path: Path, resume_from: Path | None = None, overwrite: bool = False) -> int:
    """One stage on this rank; returns the exit status (0, or EXIT_PREEMPTED after a signal and a checkpoint).

    Raises RunError when the run failed for a reason the user can act on (the MLflow run is marked FAILED; KILLED and
    resumable when the disk is too full for the next checkpoint), KeyboardInterrupt after a second Ctrl-C (KILLED).
    With --overwrite, the earlier outputs come back when the run fails before its first checkpoint or output."""
    aside = SetAside(cfg.output_dir) if overwrite and resume_from is None else None
    rank = int(os.environ.get("RANK", "0"))
    try:
        session = setup(cfg, resume_from, aside)
    except BaseException:
        _restore(aside, rank)
        _close_process_group()
        raise
    _record_run_id(session)
    with StopRequests() as stop:
        try:
            train(session, stop)
            finish(session, config_path)
        except Preempted as stopped:
            stop.checkpointed = True
            session.tracker.set_tags({TAG_RESUMABLE: "true", TAG_CHECKPOINT: str(stopped.checkpoint)})
            session.tracker.end("KILLED")
            return EXIT_PREEMPTED
        except OutOfSpace as full:  # resumable once space is freed, from the checkpoint it names
            session.tracker.set_tags({TAG_RESUMABLE: "true", TAG_CHECKPOINT: str(full.checkpoint)})
            session.tracker.end("KILLED")
            raise
        except KeyboardInterrupt:
            session.tracker.end("KILLED")
            _restore(session.aside, rank)
            raise
        except BaseException:
            session.tracker.end("FAILED")  # never leave the MLflow run marked RUNNING
            _restore(session.aside, rank)
            raise
        finally:
            if session.audit is not None:
                session.audit.close()
            _close_process_group()
    return 0


def _restore(aside: SetAside | None, rank: int) -> None:
    """The run failed before writing a checkpoint or output: rank 0 puts the outputs --overwrite set aside back."""
    if aside is not None and rank == 0 and (said := aside.restore()):
        print(f"mimo-ds: {said}", file=sys.stderr)


def _close_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def _record_run_id(s: Session) -> None:
    """For `mimo-ds train --nproc`: rank 0 tells the launching wrapper which MLflow run this is, so that the wrapper
    can mark it FAILED when a rank dies where no rank can (kill -9, a segfault: the others hang, and are killed)."""
    if (target := os.environ.get(RUN_ID_FILE_ENV)) and s.rank == 0 and s.tracker.run_id is not None:
        uri = resolve_tracking_uri(s.cfg.tracking.tracking_uri)
        Path(target).write_text(json.dumps({"run_id": s.tracker.run_id, "tracking_uri": uri}))


def _evaluate(s: Session) -> dict[str, float]:
    """Evaluate the student in its native space; collective under ZeRO-3 (every rank runs the same batches)."""
    from mimo_ds.eval.encoding import prompted
    from mimo_ds.eval.hook import evaluate

    cfg, engine = s.cfg, s.engine

    def forward(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return engine(input_ids, attention_mask).emb

    def encode(texts: list[str], role: str) -> torch.Tensor:
        """The hook hands over batches of eval.batch_size (the same count on every rank) and normalises the result."""
        with torch.no_grad():
            texts = prompted(texts, role, cfg.student.query_prompt, cfg.student.passage_prompt)
            return encode_texts(forward, s.tokenizer, texts, max_length=cfg.student.max_length,
                                batch_size=len(texts), device=engine.device)

    engine.eval()
    try:
        return evaluate(encode, cfg.eval.benchmarks, batch_size=cfg.eval.batch_size, rank=s.rank, world_size=s.world)
    finally:
        engine.train()
