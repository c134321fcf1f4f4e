"""What every config section is built on: strict pydantic models and the one error type a bad config raises.

A leaf module, so that the objective declarations (which carry their own typed hyper-parameters) and the run config
(which holds an objective's settings) can both use it without importing each other.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from mimo_ds.errors import InputError


class ConfigError(InputError):
    """A run config that cannot be used; the message names the file and the key (a ValueError, as before)."""


class Strict(BaseModel):
    """Base for config sections: unknown keys are errors, values are validated on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)
