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
# Before the time limit Slurm sends USR1 to this shell (B:). The shell sends SIGTERM to Python, which writes
# a checkpoint and stops cleanly (exit status 3); the shell then requeues the job with
# `ckpt requeue --max-restarts N`, which runs `scontrol requeue` only while SLURM_RESTART_COUNT < N and the
# newest checkpoint is newer than the one recorded at the previous requeue, so a job that keeps failing
# before its first checkpoint is not requeued again and again. The requeued job (same job id, same output
# file) resumes from the newest checkpoint that verifies, and ends with the same results as one long run.
# Python also checkpoints every CKPT_INTERVAL, and on SIGTERM from preemption, scancel or the time limit
# (those stop it without a requeue: resubmit the script to continue).
# `ckpt` is the command-line tool of ckpt (cargo install --path ckpt-cli, or CKPT=/path/to/ckpt); without
# it the script falls back to `scontrol requeue` bounded by SLURM_RESTART_COUNT only.
#
# Without the requeue, `exec python checkpointed_program.py` in place of the lines below also lets USR1
# reach Python (checkpoint and continue); resubmitting the script then resumes (ckpt finds the previous
# job's checkpoint of the same job name).

# Load any modules you need, e.g.:  module load python/3.11  (and activate a venv with ckpt-hpc installed)
PYTHON=${PYTHON:-python3}
MAX_RESTARTS=${MAX_RESTARTS:-10}      # stop requeueing after this many restarts
CKPT=${CKPT:-ckpt}                    # the ckpt command-line tool

cd "${SLURM_SUBMIT_DIR:-.}" || exit 1
export CKPT_DIR=${CKPT_DIR:-$PWD/checkpoints}   # where <job_id>.ckpt and its log are written
export CKPT_INTERVAL=${CKPT_INTERVAL:-20:00}    # also checkpoint every 20 minutes (Slurm time format)

echo "job ${SLURM_JOB_ID:-?} (restart ${SLURM_RESTART_COUNT:-0}) on $(hostname) at $(date)"

# Run your checkpointed program in the background, so that this shell can handle signals while it runs
# (bash runs a trap only once the foreground command has finished).
"$PYTHON" checkpointed_program.py "$@" &
child=$!

got_usr1=0
on_usr1() {
    echo "USR1: the time limit is near; checkpoint, then requeue"
    got_usr1=1
    kill -TERM "$child" 2>/dev/null            # last checkpoint, then a clean stop (exit status 3)
}
trap on_usr1 USR1
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
# Requeue only when the time-limit warning stopped the program after its checkpoint (not after scancel).
if [ "$status" = 3 ] && [ "$got_usr1" = 1 ] && [ -n "${SLURM_JOB_ID:-}" ]; then
    if command -v "$CKPT" >/dev/null 2>&1; then
        "$CKPT" requeue --name checkpointed_program --max-restarts "$MAX_RESTARTS"
    elif [ "${SLURM_RESTART_COUNT:-0}" -lt "$MAX_RESTARTS" ]; then
        echo "'$CKPT' not found (set CKPT=/path/to/ckpt): requeueing without the progress check"
        scontrol requeue "$SLURM_JOB_ID"
    else
        echo "not requeueing (restart ${SLURM_RESTART_COUNT:-0} of $MAX_RESTARTS)"
    fi
fi
exit "$status"
