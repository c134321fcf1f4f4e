#!/usr/bin/env bash
# One lent-GPU call, everything the project wants measured there, in priority order (benchmarks/gpu/plan.py holds
# the parts, their limits and their files; docs/kernel.md, "Running it on a lent GPU", gives the device command).
#   bash benchmarks/gpu/run.sh              # on the device: OUT set by the tool, the bundle carried in .gpu/
#   bash benchmarks/gpu/run.sh --dry-run    # here, on the CPU: checks and stamps the bundle, the same parts at toy
#                                           # sizes (TRITON_INTERPRET=1 for the kernel), results in /tmp/mimo_gpu_dry
# Parts run one after another, never concurrently. Each part may run until its place in the schedule ends (the
# sum of its and the earlier parts' limits from the start, so time a part leaves unused goes to the next); 10 s
# before that, `timeout` sends SIGABRT to the part's process group (PYTHONFAULTHANDLER=1: every Python process
# dumps its threads' tracebacks into run.log, which names the frame a hang sits in), at the end SIGKILL. Inside a
# part each command gets its own, shorter limit the same way (parts.py). No dump is taken from a process that is
# still within its limit: faulthandler.dump_traceback_later segfaulted two healthy processes in the dry run (it
# walks a running thread's frames). Each part rewrites its one JSON under $OUT after every row.
set -u
cd "$(dirname "$0")/../.." || exit 1
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
START=$(date +%s)
if [ "$DRY" = 1 ]; then
  PY=${PY:-.venv/bin/python}
  RUN=${RUN:-/tmp/mimo_gpu_dry}
  OUT=${OUT:-$RUN/out}
  FLAG=--dry-run
else
  PY=${PY:-python3}
  RUN=${RUN:-/tmp/mimo_gpu_run}
  : "${OUT:?set OUT to the folder for the results (the device tool sets it)}"
  FLAG=
fi
export BUNDLE=${BUNDLE:-$PWD/.gpu} WORK=$RUN/work MODELS=$RUN/models
# One Triton cache for the whole run (autotuning results too): a kernel tuned in one part is reused by the next.
export TRITON_CACHE_DIR=$RUN/triton TRITON_CACHE_AUTOTUNING=1 TORCHINDUCTOR_CACHE_DIR=$RUN/inductor
export PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export DS_BUILD_OPS=0 MIMO_SOURCE_STAMP=$BUNDLE/SOURCE.json
rm -rf "$WORK" "$OUT"/*
mkdir -p "$OUT" "$WORK" "$TRITON_CACHE_DIR"
exec > >(tee -a "$OUT/run.log") 2>&1
if [ "$DRY" = 1 ]; then
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
  $PY benchmarks/gpu/plan.py stamp || exit 1
else
  export PYTHONPATH=/tmp/site:$PWD
fi
$PY benchmarks/gpu/plan.py show $FLAG || exit 1
mapfile -t LIMITS < <($PY benchmarks/gpu/plan.py limits $FLAG)
# kernels/ is installed as mimo_ds.kernels; on the device a link gives the same import path without installing the
# project (here the venv's editable install has it).
[ "$DRY" = 1 ] || [ -e mimo_ds/kernels ] || ln -s ../kernels mimo_ds/kernels

SCHEDULE=0
# part NAME COMMAND...: run until the part's place in the schedule ends (see the top of this file).
part() {
  local name=$1 limit now end t0 rc
  shift
  limit=$(printf '%s\n' "${LIMITS[@]}" | awk -v n="$name" '$1 == n {print $2}')
  SCHEDULE=$(( SCHEDULE + limit ))
  now=$(date +%s)
  end=$(( START + SCHEDULE ))
  if (( end - now < 20 )); then
    echo "== $name: skipped, $(( end - now )) s left in its schedule"
    return 0
  fi
  echo "== $name: until $(( SCHEDULE )) s into the run ($(( end - now )) s), $(( now - START )) s in"
  t0=$now
  PART_S=$(( end - now - 10 )) timeout -s ABRT -k 10 $(( end - now - 10 )) "$@"
  rc=$?
  echo "== $name: rc=$rc in $(( $(date +%s) - t0 )) s"
}

setup() {
  if [ "$DRY" = 1 ]; then
    $PY benchmarks/gpu/plan.py check --bundle "$BUNDLE" || return 1
    echo "wheels the device would be given (decided against this venv here):"
    $PY benchmarks/gpu/bundle.py wheels --bundle "$BUNDLE" > /dev/null
  else
    mapfile -t WHEELS < <($PY benchmarks/gpu/bundle.py wheels --bundle "$BUNDLE")
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "${WHEELS[@]}" \
      || echo "wheel install failed"
  fi
  $PY benchmarks/gpu/bundle.py unpack --bundle "$BUNDLE" --to "$MODELS" || return 1
  nvidia-smi 2>&1 || echo "no nvidia-smi"
  $PY - <<'EOF'
import platform
from importlib.metadata import PackageNotFoundError, version

print("python", platform.python_version())
for name in ("torch", "triton", "transformers", "sentence-transformers", "deepspeed", "pydantic", "webdataset",
             "inf-cl", "flash-attn", "flash-attn-4", "numpy"):
    try:
        print(name, version(name))
    except PackageNotFoundError:
        print(name, "not installed")
import torch

print("cuda", torch.version.cuda, torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
EOF
}

kernel() {
  if [ "$DRY" = 1 ]; then
    TRITON_INTERPRET=1 $PY benchmarks/infonce.py --device cpu --dtype fp32 --cases 48x48,16x64 --dims 32 \
      --impls eager,ours,auto --no-compile --out "$OUT/infonce.json"
  else
    $PY benchmarks/infonce.py --cases 2048x2048,2048x16384,16384x16384,65536x65536,262144x262144 \
      --dims 1024,384 --impls eager,compile,inf-cl,ours,auto --warmup 1 --repeats 5 --budget 3 --give-up 3 \
      --out "$OUT/infonce.json"
  fi
}

export -f setup kernel
export DRY PY OUT FLAG
part setup bash -c setup
part step bash -c '$PY benchmarks/gpu/parts.py step --limit $(( PART_S - 2 )) --out "$OUT/step.json" $FLAG'
part kernel bash -c kernel
[ "$DRY" = 1 ] && export TEST_WORKERS=0   # on a CPU every gpu test is skipped: workers would only add start-up
part tests bash -c '$PY benchmarks/gpu/parts.py tests --limit $(( PART_S - 2 )) --out "$OUT/gpu_tests.json" $FLAG'
part stage1 bash -c '$PY benchmarks/gpu/parts.py stage1 --limit $(( PART_S - 2 )) --out "$OUT/stage1.json" $FLAG'
$PY benchmarks/gpu/plan.py summary --out "$OUT"
echo "run done in $(( $(date +%s) - START )) s"
sleep 1   # let tee write the last lines into run.log before the call returns
