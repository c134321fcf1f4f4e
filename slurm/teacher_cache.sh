#!/bin/bash
# The teacher cache (`mimo-ds teacher-cache`) written by every rank of a Slurm allocation; docs/cluster.md has the
# details.
#
#   sbatch slurm/teacher_cache.sh --recipe recipes/stage1.yaml           # the cache stage 1 trains from
#   sbatch -N 2 slurm/teacher_cache.sh --recipe recipes/stage2_mimo.yaml --out /scratch/rows_cache
#   bash slurm/teacher_cache.sh --dry-run --nodes 2 --gpus-per-node 8    # every rank's command and slice; no Slurm
#
# One srun task per GPU, as for training (slurm/common.sh). Each rank encodes a contiguous run of parts (fixed ranges
# of write positions) into <cache>/parts/, rank 0 checks and merges them once every rank is done. A job stopped
# before the time limit (SIGUSR1, 120 s ahead) or preempted keeps its finished parts, requeues itself and continues
# from them; so does the same command submitted again.
#SBATCH --job-name=mimo-teacher-cache
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --time=12:00:00
#SBATCH --output=%x-%j.out
#SBATCH --open-mode=append
#SBATCH --requeue
#SBATCH --signal=B:USR1@120
set -uo pipefail

# sbatch runs a spooled copy of this file: find the checkout through the path Slurm recorded for the job.
if [[ -z ${MIMO_ROOT:-} ]]; then
  script=${BASH_SOURCE[0]}
  [[ -z ${SLURM_JOB_ID:-} ]] || script=$(scontrol show job "$SLURM_JOB_ID" | sed -n 's/^ *Command=\([^ ]*\).*/\1/p')
  MIMO_ROOT=$(cd "$(dirname "$script")/.." 2>/dev/null && pwd)
  [[ -f $MIMO_ROOT/slurm/common.sh ]] || MIMO_ROOT=${SLURM_SUBMIT_DIR:-$PWD}
fi
if [[ ! -f $MIMO_ROOT/slurm/common.sh ]]; then
  echo "mimo-slurm: error: no slurm/common.sh under $MIMO_ROOT; set MIMO_ROOT to the checkout" >&2
  exit 2
fi
# shellcheck source=slurm/common.sh
source "$MIMO_ROOT/slurm/common.sh"

cache_usage() {
  cat <<USAGE
usage: sbatch [SBATCH OPTIONS] slurm/teacher_cache.sh [OPTIONS]
       bash slurm/teacher_cache.sh --dry-run [--nodes N] [--gpus-per-node G] [OPTIONS]

  --recipe YAML         the run config that will train from the cache: its teacher and data.train (default:
                        $MIMO_DEFAULT_RECIPE; or \$MIMO_RECIPE)
  --set KEY=VALUE       a run-config override, repeatable (\$MIMO_SET holds more, whitespace-separated)
  --out DIR             the cache folder (default: <data.train>/teacher_cache)
  --window N            write positions sorted by length together (mimo-ds teacher-cache --window)
  --part-size N         write positions per part: the unit of resumption (mimo-ds teacher-cache --part-size)
  --dry-run             print every rank's command, environment and slice and start nothing (or MIMO_DRY_RUN=1)
  --nodes N  --gpus-per-node G  --ntasks-per-node T  --cpus-per-task C  --job-id ID  --hosts H1,H2,...
                        the layout a dry run outside Slurm assumes (G=0: CPU ranks)
Environment: MIMO_PYTHON, MIMO_MASTER_PORT, MIMO_SRUN_ARGS as for slurm/stage1.sh.
USAGE
}

cache_parse_args() {
  MIMO_RECIPE=${MIMO_RECIPE:-$MIMO_DEFAULT_RECIPE}
  MIMO_DRY=${MIMO_DRY_RUN:-0}
  read -r -a MIMO_SETS <<<"${MIMO_SET:-}"
  CACHE_OPTIONS=()
  mimo_layout_reset
  while (($#)); do
    case $1 in
      -h | --help) cache_usage; exit 0 ;;
      --dry-run) MIMO_DRY=1; shift; continue ;;
      --recipe | --set | --out | --window | --part-size | --nodes | --gpus-per-node | --ntasks-per-node \
        | --cpus-per-task | --job-id | --hosts) [[ $# -ge 2 ]] || mimo_die "$1 needs a value (see --help)" ;;
      *) mimo_die "unknown argument '$1' (see --help)" ;;
    esac
    case $1 in
      --recipe) MIMO_RECIPE=$2 ;;
      --set)
        [[ $2 == *=* ]] || mimo_die "--set expects KEY=VALUE, got '$2'"
        MIMO_SETS+=("$2") ;;
      --out) CACHE_OPTIONS+=(--out "$(realpath -m "$2")") ;;
      --window | --part-size)
        mimo_require_int "$1" "$2"
        CACHE_OPTIONS+=("$1" "$2") ;;
      --nodes | --gpus-per-node | --ntasks-per-node | --cpus-per-task | --job-id | --hosts) mimo_layout_option "$1" "$2" ;;
    esac
    shift 2
  done
  mimo_check_dry
}

# The command every rank runs, and the per-rank slices `mimo-ds teacher-cache --plan` prints for this world size
# (it checks the config, the shards and the cache folder first: a refusal is its one line and status 2).
cache_plan() {
  local item plan status line
  MIMO_COMMAND=("$MIMO_PYTHON" -m mimo_ds.cli teacher-cache --config "$MIMO_RECIPE")
  for item in "${MIMO_SETS[@]}"; do MIMO_COMMAND+=(--set "$item"); done
  MIMO_COMMAND+=("${CACHE_OPTIONS[@]}")
  plan=$("${MIMO_COMMAND[@]}" --plan "$MIMO_WORLD") || {
    status=$?
    ((status == 2)) || mimo_log "planning the cache failed (status $status); nothing was started"
    exit "$status"
  }
  CACHE_SLICES=()
  while IFS= read -r line; do
    case $line in
      "cache folder: "*) CACHE_DIR=${line#cache folder: } ;;
      "rank "*) line=${line#rank }; CACHE_SLICES[${line%%:*}]=${line#*: } ;;
    esac
  done <<<"$plan"
}

cache_print_plan() {  # $1: all (every rank) or first (rank 0 only, the header of a real job's log)
  echo "mimo-ds teacher cache launch plan$( ((MIMO_DRY)) && echo ' (dry run: nothing is started)')"
  echo "  recipe      $MIMO_RECIPE"
  echo "  cache       $CACHE_DIR (parts in $CACHE_DIR/parts until rank 0 merges them)"
  echo "  job $MIMO_JOB_ID: $MIMO_NODES node(s) x $MIMO_TPN task(s) = world size $MIMO_WORLD, one srun task per GPU," \
    "$MIMO_THREADS CPU(s) per task"
  echo "  rendezvous  MASTER_ADDR=$MIMO_MASTER_ADDR MASTER_PORT=$MIMO_MASTER_PORT (one gloo barrier before the merge)"
  mimo_print_ranks "$1" cache_print_slice
}

cache_print_slice() { echo "    slice: ${CACHE_SLICES[$1]}"; }

mimo_finished_note() { echo "the teacher cache is in $CACHE_DIR (train with --set data.teacher_cache=$CACHE_DIR)"; }
mimo_preempted_note() {
  echo "the ranks stopped; $(find "$CACHE_DIR/parts" -maxdepth 1 -name 'part-*' 2>/dev/null | wc -l) finished" \
    "part(s) are kept in $CACHE_DIR/parts"
}
mimo_requeued_note() { echo "it continues from the finished parts"; }

cache_main() {
  MIMO_SCRIPT=$1 MIMO_DEFAULT_RECIPE=$2 MIMO_STAGE=cache
  shift 2
  MIMO_EARLY_SIGNAL=''
  trap 'MIMO_EARLY_SIGNAL=USR1' USR1
  trap 'MIMO_EARLY_SIGNAL=TERM' TERM
  cache_parse_args "$@"
  mimo_find_python
  mimo_find_recipe
  CFG_tracking_default=''
  if [[ -n ${SLURM_JOB_ID:-} && $MIMO_LAYOUT_GIVEN == 0 ]]; then
    command -v srun >/dev/null || mimo_die "SLURM_JOB_ID is set but srun is not on PATH"
    CFG_cuda_devices=$("$MIMO_PYTHON" -c 'import torch; print(torch.cuda.device_count())') ||
      mimo_die "$MIMO_PYTHON cannot import torch"
    mimo_layout_from_allocation
  elif ((MIMO_DRY)); then
    mimo_layout_from_args
  else
    mimo_die "not inside a Slurm job: submit with 'sbatch $MIMO_SCRIPT', or add --dry-run to see the launch"
  fi
  MIMO_WORLD=$((MIMO_NODES * MIMO_TPN))
  MIMO_MASTER_ADDR=${MIMO_HOSTS[0]}
  MIMO_MASTER_PORT=${MIMO_MASTER_PORT:-$((MIMO_PORT_BASE + MIMO_JOB_ID % MIMO_PORT_SPAN))}
  mimo_choose_backend "$MIMO_GPUS"
  cache_plan
  mimo_srun_command
  if ((MIMO_DRY)); then
    cache_print_plan all
    exit 0
  fi
  cache_print_plan first
  mimo_launch
}

cache_main "$MIMO_ROOT/slurm/teacher_cache.sh" recipes/stage1.yaml "$@"
