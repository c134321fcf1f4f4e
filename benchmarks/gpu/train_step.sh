#!/usr/bin/env bash
# The training half of a lent-GPU run, from the bundle that `python benchmarks/gpu/bundle.py` builds into .gpu/
# (carried as an ignored path): (a) stage 1 (distill) and stage 2 (MIMO, from stage 1's output) through the real
# entry point, `python -m mimo_ds.train`, one GPU, the student under ZeRO-3 in bf16, the teacher bf16 and replicated,
# per-step losses read back from each stage's metrics.jsonl; (b) the step benchmark (benchmarks/step.py: ours vs
# sentence-transformers) at per-device batches of 2048 and 8192, bf16, with a profile of the MIMO / ZeRO-3 step.
# Every step runs under `timeout`, capped by what is left of TOTAL_S, and a failure does not stop the next one;
# results are rewritten after each step, so whatever finished comes back. Run from the repository root:
#   OUT=/tmp/out bash benchmarks/gpu/train_step.sh
#   GPU_SMOKE=1 PY=.venv/bin/python OUT=/tmp/out_smoke bash benchmarks/gpu/train_step.sh   # CPU, tiny sizes
# $OUT receives: train_step.log, env.txt, BUNDLE.json, train.json, step_<batch>.json (one per batch size).
set -u
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false DS_BUILD_OPS=0
# The InfoNCE kernels' autotuning (a first stage-2 step took ~60 s on the H100) is kept on disk for later processes.
export TRITON_CACHE_AUTOTUNING=1
: "${OUT:?set OUT to the folder for the results}"
PY=${PY:-python3}
BUNDLE=${BUNDLE:-.gpu}
MODELS=${MODELS:-/tmp/models}
WORK=${WORK:-/tmp/gpu_work}
SMOKE=${GPU_SMOKE:-0}
TOTAL_S=${TOTAL_S:-510}             # the whole script, setup included (the device call allows 540 s for it)
START=$(date +%s)
mkdir -p "$OUT" "$WORK/parts"
exec > >(tee -a "$OUT/train_step.log") 2>&1

if [ "$SMOKE" = 1 ]; then          # CPU smoke test: the same commands at toy sizes, the caller's environment
  INSTALL=${INSTALL:-0}
  PRECISION=${PRECISION:-fp32}     # bf16 runs too, but a CPU step in bf16 is ~3x slower
  S1_BATCH=16 S2_BATCH=16 S2_MINI=8 TRAIN_STEPS=3 REPS=1
  STEP_PLAN=${STEP_PLAN:-"16:8:mimo:zero3:profile 16:8:xlco:zero3-resident"}
else
  INSTALL=${INSTALL:-1}
  PRECISION=${PRECISION:-bf16}
  S1_BATCH=${S1_BATCH:-256} S2_BATCH=${S2_BATCH:-384} S2_MINI=${S2_MINI:-128} TRAIN_STEPS=${TRAIN_STEPS:-20}
  REPS=${REPS:-5}
  # batch:mini_batch:objective:engine[:profile], in order of priority (what does not fit in TOTAL_S is skipped)
  STEP_PLAN=${STEP_PLAN:-"2048:512:mimo:zero3:profile 2048:512:xlco:zero3 2048:512:mimo:zero3-resident \
2048:512:xlco:zero3-resident 8192:512:mimo:zero3 8192:512:xlco:zero3 8192:512:mimo:zero3-resident \
8192:512:xlco:zero3-resident"}
fi
STEP_LIMIT=${STEP_LIMIT:-150}       # one (batch, objective, engine) of the step benchmark
TRAIN_LIMIT=${TRAIN_LIMIT:-120}     # one training stage
ORDER=${ORDER:-"train step"}        # "step train": the step benchmark first
STEPS_LOG="$WORK/steps.jsonl"
BUNDLE_ABS=$(cd "$BUNDLE" && pwd)

left() { echo $(( START + TOTAL_S - $(date +%s) )); }
# step NAME LIMIT_S COMMAND...: run under the smaller of LIMIT_S and the time left; record rc and seconds.
step() {
  local name=$1 limit=$2 rem t0 rc
  shift 2
  rem=$(left)
  if (( rem < 40 )); then
    echo "== $name: skipped, ${rem}s left"
    $PY benchmarks/gpu/collect.py record "$STEPS_LOG" "$name" -1 0 0 -- "$@"
    return 1
  fi
  (( limit > rem - 15 )) && limit=$(( rem - 15 ))
  echo "== $name (limit ${limit}s, $(( $(date +%s) - START ))s in): $*"
  t0=$(date +%s)
  timeout -k 10 "$limit" "$@"
  rc=$?
  echo "== $name: rc=$rc in $(( $(date +%s) - t0 ))s"
  $PY benchmarks/gpu/collect.py record "$STEPS_LOG" "$name" "$rc" "$(( $(date +%s) - t0 ))" "$limit" -- "$@"
  return $rc
}

# -- setup: the carried wheels, the package link, the models ------------------------------------------------------
if [ "$INSTALL" = 1 ]; then          # the wheels this machine lacks (bundle.py wheels: all but datasets & co. if present)
  mapfile -t WHEELS < <($PY benchmarks/gpu/bundle.py wheels --bundle "$BUNDLE")
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "${WHEELS[@]}" \
    || echo "wheel install failed"
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
# kernels/ is installed as mimo_ds.kernels; a link gives the same import path without installing the project.
[ -e mimo_ds/kernels ] || ln -s ../kernels mimo_ds/kernels
cp "$BUNDLE/BUNDLE.json" "$OUT/BUNDLE.json"
{
  date -u; nvidia-smi 2>&1 || echo "no nvidia-smi"
  $PY - <<'EOF' 2>&1
import importlib, platform
print("python", platform.python_version())
for name in ("torch", "triton", "transformers", "sentence_transformers", "tokenizers", "accelerate", "deepspeed",
             "pydantic", "pydantic_core", "webdataset", "typing_extensions", "inf_cl", "numpy"):
    try:
        module = importlib.import_module(name)
        print(name, getattr(module, "__version__", "?"), getattr(module, "__file__", ""))
    except Exception as exc:  # noqa: BLE001 - report, do not stop
        print(name, "NOT IMPORTABLE:", type(exc).__name__, exc)
import torch
print("cuda", torch.version.cuda, torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
EOF
} > "$OUT/env.txt" 2>&1
step unpack 60 $PY benchmarks/gpu/bundle.py unpack --bundle "$BUNDLE" --to "$MODELS" || echo "unpack failed"
echo "setup done in $(( $(date +%s) - START ))s"

# -- (a) stage 1 and stage 2 through the entry point ---------------------------------------------------------------
train_stages() {
  COMMON=(--overwrite --set "student.path=$MODELS/student" --set "teacher.path=$MODELS/teacher"
          --set "deepspeed=$PWD/ds_configs/zero3.json" --set "precision=$PRECISION" --set tracking.enabled=false
          --set "eval.benchmarks=[]" --set data.teacher_cache=null --set "max_steps=$TRAIN_STEPS" --set epochs=1000
          --set log_every=1)
  step train_stage1 "$TRAIN_LIMIT" $PY -m mimo_ds.train --config recipes/demo/stage1.yaml "${COMMON[@]}" \
    --set "data.train=$BUNDLE_ABS/data/pairs" --set "output_dir=$WORK/stage1" --set "batch.per_device=$S1_BATCH"
  step train_stage2_mimo "$TRAIN_LIMIT" $PY -m mimo_ds.train --config recipes/demo/stage2_mimo.yaml "${COMMON[@]}" \
    --set "data.train=$BUNDLE_ABS/data/rows" --set "output_dir=$WORK/stage2_mimo" --set "init_from=$WORK/stage1" \
    --set "batch.per_device=$S2_BATCH" --set "batch.mini_batch=$S2_MINI"
  $PY benchmarks/gpu/collect.py train --work "$WORK" --log "$STEPS_LOG" --out "$OUT/train.json" \
    --note "precision=$PRECISION" --note "deepspeed=ds_configs/zero3.json (student.resident_params: auto)" \
    --note "launch=python -m mimo_ds.train (one process; the README's single-process form)" \
    --note "stage1=recipes/demo/stage1.yaml, per_device $S1_BATCH pairs, $TRAIN_STEPS steps, live bf16 teacher" \
    --note "stage2=recipes/demo/stage2_mimo.yaml (lambda 0.2) from stage 1, per_device $S2_BATCH rows, mini_batch $S2_MINI, $TRAIN_STEPS steps" \
    --note "teacher=bundled all-MiniLM-L6-v2: bf16, unused embedding rows zeroed (BUNDLE.json)" \
    || echo "collect train failed"
}

# -- (b) the step benchmark, one (batch, objective, engine) per process ---------------------------------------------
step_benchmark() {
  local item batch mini objective engine prof name extra
  for item in $STEP_PLAN; do
    IFS=: read -r batch mini objective engine prof <<< "$item"
    name="step_${batch}_${objective}_${engine}"
    extra=()
    [ "${prof:-}" = profile ] && extra=(--profile)
    step "$name" "$STEP_LIMIT" $PY benchmarks/step.py --data "$BUNDLE_ABS/data" --student "$MODELS/student" \
      --teacher "$MODELS/teacher" --precision "$PRECISION" --objectives "$objective" --engines "$engine" \
      --batch "$batch" --mini-batch "$mini" --reps "$REPS" "${extra[@]}" --out "$WORK/parts/$name.json"
    $PY benchmarks/gpu/collect.py merge --parts "$WORK/parts" --batch "$batch" --log "$STEPS_LOG" \
      --bundle "$BUNDLE/BUNDLE.json" --out "$OUT/step_$batch.json" || echo "merge failed"
  done
}

for part in $ORDER; do
  case $part in
    train) train_stages ;;
    step) step_benchmark ;;
  esac
done
echo "done in $(( $(date +%s) - START ))s"
