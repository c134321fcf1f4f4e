#!/usr/bin/env bash
# The kernel half of a lent-GPU run (docs/kernel.md): the GPU tests, then the InfoNCE benchmark, each under its own
# time limit so one that overruns leaves the other its time. Run from the repository root with $OUT set to a folder
# for the results; wheels of packages the machine lacks (inf-cl) may sit in $WHEELS (default .devk/).
#   OUT=/tmp/out bash benchmarks/gpu/kernel.sh
set -u
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
WHEELS=${WHEELS:-.devk}
# kernels/ is installed as mimo_ds.kernels; a link gives the same import path without installing the project.
[ -e mimo_ds/kernels ] || ln -s ../kernels mimo_ds/kernels
if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "$WHEELS"/*.whl
fi
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
# Each autotuned test compiles every config, so the tests share the GPU across pytest-xdist workers (the image has
# xdist); --durations=0 says where a run's time went when it is cut short.
timeout "${TEST_S:-200}" $PY -m pytest -m gpu tests/test_kernel_infonce.py -v -rf -p no:cacheprovider \
  -n "${TEST_WORKERS:-8}" --durations=0 --junitxml="$OUT/gpu_tests.xml" > "$OUT/gpu_tests.log" 2>&1
echo "gpu tests rc=$?"
timeout "${BENCH_S:-330}" $PY benchmarks/infonce.py --dims "${DIMS:-1024,384}" --out "$OUT/infonce.json" \
  > "$OUT/bench.log" 2>&1
echo "bench rc=$?"
tail -n 25 "$OUT/gpu_tests.log"
tail -n 80 "$OUT/bench.log"
