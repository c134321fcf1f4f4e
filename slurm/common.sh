# shellcheck shell=bash
# What slurm/stage1.sh, slurm/stage2.sh and slurm/teacher_cache.sh share. Sourced, never run: argument parsing, the
# launch plan, the environment of every rank, the dry run, signal forwarding and the requeue decision. docs/cluster.md
# explains it.
#
# Launch shape: ONE SRUN TASK PER GPU. Slurm starts every rank itself and hands each its SLURM_PROCID,
# SLURM_LOCALID and SLURM_NTASKS, which become RANK, LOCAL_RANK and WORLD_SIZE (DeepSpeed reads those, never
# SLURM_*). Why not one launcher (torchrun/deepspeed) per node: with srun there is no second process tree between
# Slurm and the trainer, so Slurm's signals, accounting, time limit and cleanup reach every rank directly, nothing
# needs ssh/pdsh between nodes, and the world size always equals the allocation. Each task sees all GPUs of its
# node and takes cuda:LOCAL_RANK (so do not ask for --gpus-per-task or --gpu-bind=single).

MIMO_EXIT_PREEMPTED=75  # mimo_ds.signals.EXIT_PREEMPTED: every rank checkpointed after a signal; resumable
MIMO_PORT_BASE=10000    # MASTER_PORT = MIMO_PORT_BASE + job id mod MIMO_PORT_SPAN, unless MIMO_MASTER_PORT is set
MIMO_PORT_SPAN=50000

mimo_log() { printf 'mimo-slurm %(%F %T)T  %s\n' -1 "$*"; }

mimo_die() {  # bad input: exit 2, the trainer's status for "bad input before start", so the job is never requeued
  printf 'mimo-slurm: error: %s\n' "$*" >&2
  exit 2
}

mimo_usage() {
  cat <<EOF
usage: sbatch [SBATCH OPTIONS] slurm/stage$MIMO_STAGE.sh [OPTIONS]
       bash slurm/stage$MIMO_STAGE.sh --dry-run [--nodes N] [--gpus-per-node G] [OPTIONS]

  --recipe YAML         run config (default: $MIMO_DEFAULT_RECIPE; or \$MIMO_RECIPE)
  --output-dir DIR      becomes --set output_dir=DIR (or \$MIMO_OUTPUT_DIR); default: the recipe's
  --set KEY=VALUE       a run-config override, repeatable (\$MIMO_SET holds more, whitespace-separated)
EOF
  [[ $MIMO_STAGE == 2 ]] && cat <<EOF
  --init-from DIR       stage 1's output folder (or \$MIMO_INIT_FROM); default: the recipe's init_from
EOF
  cat <<EOF
  --dry-run             print every rank's command and environment and start nothing (or MIMO_DRY_RUN=1);
                        outside Slurm the layout comes from the options below, else from this script's #SBATCH lines
  --nodes N  --gpus-per-node G  --ntasks-per-node T  --cpus-per-task C  --job-id ID  --hosts H1,H2,...
                        the layout a dry run outside Slurm assumes (G=0: CPU ranks, gloo)
Environment: MIMO_PYTHON (default: the checkout's .venv/bin/python, else python3), MIMO_BACKEND (nccl|gloo, default:
from the node's GPUs), MIMO_MASTER_PORT, MIMO_SRUN_ARGS (extra srun options), MLFLOW_TRACKING_URI.
EOF
}

mimo_sbatch_default() {  # the value of '#SBATCH --NAME=VALUE' in the stage script, for a dry run's defaults
  sed -n "s/^#SBATCH --$1=\([^ ]*\).*/\1/p" "$MIMO_SCRIPT" | head -n 1
}

mimo_require_int() {  # NAME VALUE
  [[ $2 =~ ^[0-9]+$ ]] || mimo_die "$1 must be a non-negative integer, got '$2'"
}

mimo_layout_reset() {  # no dry-run layout given yet
  MIMO_LAYOUT_GIVEN=0
  DRY_NODES='' DRY_GPUS='' DRY_TASKS='' DRY_CPUS='' DRY_JOB_ID='' DRY_HOSTS=''
}

mimo_layout_option() {  # NAME VALUE: one of a dry run's layout options (every stage script takes the same ones)
  case $1 in
    --nodes) DRY_NODES=$2 ;;
    --gpus-per-node) DRY_GPUS=$2 ;;
    --ntasks-per-node) DRY_TASKS=$2 ;;
    --cpus-per-task) DRY_CPUS=$2 ;;
    --job-id) DRY_JOB_ID=$2 ;;
    --hosts) DRY_HOSTS=$2 ;;
    *) mimo_die "internal: '$1' is not a layout option" ;;
  esac
  MIMO_LAYOUT_GIVEN=1
}

mimo_check_dry() {  # MIMO_DRY is 0 or 1, and a layout was given only to a dry run
  [[ $MIMO_DRY =~ ^[01]$ ]] || mimo_die "MIMO_DRY_RUN must be 0 or 1, got '$MIMO_DRY'"
  [[ $MIMO_DRY == 1 || $MIMO_LAYOUT_GIVEN == 0 ]] ||
    mimo_die "--nodes/--gpus-per-node/... describe a dry run: add --dry-run (a real job takes its layout from sbatch)"
}

mimo_parse_args() {
  MIMO_RECIPE=${MIMO_RECIPE:-$MIMO_DEFAULT_RECIPE}
  MIMO_DRY=${MIMO_DRY_RUN:-0}
  read -r -a MIMO_SETS <<<"${MIMO_SET:-}"
  [[ -n ${MIMO_OUTPUT_DIR:-} ]] && MIMO_SETS+=("output_dir=$(realpath -m "$MIMO_OUTPUT_DIR")")
  [[ -n ${MIMO_INIT_FROM:-} ]] && MIMO_SETS+=("init_from=$(realpath -m "$MIMO_INIT_FROM")")
  mimo_layout_reset
  while (($#)); do
    case $1 in
      -h | --help) mimo_usage; exit 0 ;;
      --dry-run) MIMO_DRY=1; shift; continue ;;
      --recipe | --output-dir | --init-from | --set | --nodes | --gpus-per-node | --ntasks-per-node | --cpus-per-task \
        | --job-id | --hosts) [[ $# -ge 2 ]] || mimo_die "$1 needs a value (see --help)" ;;
      *) mimo_die "unknown argument '$1' (see --help)" ;;
    esac
    case $1 in
      --recipe) MIMO_RECIPE=$2 ;;
      --output-dir) MIMO_SETS+=("output_dir=$(realpath -m "$2")") ;;
      --init-from)
        [[ $MIMO_STAGE == 2 ]] || mimo_die "--init-from is for stage 2; stage 1 starts from the recipe's student.path"
        MIMO_SETS+=("init_from=$(realpath -m "$2")") ;;
      --set)
        [[ $2 == *=* ]] || mimo_die "--set expects KEY=VALUE, got '$2'"
        MIMO_SETS+=("$2") ;;
      --nodes | --gpus-per-node | --ntasks-per-node | --cpus-per-task | --job-id | --hosts) mimo_layout_option "$1" "$2" ;;
    esac
    shift 2
  done
  mimo_check_dry
}

mimo_find_python() {
  if [[ -n ${MIMO_PYTHON:-} ]]; then
    command -v "$MIMO_PYTHON" >/dev/null || mimo_die "MIMO_PYTHON=$MIMO_PYTHON is not an executable"
  elif [[ -x $MIMO_ROOT/.venv/bin/python ]]; then
    MIMO_PYTHON=$MIMO_ROOT/.venv/bin/python
  else
    MIMO_PYTHON=$(command -v python3) || mimo_die "no python3 on PATH; set MIMO_PYTHON"
  fi
}

mimo_find_recipe() {  # relative recipes are looked up in the working directory, then in the checkout
  if [[ -f $MIMO_RECIPE ]]; then
    MIMO_RECIPE=$(realpath "$MIMO_RECIPE")
  elif [[ $MIMO_RECIPE != /* && -f $MIMO_ROOT/$MIMO_RECIPE ]]; then
    MIMO_RECIPE=$(realpath "$MIMO_ROOT/$MIMO_RECIPE")
  else
    mimo_die "recipe not found: $MIMO_RECIPE (looked in $PWD and $MIMO_ROOT)"
  fi
}

# Validate the run config once, on the batch node, with the trainer's own loader (a typo fails here, not on N ranks),
# and read what the launch needs from it. Prints KEY=VALUE lines; with $1 = count-gpus, also this node's CUDA devices.
mimo_config_facts() {
  "$MIMO_PYTHON" - "$1" "$MIMO_RECIPE" "${MIMO_SETS[@]}" <<'PY'
import sys
import traceback
from pathlib import Path

from mimo_ds.config import load_config
from mimo_ds.errors import EXIT_BAD_INPUT, UserError, debugging

try:
    cfg = load_config(sys.argv[2], sys.argv[3:])
except UserError as exc:
    if debugging():
        traceback.print_exc()
    print(f"mimo-slurm: error: {exc}", file=sys.stderr)
    sys.exit(EXIT_BAD_INPUT)
out = Path(cfg.output_dir).resolve()
uri, source, default = "", "disabled (tracking.enabled: false)", ""
if cfg.tracking.enabled:  # the trainer's precedence; by default the store lies beside the stage output on the
    from mimo_ds.tracking import URI_FROM_DEFAULT, tracking_uri_choice  # shared filesystem, one for both stages

    uri, source = tracking_uri_choice(cfg.tracking.tracking_uri, default=f"sqlite:///{out.parent / 'mlflow.db'}")
    if source == URI_FROM_DEFAULT:  # the ranks are given it as MLFLOW_TRACKING_URI: their own default is the cwd's
        default, source = uri, "the Slurm default (SQLite beside the output folder)"
print(f"stage={cfg.stage}\nname={cfg.name}\noutput_dir={out}\ninit_from={cfg.init_from or ''}")
print(f"tracking_uri={uri}\ntracking_source={source}\ntracking_default={default}")
if sys.argv[1] == "count-gpus":
    import torch

    print(f"cuda_devices={torch.cuda.device_count()}")
PY
}

mimo_read_config() {  # $1: count-gpus or no-gpus. Sets CFG_<key> for every line mimo_config_facts prints
  local facts key value status
  CFG_stage='' CFG_name='' CFG_output_dir='' CFG_init_from='' CFG_cuda_devices=''
  CFG_tracking_uri='' CFG_tracking_source='' CFG_tracking_default=''
  # a refused config (status 2) has printed its one line; anything else is a bug, its traceback above
  facts=$(mimo_config_facts "$1") || {
    status=$?
    ((status == 2)) || mimo_log "reading the run config failed (status $status); nothing was started"
    exit "$status"
  }
  while IFS='=' read -r key value; do
    printf -v "CFG_$key" '%s' "$value"
  done <<<"$facts"
  [[ $CFG_stage == "$MIMO_STAGE" ]] ||
    mimo_die "$MIMO_RECIPE is a stage-$CFG_stage recipe; submit it with slurm/stage$CFG_stage.sh"
}

mimo_choose_backend() {  # $1: GPUs per node. NCCL where the node has GPUs, gloo (DeepSpeed's CPU accelerator) where not
  local gpus=$1
  MIMO_BACKEND=${MIMO_BACKEND:-$( ((gpus > 0)) && echo nccl || echo gloo)}
  case $MIMO_BACKEND in
    nccl)
      MIMO_ACCELERATOR=cuda
      ((gpus >= MIMO_TPN)) ||
        mimo_die "$MIMO_TPN tasks per node but $gpus GPU(s) per node: one task per GPU (keep --ntasks-per-node" \
          "= --gpus-per-node)" ;;
    gloo) MIMO_ACCELERATOR=cpu ;;
    *) mimo_die "MIMO_BACKEND must be nccl or gloo, got '$MIMO_BACKEND'" ;;
  esac
}

mimo_layout_from_allocation() {
  MIMO_JOB_ID=$SLURM_JOB_ID
  MIMO_NODES=${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}}
  [[ -n ${SLURM_NTASKS:-} ]] ||
    mimo_die "the allocation has no task count: submit with --ntasks-per-node (one task per GPU)"
  ((SLURM_NTASKS % MIMO_NODES == 0)) ||
    mimo_die "$SLURM_NTASKS tasks do not split evenly over $MIMO_NODES nodes: use --ntasks-per-node"
  MIMO_TPN=$((SLURM_NTASKS / MIMO_NODES))
  MIMO_THREADS=${SLURM_CPUS_PER_TASK:-1}
  mapfile -t MIMO_HOSTS < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
  ((${#MIMO_HOSTS[@]} == MIMO_NODES)) ||
    mimo_die "scontrol listed ${#MIMO_HOSTS[@]} hosts for $MIMO_NODES nodes ($SLURM_JOB_NODELIST)"
  MIMO_GPUS=${CFG_cuda_devices:-0}
}

mimo_layout_from_args() {  # a dry run outside Slurm: the options, else the stage script's #SBATCH defaults
  MIMO_NODES=${DRY_NODES:-$(mimo_sbatch_default nodes)}
  MIMO_GPUS=${DRY_GPUS:-$(mimo_sbatch_default gpus-per-node)}
  MIMO_THREADS=${DRY_CPUS:-$(mimo_sbatch_default cpus-per-task)}
  MIMO_JOB_ID=${DRY_JOB_ID:-12345}
  mimo_require_int --nodes "$MIMO_NODES"
  mimo_require_int --gpus-per-node "$MIMO_GPUS"
  mimo_require_int --cpus-per-task "$MIMO_THREADS"
  mimo_require_int --job-id "$MIMO_JOB_ID"
  ((MIMO_NODES > 0)) || mimo_die "--nodes must be at least 1"
  if [[ -n $DRY_TASKS ]]; then
    MIMO_TPN=$DRY_TASKS
  elif ((MIMO_GPUS > 0)); then
    MIMO_TPN=$MIMO_GPUS
  else
    MIMO_TPN=$(mimo_sbatch_default ntasks-per-node)
  fi
  mimo_require_int --ntasks-per-node "$MIMO_TPN"
  ((MIMO_TPN > 0)) || mimo_die "--ntasks-per-node must be at least 1"
  if [[ -n $DRY_HOSTS ]]; then
    IFS=',' read -r -a MIMO_HOSTS <<<"$DRY_HOSTS"
    ((${#MIMO_HOSTS[@]} == MIMO_NODES)) || mimo_die "--hosts names ${#MIMO_HOSTS[@]} hosts for --nodes $MIMO_NODES"
  else
    MIMO_HOSTS=()
    local n
    for ((n = 1; n <= MIMO_NODES; n++)); do MIMO_HOSTS+=("node$n"); done
  fi
}

mimo_finish_layout() {
  MIMO_WORLD=$((MIMO_NODES * MIMO_TPN))
  MIMO_MASTER_ADDR=${MIMO_HOSTS[0]}
  MIMO_MASTER_PORT=${MIMO_MASTER_PORT:-$((MIMO_PORT_BASE + MIMO_JOB_ID % MIMO_PORT_SPAN))}
  mimo_choose_backend "$MIMO_GPUS"
  MIMO_COMMAND=("$MIMO_PYTHON" -m mimo_ds.train --config "$MIMO_RECIPE")
  local item
  for item in "${MIMO_SETS[@]}"; do MIMO_COMMAND+=(--set "$item"); done
  MIMO_COMMAND+=(--resume auto)  # a fresh job starts fresh, a requeued one continues from its newest checkpoint
}

# The environment of one rank, as KEY=VALUE lines: the single definition both the dry run prints and srun's tasks
# export. Reads the layout from MIMO_* variables (set in the batch script and exported to the tasks).
mimo_rank_env() {  # RANK LOCAL_RANK NODE_RANK
  printf '%s\n' "RANK=$1" "LOCAL_RANK=$2" "WORLD_SIZE=$MIMO_WORLD" "LOCAL_WORLD_SIZE=$MIMO_TPN" "NODE_RANK=$3" \
    "MASTER_ADDR=$MIMO_MASTER_ADDR" "MASTER_PORT=$MIMO_MASTER_PORT" "DS_ACCELERATOR=$MIMO_ACCELERATOR" \
    "OMP_NUM_THREADS=$MIMO_THREADS"
  [[ -z ${CFG_tracking_default:-} ]] || echo "MLFLOW_TRACKING_URI=$CFG_tracking_default"
}

mimo_srun_command() {
  MIMO_SRUN=(srun --kill-on-bad-exit=0 --distribution=block --nodes="$MIMO_NODES" --ntasks="$MIMO_WORLD"
    --ntasks-per-node="$MIMO_TPN" --cpus-per-task="$MIMO_THREADS")
  local extra
  read -r -a extra <<<"${MIMO_SRUN_ARGS:-}"
  # shellcheck disable=SC2016  # "$1" and "${@:2}" are the task's own arguments, expanded by the task's bash
  MIMO_SRUN+=("${extra[@]}" bash -c 'source "$1" && mimo_rank_exec "${@:2}"' mimo-rank "$MIMO_ROOT/slurm/common.sh"
    "${MIMO_COMMAND[@]}")
}

mimo_rank_line() {  # RANK LOCAL_RANK NODE_RANK: the exact command line of one rank
  local -a env_pairs
  mapfile -t env_pairs < <(mimo_rank_env "$@")
  printf 'env'
  printf ' %q' "${env_pairs[@]}" "${MIMO_COMMAND[@]}"
  printf '\n'
}

mimo_print_plan() {  # $1: all (every rank) or first (rank 0 only, the header of a real job's log)
  echo "mimo-ds stage $MIMO_STAGE launch plan$( ((MIMO_DRY)) && echo ' (dry run: nothing is started)')"
  echo "  recipe      $MIMO_RECIPE ($CFG_name)"
  echo "  output_dir  $CFG_output_dir"
  [[ $MIMO_STAGE == 1 ]] || echo "  init_from   ${CFG_init_from:-none (the student starts from student.path)}"
  echo "  tracking    ${CFG_tracking_uri:-off} (${CFG_tracking_source})"
  echo "  job $MIMO_JOB_ID: $MIMO_NODES node(s) x $MIMO_TPN task(s) = world size $MIMO_WORLD, one srun task per GPU," \
    "backend $MIMO_BACKEND (DS_ACCELERATOR=$MIMO_ACCELERATOR), $MIMO_THREADS CPU(s) per task"
  echo "  rendezvous  MASTER_ADDR=$MIMO_MASTER_ADDR MASTER_PORT=$MIMO_MASTER_PORT" \
    "(port = $MIMO_PORT_BASE + job id mod $MIMO_PORT_SPAN unless MIMO_MASTER_PORT is set)"
  mimo_print_ranks "$1"
}

# The srun line and each rank's command under its node; $1: all or first (rank 0 only); $2 (optional): a function
# given RANK that prints more about that rank (the teacher cache's slice).
mimo_print_ranks() {
  local node local_rank rank
  printf '  launch     '
  printf ' %q' "${MIMO_SRUN[@]}"
  printf '\n'
  for ((node = 0; node < MIMO_NODES; node++)); do
    echo "node $node (${MIMO_HOSTS[node]}):"
    for ((local_rank = 0; local_rank < MIMO_TPN; local_rank++)); do
      rank=$((node * MIMO_TPN + local_rank))  # srun --distribution=block: node n holds ranks n*T .. n*T+T-1
      echo "  rank $rank: $(mimo_rank_line "$rank" "$local_rank" "$node")"
      [[ -z ${2:-} ]] || "$2" "$rank"
      [[ $1 == all ]] || return 0
    done
  done
}

# Runs inside every srun task: the rank's environment from SLURM_PROCID/LOCALID/NODEID, then the trainer replaces
# this shell (exec), so signals from Slurm and from the batch script reach the trainer itself.
mimo_rank_exec() {
  local pair
  [[ ${SLURM_NTASKS:-} == "$MIMO_WORLD" ]] ||
    mimo_die "srun started ${SLURM_NTASKS:-?} tasks, the plan has $MIMO_WORLD (check MIMO_SRUN_ARGS)"
  while IFS= read -r pair; do
    export "${pair?}"
  done < <(mimo_rank_env "$SLURM_PROCID" "$SLURM_LOCALID" "$SLURM_NODEID")
  exec "$@"
}

mimo_forward_signal() {  # $1: the signal the batch shell got. srun relays USR1 to every task (TERM would kill them)
  MIMO_FORWARDED=1
  mimo_log "got SIG$1: asking every rank to checkpoint and stop (SIGUSR1 through srun $MIMO_SRUN_PID)"
  kill -s USR1 "$MIMO_SRUN_PID" 2>/dev/null || true
}

# What the log says when the job finished, stopped for a signal, or was requeued: a stage's output and checkpoints
# (slurm/teacher_cache.sh redefines these for its cache folder and parts).
mimo_finished_note() { echo "the stage output is in $CFG_output_dir"; }
mimo_preempted_note() { echo "the ranks checkpointed ($(mimo_newest_checkpoint) in $CFG_output_dir/checkpoints)"; }
mimo_requeued_note() { echo "it resumes from its newest checkpoint with --resume auto"; }

mimo_requeue() {  # after the ranks checkpointed (or before any started): requeue; exit 75 if Slurm refuses
  if scontrol requeue "$SLURM_JOB_ID"; then
    mimo_log "requeued job $SLURM_JOB_ID: $(mimo_requeued_note)"
    exit 0
  fi
  mimo_log "could not requeue job $SLURM_JOB_ID (cancelled, or not requeueable); resubmit it to resume"
  exit "$MIMO_EXIT_PREEMPTED"
}

mimo_newest_checkpoint() {
  local dir=$CFG_output_dir/checkpoints
  [[ -d $dir ]] || return 0
  find "$dir" -mindepth 1 -maxdepth 1 -name 'step_*' -printf '%f\n' | sort -t_ -k2,2n | tail -n 1
}

mimo_launch() {
  local status
  export MIMO_ROOT MIMO_WORLD MIMO_TPN MIMO_MASTER_ADDR MIMO_MASTER_PORT MIMO_ACCELERATOR MIMO_THREADS
  export CFG_tracking_default
  [[ -z $CFG_tracking_default ]] || mkdir -p "$(dirname "$CFG_output_dir")"
  trap '' USR1 TERM
  if [[ -n $MIMO_EARLY_SIGNAL ]]; then
    mimo_log "got SIG$MIMO_EARLY_SIGNAL before the ranks started: requeueing without starting them"
    mimo_requeue
  fi
  mimo_log "job $SLURM_JOB_ID starts (restart ${SLURM_RESTART_COUNT:-0}) on ${MIMO_HOSTS[*]}"
  MIMO_SRUN_PID=''
  trap 'mimo_forward_signal USR1' USR1
  trap 'mimo_forward_signal TERM' TERM
  "${MIMO_SRUN[@]}" &
  MIMO_SRUN_PID=$!
  while :; do  # a trapped signal interrupts `wait`; keep waiting until srun itself has ended
    MIMO_FORWARDED=0
    wait "$MIMO_SRUN_PID"
    status=$?
    ((MIMO_FORWARDED && status > 128)) || break
  done
  trap '' USR1 TERM
  case $status in
    0)
      mimo_log "finished: $(mimo_finished_note)"
      exit 0 ;;
    "$MIMO_EXIT_PREEMPTED")
      mimo_log "preempted: $(mimo_preempted_note)"
      mimo_requeue ;;
    *)
      mimo_log "the trainer failed with status $status: not requeued"
      exit "$status" ;;
  esac
}

# The stage scripts' entry point: mimo_main STAGE SCRIPT DEFAULT_RECIPE "$@".
mimo_main() {
  MIMO_STAGE=$1 MIMO_SCRIPT=$2 MIMO_DEFAULT_RECIPE=$3
  shift 3
  MIMO_EARLY_SIGNAL=''  # a signal while the launch is prepared: remembered, and the job requeued before any rank
  trap 'MIMO_EARLY_SIGNAL=USR1' USR1
  trap 'MIMO_EARLY_SIGNAL=TERM' TERM
  mimo_parse_args "$@"
  mimo_find_python
  mimo_find_recipe
  if [[ -n ${SLURM_JOB_ID:-} && $MIMO_LAYOUT_GIVEN == 0 ]]; then
    command -v srun >/dev/null || mimo_die "SLURM_JOB_ID is set but srun is not on PATH"
    mimo_read_config count-gpus
    mimo_layout_from_allocation
  elif ((MIMO_DRY)); then
    mimo_read_config no-gpus
    mimo_layout_from_args
  else
    mimo_die "not inside a Slurm job: submit with 'sbatch $MIMO_SCRIPT', or add --dry-run to see the launch"
  fi
  mimo_finish_layout
  mimo_srun_command
  if ((MIMO_DRY)); then
    mimo_print_plan all
    exit 0
  fi
  mimo_print_plan first
  mimo_launch
}
