"""The objectives a run can optimise, each one declaration (`mimo_ds.objectives.base`) in a module of its own.

Importing this package imports every module in it, which registers every declaration; `objective_class(kind)` finds
one, `build_objective(settings)` makes one for a run. Built in: `distill` (stage 1), `mimo`, and the baselines
`infonce`, `xlco`, `lakda`. The loss terms they share are in `terms`.
"""

import importlib
import pkgutil

from mimo_ds.objectives.base import (
    LossOutput,
    Objective,
    ObjectiveSettings,
    Role,
    build_objective,
    objective_class,
    objective_kinds,
    role_texts,
)

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["LossOutput", "Objective", "ObjectiveSettings", "Role", "build_objective", "objective_class",
           "objective_kinds", "role_texts"]
