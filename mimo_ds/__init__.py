"""mimo-ds: a DeepSpeed trainer for MIMO multilingual retrieval embedding students.

The fused InfoNCE kernels live in the repository's top-level `kernels/` and are installed as `mimo_ds.kernels`
(pyproject's package-dir mapping; docs/design.md says why). A checkout that was never installed has no such module,
so importing the package says so first, in one line, instead of a bare ModuleNotFoundError deep in an import chain.
"""

import importlib.util

__version__ = "0.1.0"

if importlib.util.find_spec(f"{__name__}.kernels") is None:
    raise ImportError("mimo_ds.kernels is not installed (it is the repository's kernels/ folder, mapped into the "
                      "package at install time): run `pip install -e .` in the repository, then import mimo_ds")
