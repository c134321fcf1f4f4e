"""The typed run config: one YAML per run, `--set a.b=c` overrides, validated before any process group starts.

The run config is the single source of truth for everything about a run; the DeepSpeed JSON it points to holds only
DeepSpeed's own settings, and whatever batch/precision/clipping numbers that JSON states are checked against this
config (`ds_config.build_ds_config`). Every error names the file and the key, so a typo costs seconds, not a queue slot.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    Field,
    SerializeAsAny,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from mimo_ds.config_base import ConfigError, Strict
from mimo_ds.objectives import ObjectiveSettings, objective_class

Pooling = Literal["mean", "cls", "last"]
OBJECTIVE_ERROR = "objective_settings"  # the pydantic error type of a bad `objective:` section


class StudentConfig(Strict):
    """The multilingual encoder being trained, plus how its token states become one vector."""

    path: str = Field(description="local model folder, 'pkg:<package>/<subdir>' inside an installed package, or a hub name")
    pooling: Pooling = "mean"
    max_length: int = Field(256, ge=8)
    attn_implementation: Literal["auto", "flash_attention_2", "sdpa", "eager"] = "auto"
    gradient_checkpointing: bool = False
    resident_params: Literal["auto"] | bool = Field(
        "auto", description="ZeRO-3: keep the student's full parameters on every rank between optimizer steps "
                            "(gathered once per step) instead of gathering them for every forward of every chunk "
                            "(true/false; YAML's on/off work too); auto = true when their compute copy takes ≤ 10% "
                            "of the device's memory")
    trust_remote_code: bool = Field(False, description="run model code shipped with the weights (off: a hub model "
                                                      "must not execute code you have not read)")
    query_prompt: str = Field("", description="prepended to the student's query texts (roles an objective marks as queries)")
    passage_prompt: str = Field("", description="prepended to the student's other texts")
    random_init: dict[str, Any] | None = Field(
        None, description="config overrides; when set the weights are random (tiny test/smoke models)"
    )
    num_layers: int | None = Field(None, ge=1, description="keep only the encoder's lower N layers (a weaker student "
                                                           "from the same weights); null = all")


class TeacherConfig(Strict):
    """The frozen English teacher; replicated on every rank, never handed to DeepSpeed."""

    path: str
    pooling: Pooling = "mean"
    normalize: bool = True
    padding_side: Literal["auto", "left", "right"] = Field(
        "auto", description="auto = left for last-token pooling (decoder teachers), else right"
    )
    query_prompt: str = Field("", description="prepended to the teacher's query texts (English queries, stage 2)")
    passage_prompt: str = Field("", description="prepended to the teacher's other texts (e5-style teachers: 'passage: ')")
    max_length: int = Field(256, ge=8)
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = Field("auto", description="auto = bf16 on CUDA, fp32 on CPU")
    mini_batch: int = Field(64, ge=1, description="rows per teacher forward (no grad)")
    trust_remote_code: bool = False
    random_init: dict[str, Any] | None = None


class BatchConfig(Strict):
    """Batch arithmetic. `mini_batch` < `per_device` turns on cached (GradCache-style) encoder passes."""

    per_device: int = Field(ge=1)
    mini_batch: int | None = Field(None, ge=1)
    grad_accum: int = Field(1, ge=1)
    global_batch: int | None = Field(None, ge=1, description="when set, must equal per_device × world × grad_accum")

    @model_validator(mode="after")
    def _mini_batch_fits(self) -> BatchConfig:
        if self.mini_batch is not None and self.mini_batch > self.per_device:
            raise ValueError(f"mini_batch ({self.mini_batch}) is larger than per_device ({self.per_device})")
        return self


class DataConfig(Strict):
    """Where the shards are and how they are streamed."""

    train: Path = Field(description="folder of WebDataset shards with index.json (see docs/data-contract.md)")
    languages: list[str] | None = Field(None, description="restrict to these languages; None = all in the index")
    num_workers: int = Field(1, ge=0)
    shuffle_buffer: int = Field(1000, ge=0)
    resampled: bool = False
    steps_per_epoch: int | None = Field(None, ge=1, description="batches per epoch per rank; required when resampled")
    max_bad_fraction: float = Field(0.01, ge=0.0, le=1.0)
    teacher_cache: Path | None = None
    audit: bool = Field(False, description="write the sample ids of every step, per rank, to output_dir/audit/")
    verify: Literal["size", "full"] = Field(
        "size", description="preflight check of the shards against index.json: sizes (cheap) or also sha256")


class OptimConfig(Strict):
    """AdamW with linear warm-up and linear decay (HF Trainer's defaults, which the paper's scripts used)."""

    lr: float = Field(1e-4, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0.0)
    warmup_ratio: float = Field(0.1, ge=0.0, lt=1.0)
    max_grad_norm: float = Field(1.0, ge=0.0, description="0 disables clipping")


class TrackingConfig(Strict):
    """MLflow tracking; with nothing set the store is sqlite:///mlflow.db in the working directory."""

    enabled: bool = True
    tracking_uri: str | None = None
    experiment: str = "mimo-ds"
    run_name: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    system_metrics: bool = False
    async_logging: bool = True


class CheckpointConfig(Strict):
    """Periodic engine checkpoints, `<output_dir>/checkpoints/step_<S>/` (docs/training.md); off while every_steps
    is null. A preemption signal writes one whatever this says."""

    every_steps: int | None = Field(None, ge=1)
    keep: int = Field(3, ge=1, description="complete checkpoints kept; older ones go once a newer one is complete")


class GuardConfig(Strict):
    """Numerical guards: a step whose loss or gradient norm is not finite is skipped on every rank."""

    max_consecutive_skips: int = Field(5, ge=1, description="this many skipped steps in a row abort the run")


class EvalConfig(Strict):
    """Benchmarks evaluated during training (every N steps) and at the end of the stage."""

    benchmarks: list[Path] = Field(default_factory=list)
    every_steps: int | None = Field(None, ge=1)
    at_end: bool = True
    batch_size: int = Field(64, ge=1)


class ProjectionConfig(Strict):
    """How the projection P starts. Stage 1: `init: random` (nn.Linear's initialisation, as in the paper) or
    `lstsq` (a closed-form ridge fit of P, weight and bias, from the start student's embeddings to the teacher's on
    a sample of the stage-1 pairs, made before the first step: `mimo_ds.projection_init`, a deviation from the
    paper). Stage 2: P comes from `init_from`'s `projection.safetensors`, and an init_from without one is refused
    unless `fresh` is set: a random P would silently change where distillation starts."""

    init: Literal["random", "lstsq"] = "random"
    ridge: float = Field(0.1, gt=0.0, description="lstsq: the ridge penalty as a fraction of the mean eigenvalue of "
                                                  "the student embeddings' centred Gram matrix")
    samples: int = Field(1024, ge=2, description="lstsq: pairs the fit reads, over all ranks")
    fresh: bool = Field(False, description="true: accept an init_from without projection.safetensors and start P "
                                           "from a fresh random initialisation (init_from's P is used when present)")


class RunConfig(Strict):
    """One training stage (stage 1 distillation, or stage 2 MIMO / a baseline)."""

    name: str
    stage: Literal[1, 2]
    output_dir: Path = Field(description="where the checkpoints and the stage output go; relative to the YAML's folder")
    init_from: Path | None = Field(None, description="a finished stage's output folder: its student and projection")
    projection: ProjectionConfig = Field(default_factory=ProjectionConfig)
    seed: int = 42
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field("auto", description="auto = bf16 on CUDA, fp32 on CPU")
    epochs: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps")
    log_every: int = Field(1, ge=1)
    resume: Literal["auto", "never"] | Path = Field(
        "never", description="auto: the newest complete checkpoint under output_dir (fresh when none); never; or a "
                             "checkpoint folder (the CLI's --resume overrides it)")
    deepspeed: Path = Field(Path("../ds_configs/zero3.json"), description="relative paths resolve against the YAML's folder")
    student: StudentConfig
    teacher: TeacherConfig | None = None
    objective: SerializeAsAny[ObjectiveSettings] = Field(
        description="`kind` names a registered objective (mimo_ds.objectives); the other keys are its settings")
    batch: BatchConfig
    data: DataConfig
    optim: OptimConfig = Field(default_factory=OptimConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    guard: GuardConfig = Field(default_factory=GuardConfig)

    @field_validator("objective", mode="before")
    @classmethod
    def _objective_settings(cls, value: Any) -> ObjectiveSettings:
        """Validate the section against the settings its `kind` declares (errors name `objective.<key>`)."""
        if isinstance(value, ObjectiveSettings):
            return value
        if not isinstance(value, dict) or "kind" not in value:
            raise ValueError("needs a 'kind' (a registered objective) and that objective's settings")
        settings = objective_class(str(value["kind"])).Settings  # an unknown kind: ValueError listing the known
        try:
            return settings.model_validate(value)
        except ValidationError as exc:
            errors = [(".".join(str(p) for p in e["loc"]), e["msg"]) for e in exc.errors()]
            detail = "; ".join(f"{where}: {msg}" for where, msg in errors)
            raise PydanticCustomError(OBJECTIVE_ERROR, "{detail}", {"detail": detail, "errors": errors}) from None

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        kind = self.objective.kind
        declared = objective_class(kind)
        if declared.stage != self.stage:
            raise ValueError(f"objective.kind '{kind}' belongs to stage {declared.stage}, not stage {self.stage}")
        if declared.needs_teacher() and self.teacher is None:
            raise ValueError(f"objective.kind '{kind}' needs a teacher section")
        if not declared.needs_teacher() and self.teacher is not None:
            raise ValueError(f"objective.kind '{kind}' is teacher-free; remove the teacher section")
        if self.data.resampled and self.data.steps_per_epoch is None:
            raise ValueError("data.resampled needs data.steps_per_epoch (the fixed number of batches per epoch)")
        if self.init_from is not None and self.student.random_init is not None:
            raise ValueError("init_from and student.random_init are both set: the student comes from init_from")
        if self.data.teacher_cache is not None and not declared.needs_teacher():
            raise ValueError("data.teacher_cache is set but the objective uses no teacher")
        return self

    @model_validator(mode="after")
    def _projection_init_is_stage_one(self) -> RunConfig:
        if self.projection.init == "lstsq" and self.stage != 1:
            raise ValueError("projection.init: lstsq fits P on stage-1 pairs; stage 2 takes P from init_from")
        return self


def apply_override(tree: dict[str, Any], assignment: str) -> None:
    """Apply one `a.b.c=value` override in place; the value is parsed as YAML (so `1e-4`, `true`, `[en, de]` work)."""
    if "=" not in assignment:
        raise ConfigError(f"--set expects key=value, got '{assignment}'")
    dotted, raw = assignment.split("=", 1)
    keys = dotted.strip().split(".")
    if not all(keys):
        raise ConfigError(f"--set has an empty key in '{dotted}'")
    node = tree
    for i, key in enumerate(keys[:-1]):
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: '{'.'.join(keys[: i + 1])}' is a value, not a section")
        node = child
    node[keys[-1]] = _override_value(dotted, raw)


def _override_value(dotted: str, raw: str) -> Any:
    """The YAML value of `--set dotted=raw`; a value YAML cannot read is a ConfigError naming the key and value."""
    if not raw.strip():
        return None
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise ConfigError(f"--set {dotted}: the value {raw!r} is not valid YAML ({problem}); for text, quote "
                          f"it: --set '{dotted}=\"{raw}\"'") from None


def _format_validation_error(source: str, err: ValidationError) -> str:
    lines = [f"invalid run config {source}:"]
    for e in err.errors():
        if e["type"] == OBJECTIVE_ERROR:  # the objective's own settings: name each key inside the section
            lines += [f"  objective.{where}: {msg}" for where, msg in e["ctx"]["errors"]]
            continue
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        given = f" (got {e['input']!r})" if "input" in e and not isinstance(e["input"], dict) else ""
        lines.append(f"  {where}: {e['msg']}{given}")
    return "\n".join(lines)


def _resolve_paths(cfg: RunConfig, base: Path) -> RunConfig:
    """Make every relative path in the config relative to the YAML's folder, so a recipe runs from any cwd and
    writes where the next stage's `init_from` (resolved the same way) reads. `--set` values are no exception: a
    relative path there is relative to the YAML's folder too (launch scripts pass absolute ones)."""

    def fix(p: Path | None) -> Path | None:
        if p is None or p.is_absolute():
            return p
        return (base / p).resolve()

    cfg.deepspeed = fix(cfg.deepspeed)
    cfg.output_dir = fix(cfg.output_dir)
    cfg.data.train = fix(cfg.data.train)
    cfg.data.teacher_cache = fix(cfg.data.teacher_cache)
    cfg.init_from = fix(cfg.init_from)
    if isinstance(cfg.resume, Path):
        cfg.resume = fix(cfg.resume)
    cfg.eval.benchmarks = [fix(b) for b in cfg.eval.benchmarks]
    for model in (cfg.student, cfg.teacher):
        if model is not None and model.path.startswith(("./", "../")):
            model.path = str(fix(Path(model.path)))
    return cfg


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read, override and validate a run config. Raises ConfigError with a message naming file and key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"run config not found: {path}")
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"run config {path} is not valid YAML: {exc}") from exc
    if not isinstance(tree, dict):
        raise ConfigError(f"run config {path} must be a mapping at the top level")
    for assignment in overrides or []:
        apply_override(tree, assignment)
    try:
        cfg = RunConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(str(path), exc)) from None
    cfg = _resolve_paths(cfg, path.parent.resolve())
    if not cfg.deepspeed.is_file():
        raise ConfigError(f"invalid run config {path}:\n  deepspeed: file not found: {cfg.deepspeed}")
    return cfg
