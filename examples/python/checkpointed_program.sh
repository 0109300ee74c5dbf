#!/bin/bash
#SBATCH --job-name=checkpointed_program
#SBATCH --time=02:00:00
#SBATCH --mem=4GB
#SBATCH --output=job_%j.out
#SBATCH --open-mode=append          # a requeued run appends to the same output file
#SBATCH --requeue                   # the job may be put back in the queue (by us, or after preemption)
#SBATCH --signal=B:USR1@300         # 5 minutes before the time limit, SIGUSR1 to this batch shell
#
# The checkpointed program of the Slurm guide, redone with ckpt (pip install ckpt-hpc).
#
# Before the time limit Slurm sends USR1 to this shell (B:). The shell passes it to Python, which writes a
# checkpoint and goes on, and asks Slurm to requeue the job. Slurm then sends SIGTERM to every process of
# the job: Python writes a last checkpoint and stops cleanly. The requeued job (same job id, same output
# file) resumes from the newest checkpoint that verifies, and ends with the same results as one long run.
# Python also checkpoints every CKPT_INTERVAL, and on SIGTERM from preemption or scancel.
#
# Without the requeue, `exec python checkpointed_program.py` in place of the lines below also lets USR1
# reach Python (checkpoint and continue); resubmitting the script then resumes (ckpt finds the previous
# job's checkpoint of the same job name).

# Load any modules you need, e.g.:  module load python/3.11  (and activate a venv with ckpt-hpc installed)
PYTHON=${PYTHON:-python3}
MAX_RESTARTS=${MAX_RESTARTS:-10}      # stop requeueing after this many restarts

cd "${SLURM_SUBMIT_DIR:-.}" || exit 1
export CKPT_DIR=${CKPT_DIR:-$PWD/checkpoints}   # where <job_id>.ckpt and its log are written
export CKPT_INTERVAL=${CKPT_INTERVAL:-20:00}    # also checkpoint every 20 minutes (Slurm time format)

echo "job ${SLURM_JOB_ID:-?} (restart ${SLURM_RESTART_COUNT:-0}) on $(hostname) at $(date)"

# Run your checkpointed program in the background, so that this shell can handle signals while it runs
# (bash runs a trap only once the foreground command has finished).
"$PYTHON" checkpointed_program.py "$@" &
child=$!

requeue() {
    echo "USR1: the time limit is near; checkpoint, then requeue"
    kill -USR1 "$child" 2>/dev/null            # checkpoint and continue
    if [ "${SLURM_RESTART_COUNT:-0}" -lt "$MAX_RESTARTS" ] && [ -n "${SLURM_JOB_ID:-}" ]; then
        scontrol requeue "$SLURM_JOB_ID"       # Slurm sends SIGTERM: last checkpoint, clean stop
    else
        echo "not requeueing (restart ${SLURM_RESTART_COUNT:-0} of $MAX_RESTARTS)"
    fi
}
trap requeue USR1
trap 'kill -TERM "$child" 2>/dev/null' TERM

# `wait` returns early (status > 128) whenever a trapped signal arrives: wait until the program has
# really exited, and take its own exit status.
while true; do
    wait "$child"
    status=$?
    if ! kill -0 "$child" 2>/dev/null; then
        if [ "$status" -gt 128 ]; then
            wait "$child"
            s=$?
            [ "$s" -ne 127 ] && status=$s
        fi
        break
    fi
done

# Check if job finished or was interrupted
case $status in
    0) echo "Job completed successfully" ;;
    3) echo "Job was interrupted after a checkpoint; it resumes from it when requeued or resubmitted" ;;
    *) echo "Job failed with status $status; the last checkpoint allows a restart" ;;
esac
exit "$status"
