"""What an objective is: ONE declaration that config validation, the loader, the teacher cache and the step all read.

An objective subclasses `Objective` and states, as class attributes:
- `kind` (the `objective.kind` of a run config) and `stage` (1 or 2);
- `shards`: the record kind it reads (`mimo_ds.record_kinds`: `PAIRS` for stage 1, `ROWS` for stage 2, or a kind
  declared elsewhere), whose fields its roles may read;
- `Settings`: its hyper-parameters as a typed config section (an `ObjectiveSettings` subclass whose `kind` is a
  `Literal` of the objective's kind); the run config's `objective:` section is validated against it;
- `student_roles`: the texts the student embeds per row, each a `Role` naming the record side it reads and whether
  it is a query (queries get the student's query prompt, others its passage prompt);
- `teacher_roles`: the English texts the frozen teacher embeds (empty: a teacher-free objective), queries getting
  the teacher's query prompt; a teacher cache holds one array per teacher role;
- `schedule(languages, seed)`: the language of each student role for the row at a write position (stage-2 rows),
  or None when the record carries its language (stage-1 pairs);
and implements `__call__(student, teacher) -> LossOutput` on whole-batch embeddings, which is what lets the step run
the encoder in cached chunks and call the objective once per step.

Defining the class registers it (`__init_subclass__`); `mimo_ds.objectives` imports every module of the package, so
a new objective is one new file there plus its test (docs/design.md walks through one).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from mimo_ds.batch import Embedded
from mimo_ds.config_base import Strict
from mimo_ds.objectives.schedules import RoleLanguages
from mimo_ds.record_kinds import RecordKind


class ObjectiveSettings(Strict):
    """Base of every objective's typed hyper-parameters; subclasses narrow `kind` to their own Literal.

    `swept` names the settings a sweep of the objective varies (a loss weight, such as MIMO's λ), each with the name
    its runs are tagged and plotted under: the trainer tags every run with them (`mimo_ds.tracking.sweep_tags`) and
    `mimo-ds compare` draws each sweep it finds, whatever the objective.
    """

    kind: str
    swept: ClassVar[dict[str, str]] = {}

    def swept_values(self) -> dict[str, str]:
        """Tag name → this run's value, for each swept setting."""
        return {name: str(getattr(self, setting)) for setting, name in self.swept.items()}


@dataclass(frozen=True)
class Role:
    """One text of a training row as an objective sees it.

    `name` is the batch key; `side` the record field the text comes from (one of the kind's `fields`: "text"/"en" of
    a pair, "query"/"passage" of a row in the language the schedule gives the role, English for teacher roles);
    `query` whether it is a query.
    """

    name: str
    side: str
    query: bool = False


@dataclass
class LossOutput:
    loss: torch.Tensor
    parts: dict[str, torch.Tensor] = field(default_factory=dict)


_REGISTRY: dict[str, type[Objective]] = {}


class Objective:
    """Base of the declarations; see the module docstring for what a subclass states."""

    kind: ClassVar[str]
    stage: ClassVar[int]
    shards: ClassVar[RecordKind]
    Settings: ClassVar[type[ObjectiveSettings]]
    student_roles: ClassVar[tuple[Role, ...]]
    teacher_roles: ClassVar[tuple[Role, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "kind" not in cls.__dict__:
            return  # an abstract intermediate class
        if cls.kind in _REGISTRY and _REGISTRY[cls.kind].__qualname__ != cls.__qualname__:
            raise TypeError(f"objective kind {cls.kind!r} is declared twice: {_REGISTRY[cls.kind]} and {cls}")
        _check_declaration(cls)
        _REGISTRY[cls.kind] = cls

    def __init__(self, settings: ObjectiveSettings) -> None:
        self.settings = settings

    @classmethod
    def needs_teacher(cls) -> bool:
        return bool(cls.teacher_roles)

    @classmethod
    def schedule(cls, languages: Sequence[str], seed: int) -> RoleLanguages | None:
        """Position → {student role: language}; None for a tagged kind, whose record names its own language."""
        return None

    def __call__(self, student: dict[str, Embedded], teacher: dict[str, torch.Tensor]) -> LossOutput:
        raise NotImplementedError


def _check_declaration(cls: type[Objective]) -> None:
    """A declaration that contradicts itself is a programming error: fail at import, naming the class."""
    for attr in ("stage", "shards", "Settings", "student_roles"):
        if not hasattr(cls, attr):
            raise TypeError(f"objective {cls.__name__} declares no {attr!r}")
    names = [r.name for r in (*cls.student_roles, *cls.teacher_roles)]
    if len(set(names)) != len(names):
        raise TypeError(f"objective {cls.__name__} has duplicate role names: {names}")
    if not isinstance(cls.shards, RecordKind):
        raise TypeError(f"objective {cls.__name__}: shards must be a RecordKind (mimo_ds.record_kinds), got {cls.shards!r}")
    if cls.shards.parallel and cls.schedule.__func__ is Objective.schedule.__func__:  # type: ignore[attr-defined]
        raise TypeError(f"objective {cls.__name__} reads {cls.shards}, whose records hold every language: it must "
                        "declare a schedule (which language each student role gets per row)")
    sides = cls.shards.fields
    if bad := [r.name for r in (*cls.student_roles, *cls.teacher_roles) if r.side not in sides]:
        raise TypeError(f"objective {cls.__name__}: roles {bad} read sides that {cls.shards} records lack {sides}")
    if unknown := sorted(set(cls.Settings.swept) - set(cls.Settings.model_fields)):
        raise TypeError(f"{cls.Settings.__name__}.swept names settings it does not have: {unknown}")
    kind_field = cls.Settings.model_fields["kind"].annotation
    if getattr(kind_field, "__args__", None) != (cls.kind,):
        raise TypeError(f"{cls.Settings.__name__}.kind must be Literal[{cls.kind!r}]")


def objective_class(kind: str) -> type[Objective]:
    """The declaration registered under `kind`; the error lists the known kinds."""
    try:
        return _REGISTRY[kind]
    except KeyError:
        raise ValueError(f"unknown objective kind {kind!r} (known: {', '.join(sorted(_REGISTRY))})") from None


def objective_kinds() -> list[str]:
    return sorted(_REGISTRY)


def build_objective(settings: ObjectiveSettings) -> Objective:
    return objective_class(settings.kind)(settings)


def role_texts(roles: Sequence[Role], records: Sequence[dict[str, Any]], kind: RecordKind,
               languages: Sequence[dict[str, str]] | None, prompts: tuple[str, str]) -> dict[str, list[str]]:
    """Role → the exact texts a model sees for these records of `kind`: the one home of the prompt rule.

    `languages[i]` gives each role's language for record i (a parallel kind's schedule; None: English, the teacher's
    side, or a tagged record's own); `prompts` is (query prompt, passage prompt) of the model the texts are for:
    queries get the first, other roles the second.
    """
    out: dict[str, list[str]] = {}
    for role in roles:
        prompt = prompts[0] if role.query else prompts[1]
        if languages is None:
            texts = [kind.text(r, role.side, None) for r in records]
        else:
            texts = [kind.text(r, role.side, langs[role.name]) for r, langs in zip(records, languages)]
        out[role.name] = [prompt + t for t in texts] if prompt else texts
    return out
