#!/bin/bash
#SBATCH --job-name=checkpointed_program
#SBATCH --time=02:00:00
#SBATCH --mem=4GB
#SBATCH --output=job_%j.out
#SBATCH --open-mode=append          # a requeued run appends to the same output file
#SBATCH --requeue                   # the job may be put back in the queue (by ckpt job, or after preemption)
#SBATCH --signal=B:USR1@300         # 5 minutes before the time limit, SIGUSR1 to this batch shell
#
# The checkpointed program of the Slurm guide, redone with ckpt (pip install ckpt-hpc, which also installs
# the `ckpt` command). `exec ckpt job` replaces this shell by the supervisor, so Slurm's signals reach it:
# USR1 (the warning above) -> SIGTERM to Python, which writes a last checkpoint and stops; ckpt job then
# requeues the job (`scontrol requeue`, only while SLURM_RESTART_COUNT < --max-restarts and the last run
# made progress). SIGTERM from scancel or preemption also checkpoints, without a requeue (resubmit to
# continue). The requeued job (same id, same output file) resumes from the newest checkpoint that verifies.
# Python also checkpoints every CKPT_INTERVAL. Exit status: 0 finished, 3 stopped after a checkpoint, 4
# requeued (`ckpt job --help`).

# Load any modules you need, e.g.:  module load python/3.11  (and activate a venv with ckpt-hpc installed)
cd "${SLURM_SUBMIT_DIR:-.}" || exit 1
export CKPT_DIR=${CKPT_DIR:-$PWD/checkpoints}   # where <job_id>.ckpt and its log are written
export CKPT_INTERVAL=${CKPT_INTERVAL:-20:00}    # also checkpoint every 20 minutes (Slurm time format)
echo "job ${SLURM_JOB_ID:-?} (restart ${SLURM_RESTART_COUNT:-0}) on $(hostname) at $(date)"

exec "${CKPT:-ckpt}" job --requeue --max-restarts "${MAX_RESTARTS:-10}" --name checkpointed_program -- \
  "${PYTHON:-python3}" checkpointed_program.py "$@"
