#!/bin/bash
# MIMO stage 1 (distillation onto the frozen English teacher) on a Slurm cluster; docs/cluster.md has the details.
#
#   sbatch slurm/stage1.sh                                         # recipes/stage1.yaml, the resources below
#   sbatch -N 4 -p gpu -t 2-00:00:00 slurm/stage1.sh --set optim.lr=5e-5
#   bash slurm/stage1.sh --dry-run --nodes 2 --gpus-per-node 8     # every rank's command; needs no Slurm
#
# Edit the #SBATCH lines below or override them on the sbatch command line (which wins); the partition is the
# cluster's default unless you pass -p. One srun task runs per GPU, so keep --ntasks-per-node = --gpus-per-node.
# Slurm sends SIGUSR1 300 s before the time limit: the ranks checkpoint and exit 75, the job requeues itself and the
# restarted job resumes (--resume auto). The log appends across requeues.
#SBATCH --job-name=mimo-stage1
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --output=%x-%j.out
#SBATCH --open-mode=append
#SBATCH --requeue
#SBATCH --signal=B:USR1@300
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

mimo_main 1 "$MIMO_ROOT/slurm/stage1.sh" recipes/stage1.yaml "$@"
