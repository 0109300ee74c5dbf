#!/usr/bin/env bash
# Integration tests of ckpt against a live single-node Slurm (see tests/slurm/README.md).
#
#   bash tests/slurm/run.sh                      # every scenario, concurrently
#   CKPT_SLURM_SCENARIOS="c-signal create" bash tests/slurm/run.sh
#
# Starts the cluster (ci/slurm/configure.sh + start.sh) when it is not running, and stops it at the end
# if it started it. When Slurm is not installed it installs it if CKPT_SLURM_INSTALL=1 (or CI=true), and
# otherwise skips cleanly (exit 0). Prints PASS/FAIL per scenario with the job's output lines as evidence,
# and exits 1 when any scenario failed.
#
# Knobs: CKPT_SLURM_SCENARIOS (default: all, see SCENARIOS below), CKPT_SLURM_WORK (work
# directory, default a new /tmp/ckpt-slurm.XXXXXX, kept on failure), CKPT_SLURM_KEEP=1 (leave the cluster
# running), CKPT_SLURM_VENV (an existing venv with ckpt-hpc installed; default: a fresh one in the work
# directory), SLURM_CPUS (CPUs the node declares when this script configures it; default 32, so that the
# three 4-rank MPI jobs and the other jobs run side by side).
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
HERE=$ROOT/tests/slurm
SCENARIOS=${CKPT_SLURM_SCENARIOS:-c-signal c-deadline python create shim mpi-c-srun mpi-f-srun mpi-c-mpirun mpi-c-srun-each requeue-finish requeue-max requeue-noprogress}
T_START=$(date +%s)
say() { printf '[%s +%3ss] %s\n' "$(date +%T)" "$(( $(date +%s) - T_START ))" "$*"; }

# ---------------------------------------------------------------------------------------------- cluster
want_mpi=0
case " $SCENARIOS " in *" mpi-"*) want_mpi=1 ;; esac
need_install=0
if ! command -v sbatch >/dev/null || [ ! -x /usr/sbin/slurmctld ] || [ ! -x /usr/sbin/munged ]; then
  need_install=1
elif [ "$want_mpi" = 1 ] && { ! command -v mpicc >/dev/null || ! command -v mpif90 >/dev/null; }; then
  # the MPI scenarios skip without Open MPI and gfortran, unless asked to install them
  [ "${CKPT_SLURM_INSTALL:-}" = 1 ] || [ "${CI:-}" = true ] && need_install=1
fi
if [ "$need_install" = 1 ]; then
  if [ "${CKPT_SLURM_INSTALL:-}" = 1 ] || [ "${CI:-}" = true ]; then
    SLURM_WITH_MPI=$want_mpi bash "$ROOT/ci/slurm/install.sh" || { echo "FAIL: could not install Slurm"; exit 1; }
  else
    echo "SKIP: Slurm is not installed (bash ci/slurm/install.sh, or CKPT_SLURM_INSTALL=1)"
    exit 0
  fi
fi
if [ "$(id -u)" != 0 ] && ! sudo -n true 2>/dev/null; then
  echo "SKIP: the cluster scripts need root (or password-less sudo)"
  exit 0
fi
started=0
if ! scontrol ping 2>/dev/null | grep -q 'is UP'; then
  SLURM_CPUS=${SLURM_CPUS:-32} bash "$ROOT/ci/slurm/configure.sh" || exit 1
  bash "$ROOT/ci/slurm/start.sh" || { echo "FAIL: could not start Slurm"; bash "$ROOT/ci/slurm/stop.sh"; exit 1; }
  started=1
else
  say "using the running Slurm cluster"
fi

W=${CKPT_SLURM_WORK:-$(mktemp -d /tmp/ckpt-slurm.XXXXXX)}
mkdir -p "$W" && chmod 755 "$W"
JOBS_FILE=$W/jobids          # every job we submitted, cancelled on exit
: > "$JOBS_FILE"
cleanup() {
  local ids
  ids=$(sort -u "$JOBS_FILE" 2>/dev/null | tr '\n' ' ')
  [ -n "${ids// /}" ] && scancel $ids 2>/dev/null
  # kill the scenario subshells still running (interrupted run), by their PIDs
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null; done
  if [ "$started" = 1 ] && [ "${CKPT_SLURM_KEEP:-}" != 1 ]; then bash "$ROOT/ci/slurm/stop.sh" >/dev/null; fi
}
PIDS=()
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------------------------------------------ build
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
say "building ckpt, libckpt and the shim (cargo build --release -p ckpt-cli -p ckpt-ffi -p ckpt-preload)"
(cd "$ROOT" && cargo build --release --quiet -p ckpt-cli -p ckpt-ffi -p ckpt-preload) || { echo "FAIL: cargo build"; exit 1; }
CKPT_BIN=$TARGET/release/ckpt
mkdir -p "$W/bin"
cc -O2 -Wall -Wextra -I"$ROOT/include" "$HERE/slurm_app.c" -o "$W/bin/slurm_app" \
  -L"$TARGET/release" -lckpt -Wl,-rpath,"$TARGET/release" || { echo "FAIL: compile slurm_app.c"; exit 1; }
APP=$W/bin/slurm_app
# Open MPI's mpirun refuses to run as root without these (the jobs inherit them from sbatch)
[ "$(id -u)" = 0 ] && export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# The node declares more CPUs than the machine has: without this, Open MPI's ranks spin at full speed while
# they wait for a descheduled neighbour (20 iterations/s instead of thousands)
export OMPI_MCA_mpi_yield_when_idle=1
# the result of an uninterrupted run, outside Slurm
REF_STEPS=1200
REF=$(cd "$W/bin" && env -u SLURM_JOB_ID CKPT_DIR="$W/bin" CKPT_LOG=off CKPT_SOCKET=0 "$APP" $REF_STEPS 0 | sed -n 's/^DONE .*checksum=\([0-9a-f]*\).*/\1/p')
[ -n "$REF" ] || { echo "FAIL: reference run of slurm_app"; exit 1; }
say "uninterrupted slurm_app $REF_STEPS: checksum $REF"

# ------------------------------------------------------------------------------------------------ helpers
# job_state J: the job's state (PENDING, RUNNING, TIMEOUT, COMPLETED...), "" if unknown
job_state() { scontrol show job -o "$1" 2>/dev/null | grep -o 'JobState=[A-Z_]*' | cut -d= -f2; }
job_field() { scontrol show job -o "$1" 2>/dev/null | grep -o " $2=[^ ]*" | cut -d= -f2; }
# wait_state J STATE TIMEOUT_S [STATES THAT ARE A FAILURE]: 0 when reached
wait_state() {
  local j=$1 want=$2 limit=$3 bad=${4:-FAILED CANCELLED NODE_FAIL OUT_OF_MEMORY} t0 s
  t0=$(date +%s)
  while :; do
    s=$(job_state "$j")
    [ "$s" = "$want" ] && return 0
    for b in $bad; do [ "$s" = "$b" ] && { echo "job $j is $s (waiting for $want)"; return 1; }; done
    [ $(( $(date +%s) - t0 )) -ge "$limit" ] && { echo "job $j still $s after ${limit} s (waiting for $want)"; return 1; }
    sleep 1
  done
}
# wait_line FILE REGEX TIMEOUT_S
wait_line() {
  local t0; t0=$(date +%s)
  until grep -Eq "$2" "$1" 2>/dev/null; do
    [ $(( $(date +%s) - t0 )) -ge "$3" ] && { echo "no line /$2/ in $1 after $3 s"; return 1; }
    sleep 0.5
  done
}
submit() {   # submit ARGS...: prints the job id, records it for cleanup
  local j
  j=$(sbatch --parsable "$@") || return 1
  j=${j%%;*}
  echo "$j" >> "$JOBS_FILE"
  echo "$j"
}
# Scenario bodies run in subshells; each writes $d/verdict (PASS or FAIL: why) and $d/evidence.
fail() { echo "FAIL: $*" > "$d/verdict"; exit 1; }
pass() { echo "PASS: $*" > "$d/verdict"; exit 0; }
ev() { printf '%s\n' "$*" >> "$d/evidence"; }
# log_ckpts LOG: one evidence line per checkpoint in a JSON-lines CKPT_LOG (step, trigger, exit, job)
log_ckpts() {
  local line
  grep '"event":"checkpoint"' "$1" 2>/dev/null | while IFS= read -r line; do
    ev "log: checkpoint $(echo "$line" | grep -o '"step":[0-9-]*') $(echo "$line" | grep -o '"trigger":\[[^]]*\]') $(echo "$line" | grep -o '"exit":[a-z]*') $(echo "$line" | grep -o '"path":"[^"]*"')"
  done
}

# ------------------------------------------------------------------------------------------- scenarios
# 1. --signal=B:USR1@10 + exec: checkpoint on USR1, last checkpoint on SIGTERM at the time limit (TIMEOUT),
#    scontrol requeue, restart with SLURM_RESTART_COUNT=1 from that checkpoint, checksum of a full run.
scenario_c_signal() {
  d=$W/c-signal; mkdir -p "$d/ckpt"; local out=$d/job.out j t0 t1 t2
  t0=$(date +%s)
  # CKPT_SQUEUE=true: no end time known, so only the signals trigger (the default 60 s margin would
  # otherwise stop a --time=1 job at once; scenario 2 tests that trigger).
  j=$(APP=$APP STEPS=$REF_STEPS CKPT_DIR=$d/ckpt CKPT_LOG=$d/ckpt.log CKPT_SQUEUE=true \
      submit -o "$out" "$HERE/c_signal.sbatch") || fail "sbatch"
  ev "job $j submitted"
  wait_state "$j" TIMEOUT 200 "FAILED CANCELLED COMPLETED NODE_FAIL" >> "$d/evidence" || fail "first run did not end in TIMEOUT"
  t1=$(date +%s)
  ev "state TIMEOUT $((t1 - t0)) s after sbatch; scontrol requeue $j"
  scontrol requeue "$j" >> "$d/evidence" 2>&1 || fail "scontrol requeue"
  wait_state "$j" COMPLETED 120 >> "$d/evidence" || fail "the requeued run did not complete"
  t2=$(date +%s)
  ev "state COMPLETED $((t2 - t1)) s after the requeue ($((t2 - t0)) s in all), Restarts=$(job_field "$j" Restarts)"
  log_ckpts "$d/ckpt.log"
  local usr1 last resumed fin
  usr1=$(grep -m1 '^CHECKPOINT .* exit=0' "$out")
  last=$(grep -m1 '^CHECKPOINT .* exit=1' "$out")
  resumed=$(sed -n 's/^RESUMED step=\([0-9]*\)$/\1/p' "$out" | head -1)
  fin=$(sed -n 's/^DONE .*checksum=\([0-9a-f]*\).*/\1/p' "$out")
  [ -n "$usr1" ] || fail "no checkpoint-and-continue (USR1) in the first run"
  grep -q '"trigger":\["signal"\]' "$d/ckpt.log" || fail "the log has no checkpoint triggered by a signal (USR1)"
  [ -n "$last" ] || fail "no last checkpoint (SIGTERM) in the first run"
  grep -q '"trigger":\[[^]]*"sigterm"' "$d/ckpt.log" || fail "the log has no checkpoint triggered by SIGTERM"
  grep -q 'DUE TO TIME LIMIT' "$out" || fail "the first run was not ended by the time limit"
  grep -q '^STOPPED ' "$out" || fail "the program did not stop cleanly after its last checkpoint"
  grep -q '^START .*restart_count=1 ' "$out" || fail "no restart with SLURM_RESTART_COUNT=1"
  [ "$resumed" = "$(echo "$last" | sed 's/.*step=\([0-9]*\).*/\1/')" ] || fail "resumed at step '$resumed', not at the last checkpoint ($last)"
  [ "$fin" = "$REF" ] || fail "checksum '$fin' differs from the uninterrupted run's $REF"
  pass "USR1 -> checkpoint, SIGTERM at the time limit -> last checkpoint, requeue -> resumed at step $resumed, checksum $fin = uninterrupted"
}

# 2. No --signal: libckpt learns the end time from squeue, checkpoints and stops CKPT_MARGIN before it;
#    the script requeues; the restart finishes with the uninterrupted checksum. Slurm never sends SIGTERM.
scenario_c_deadline() {
  d=$W/c-deadline; mkdir -p "$d/ckpt"; local out=$d/job.out j t0 t1
  t0=$(date +%s)
  j=$(APP=$APP STEPS=$REF_STEPS CKPT_DIR=$d/ckpt CKPT_LOG=$d/ckpt.log CKPT_MARGIN=40 \
      submit -o "$out" "$HERE/c_deadline.sbatch") || fail "sbatch"
  ev "job $j submitted (CKPT_MARGIN=40, --time=1, no --signal)"
  wait_line "$out" '^START .*restart_count=1 ' 150 >> "$d/evidence" || fail "no restart"
  wait_state "$j" COMPLETED 90 >> "$d/evidence" || fail "the requeued run did not complete"
  t1=$(date +%s)
  ev "state COMPLETED $((t1 - t0)) s after sbatch, Restarts=$(job_field "$j" Restarts)"
  log_ckpts "$d/ckpt.log"
  local trig last t resumed fin
  trig=$(grep -m1 '"reason":"time-limit"' "$d/ckpt.log")
  last=$(grep -m1 '^CHECKPOINT .* exit=1' "$out")
  resumed=$(sed -n 's/^RESUMED step=\([0-9]*\)$/\1/p' "$out" | head -1)
  fin=$(sed -n 's/^DONE .*checksum=\([0-9a-f]*\).*/\1/p' "$out")
  [ -n "$trig" ] || fail "the log has no time-limit trigger"
  ev "log: $trig"
  echo "$trig" | grep -q '"end_time_source":"squeue"' || fail "the end time did not come from squeue"
  grep -q '"trigger":\["time-limit"\]' "$d/ckpt.log" || fail "the log has no checkpoint triggered by the time limit"
  [ -n "$last" ] || fail "no last checkpoint in the first run"
  t=$(echo "$last" | sed 's/.*t=+\([0-9]*\).*/\1/')
  [ "$t" -lt 55 ] || fail "the last checkpoint came only at +$t s (end at +60 s)"
  grep -q 'DUE TO TIME LIMIT' "$out" && fail "Slurm's time limit was reached"
  grep -q '"trigger":\[[^]]*"sigterm"' "$d/ckpt.log" && fail "a checkpoint was triggered by SIGTERM"
  [ "$resumed" = "$(echo "$last" | sed 's/.*step=\([0-9]*\).*/\1/')" ] || fail "resumed at step '$resumed', not at the last checkpoint ($last)"
  [ "$fin" = "$REF" ] || fail "checksum '$fin' differs from the uninterrupted run's $REF"
  pass "squeue end time -> last checkpoint at +$t s (before the limit), requeue -> resumed at step $resumed, checksum $fin = uninterrupted"
}

# 3. The Python example job, examples/python/checkpointed_program.sh itself, with --time=1 --signal=B:USR1@10:
#    its `ckpt job` gets USR1 and sends SIGTERM to Python (checkpoint, clean stop), then requeues (the progress
#    check of `ckpt requeue --max-restarts 10`); the requeued run resumes and ends with the uninterrupted result.
scenario_python() {
  d=$W/python; mkdir -p "$d"; local out=$d/job.out j t0 t1 venv ref fin py_steps=600
  venv=${CKPT_SLURM_VENV:-$d/venv}
  if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import ckpt' 2>/dev/null; then
    command -v python3 >/dev/null || { echo "SKIP: no python3" > "$d/verdict"; exit 0; }
    python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
      || { echo "SKIP: python3 is older than 3.11" > "$d/verdict"; exit 0; }
    { python3 -m venv "$venv" && "$venv/bin/python" -m pip install --quiet "$ROOT/ckpt-py"; } > "$d/pip.log" 2>&1 \
      || { cat "$d/pip.log" >> "$d/evidence"; fail "pip install ./ckpt-py into a venv"; }
  fi
  ln -sf "$ROOT/examples/python/checkpointed_program.py" "$d/checkpointed_program.py"
  ref=$(cd "$d" && mkdir -p ref && env -u SLURM_JOB_ID CKPT_DIR="$d/ref" CKPT_LOG=off CKPT_SOCKET=0 \
        "$venv/bin/python" checkpointed_program.py --steps $py_steps | grep '^Done:')
  [ -n "$ref" ] || fail "uninterrupted reference run"
  ev "uninterrupted: $ref"
  t0=$(date +%s)
  # the script as users copy it; the command line overrides its 2 h limit, its 300 s warning, its output
  # file and its 4 GB; PATH makes its python3 the venv's. CKPT_SQUEUE=true: signals only (see scenario 1).
  j=$(cd "$d" && PATH=$venv/bin:$PATH CKPT=$CKPT_BIN CKPT_DIR=$d/ckpt CKPT_LOG=$d/ckpt.log CKPT_SQUEUE=true \
      submit --time=1 --signal=B:USR1@10 --mem=500M -o "$out" \
      "$ROOT/examples/python/checkpointed_program.sh" --steps $py_steps --step-seconds 0.1) || fail "sbatch"
  ev "job $j submitted: examples/python/checkpointed_program.sh --steps $py_steps --step-seconds 0.1"
  wait_line "$out" '^Done:' 300 >> "$d/evidence" || fail "the job never finished"
  wait_state "$j" COMPLETED 30 >> "$d/evidence" || fail "the job did not end COMPLETED"
  t1=$(date +%s)
  ev "state COMPLETED $((t1 - t0)) s after sbatch, Restarts=$(job_field "$j" Restarts)"
  log_ckpts "$d/ckpt.log"
  fin=$(grep '^Done:' "$out")
  grep -q '^ckpt job: USR1: the time limit is near' "$out" || fail "the batch shell (ckpt job) got no USR1"
  grep -q '^Checkpoint saved' "$out" || fail "no checkpoint"
  grep -q '"trigger":\[[^]]*"sigterm"' "$d/ckpt.log" || fail "no checkpoint on the SIGTERM ckpt job sends on USR1"
  grep -q "^ckpt requeue: requeued job $j (restart 1 of 10; checkpoint step [0-9]*)\$" "$out" \
    || fail "the script's ckpt requeue did not requeue the job"
  grep -q '(restart 1)' "$out" || fail "no restart with SLURM_RESTART_COUNT=1"
  grep -q '^Resuming from checkpoint' "$out" || fail "the restart did not resume from a checkpoint"
  [ "$fin" = "$ref" ] || fail "result '$fin' differs from the uninterrupted '$ref'"
  pass "USR1 -> SIGTERM to Python -> checkpoint, ckpt requeue, restart resumed; $fin"
}

# 5. An unmodified program (the distribution's python3 running a slow hash) under the LD_PRELOAD shim, with
#    examples/shim/unmodified_program.sbatch as users copy it, --time=1 and no --signal: the shim learns the
#    end time from squeue, checkpoints and stops the program before the limit, `ckpt job --transparent`
#    requeues (the progress check of `ckpt requeue`), the requeued job resumes the program with `ckpt restart`, and the program's output
#    file ends byte-identical to an uninterrupted run.
scenario_shim() {
  d=$W/shim; mkdir -p "$d"; local out=$d/job.out prog=$d/program.out j t0 t1 py=/usr/bin/python3
  [ -x "$py" ] || py=$(command -v python3) || { echo "SKIP: no python3" > "$d/verdict"; exit 0; }
  "$py" "$HERE/slow_hash.py" --fast > "$d/reference.out" || fail "reference run"
  t0=$(date +%s)
  j=$(cd "$d" && CKPT=$CKPT_BIN CKPT_DIR=$d/ckpt CKPT_LOG=$d/ckpt.log CKPT_MARGIN=5 OUT=$prog \
      submit --time=1 -o "$out" "$ROOT/examples/shim/unmodified_program.sbatch" "$py" "$HERE/slow_hash.py") \
      || fail "sbatch"
  ev "job $j submitted: examples/shim/unmodified_program.sbatch $py slow_hash.py (--time=1, no --signal)"
  wait_line "$out" '^ckpt job: finished' 300 >> "$d/evidence" || fail "the job never finished"
  wait_state "$j" COMPLETED 30 >> "$d/evidence" || fail "the job did not end COMPLETED"
  t1=$(date +%s)
  ev "state COMPLETED $((t1 - t0)) s after sbatch, Restarts=$(job_field "$j" Restarts)"
  grep '"event":"checkpoint\|"event":"restored' "$d/ckpt.log" | sed 's/^/  log: /' >> "$d/evidence"
  grep -q '^ckpt job: the program was ended by signal TERM after a checkpoint' "$out" \
    || fail "the first run did not stop by the shim's checkpoint"
  grep -q "^ckpt requeue: requeued job $j (restart 1 of 5" "$out" || fail "the script did not requeue the job"
  grep -q '^ckpt job: resuming from the newest image' "$out" || fail "the requeued job did not resume from the image"
  grep -q 'DUE TO TIME LIMIT' "$out" && fail "Slurm's time limit was reached"
  grep -q '"exit":true' "$d/ckpt.log" || fail "no checkpoint-and-exit in the log"
  grep -q '"event":"restored"' "$d/ckpt.log" || fail "no restore in the log"
  cmp -s "$prog" "$d/reference.out" || fail "the program's output differs from the uninterrupted run ($(cmp "$prog" "$d/reference.out" 2>&1))"
  pass "time limit -> image -> ckpt requeue -> ckpt restart; output byte-identical ($(wc -l < "$prog") lines)"
}

# 6. ckpt create <jobid> --image-dir DIR --max-wait 30: against a running job a checkpoint appears in DIR
#    and is printed; against a job that never reaches a safe point the command fails after MaxWait.
scenario_create() {
  d=$W/create; mkdir -p "$d/ckpt"; local ja jb out_a=$d/job_a.out out_b=$d/job_b.out sock_dir path rc t0 el
  sock_dir=${TMPDIR:-/tmp}/ckpt-$(id -u)
  ja=$(CKPT_DIR=$d/ckpt CKPT_LOG=$d/a.log CKPT_SQUEUE=true submit --time=5 -J ckpt-create-a -o "$out_a" \
       --wrap "exec $APP 100000 100000") || fail "sbatch a"
  jb=$(CKPT_DIR=$d/ckpt CKPT_LOG=$d/b.log CKPT_SQUEUE=true submit --time=5 -J ckpt-create-b -o "$out_b" \
       --wrap "exec $APP 100000 100000 --no-poll") || fail "sbatch b"
  ev "job $ja (polls every 0.1 s) and job $jb (never reaches a safe point) submitted"
  wait_line "$out_a" '^START' 60 >> "$d/evidence" || fail "job $ja did not start"
  wait_line "$out_b" '^START' 60 >> "$d/evidence" || fail "job $jb did not start"
  for _ in $(seq 1 50); do ls "$sock_dir" 2>/dev/null | grep -q "\.$ja\." && ls "$sock_dir" | grep -q "\.$jb\." && break; sleep 0.2; done
  sleep 2   # let the program run a few steps
  t0=$(date +%s)
  "$CKPT_BIN" create "$ja" --image-dir "$d/img" --max-wait 30 > "$d/create_a.out" 2> "$d/create_a.err"; rc=$?
  el=$(( $(date +%s) - t0 ))
  path=$(head -1 "$d/create_a.out")
  ev "\$ ckpt create $ja --image-dir $d/img --max-wait 30   -> exit $rc after ${el} s, printed: $(cat "$d/create_a.out" "$d/create_a.err")"
  [ "$rc" = 0 ] || fail "ckpt create $ja exited $rc"
  case "$path" in "$d/img/"*) ;; *) fail "printed path '$path' is not in the image directory" ;; esac
  [ -f "$path" ] || fail "printed checkpoint $path does not exist"
  "$CKPT_BIN" verify "$path" >> "$d/evidence" 2>&1 || fail "ckpt verify $path"
  grep -q '"trigger":\["request"\]' "$d/a.log" || fail "the job's log has no checkpoint triggered by the request"
  t0=$(date +%s)
  "$CKPT_BIN" create "$jb" --image-dir "$d/img_b" --max-wait 30 > "$d/create_b.out" 2> "$d/create_b.err"; rc=$?
  el=$(( $(date +%s) - t0 ))
  ev "\$ ckpt create $jb --image-dir $d/img_b --max-wait 30   -> exit $rc after ${el} s, printed: $(cat "$d/create_b.out" "$d/create_b.err")"
  [ "$rc" != 0 ] || fail "ckpt create $jb succeeded against a program that never checkpoints"
  [ "$el" -ge 30 ] && [ "$el" -le 45 ] || fail "ckpt create $jb gave up after $el s, not after MaxWait=30"
  [ -z "$(ls "$d/img_b" 2>/dev/null | grep '\.ckpt$')" ] || fail "a checkpoint appeared in $d/img_b"
  scancel "$ja" "$jb"
  # job b never reaches a safe point, so SIGKILL ends it and its socket file stays: remove the dead ones
  # (ckpt create skips sockets of dead processes anyway; job ids start again at 2 on a fresh cluster)
  wait_state "$ja" CANCELLED 30 "" >/dev/null; wait_state "$jb" CANCELLED 30 "" >/dev/null; sleep 6
  for f in "$sock_dir"/*."$ja".*.sock "$sock_dir"/*."$jb".*.sock; do
    [ -S "$f" ] || continue
    p=$(basename "$f"); p=${p%%.*}
    kill -0 "$p" 2>/dev/null || rm -f "$f"
  done
  pass "checkpoint $(basename "$path") written to the image dir on request and verified; no safe point -> exit $rc after ${el} s"
}

# 4. The MPI examples as users submit them: examples/c/heat_mpi.sbatch and examples/fortran/heat_mpi.sbatch,
#    4 ranks, --time=1. srun --mpi=pmix with --signal=USR1@10 (no B:, every rank gets USR1), or mpirun in the
#    batch script with --signal=B:USR1@10 (the script's `ckpt job` forwards USR1 to mpirun). USR1: one collective
#    checkpoint, every rank at the same iteration; SIGTERM at the time limit: a last collective checkpoint,
#    every rank stops at that iteration; `ckpt job --requeue --max-restarts 2` requeues; the restart agrees
#    on that iteration on every rank and ends with the field of an uninterrupted run, bit for bit (crc32).
MPI_N=256 MPI_ITERS=2400 MPI_DELAY_US=50000   # 2400 x 50 ms = 120 s of work: longer than the time limit
scenario_mpi() {   # scenario_mpi c|fortran srun|mpirun
  local lang=$1 launcher=$2 out j t0 t1 ref fin script sig cc_ok
  d=$W/mpi-${lang:0:1}-$launcher; mkdir -p "$d/ckpt"; out=$d/job.out
  script=$ROOT/examples/$lang/heat_mpi.sbatch
  if [ "$lang" = c ]; then cc_ok=$(command -v mpicc); else cc_ok=$(command -v mpif90); fi
  if [ -z "$cc_ok" ] || ! command -v mpirun >/dev/null; then
    [ "${CI:-}" = true ] && fail "MPI (mpicc/mpif90/mpirun) is not installed"
    echo "SKIP: no MPI compiler (SLURM_WITH_MPI=1 bash ci/slurm/install.sh)" > "$d/verdict"; exit 0
  fi
  make -s -C "$ROOT/examples/$lang" OUT="$d/bin" > "$d/make.log" 2>&1 \
    || { sed 's/^/make: /' "$d/make.log" >> "$d/evidence"; fail "make -C examples/$lang against target/release"; }
  # The program the script runs: the example itself; the first run sleeps 50 ms per iteration (so that the
  # time limit interrupts it), the requeued runs only have to finish.
  printf '#!/bin/sh\n[ -n "${SLURM_RESTART_COUNT:-}" ] && exec %s "$1" "$2" 0\nexec %s "$@"\n' \
    "$d/bin/heat_mpi" "$d/bin/heat_mpi" > "$d/heat_mpi"
  chmod +x "$d/heat_mpi"
  ref=$(mkdir -p "$d/ref" && env -u SLURM_JOB_ID CKPT_DIR="$d/ref" CKPT_LOG=off CKPT_SOCKET=0 \
        mpirun --oversubscribe -np 4 "$d/bin/heat_mpi" $MPI_N $MPI_ITERS 0 2>> "$d/ref.err" | grep '^done:')
  [ -n "$ref" ] || { cat "$d/ref.err" >> "$d/evidence"; fail "uninterrupted reference run (mpirun -np 4)"; }
  ev "uninterrupted (mpirun -np 4, outside Slurm): $ref"
  if [ "$launcher" = mpirun ]; then sig=B:USR1@10; else sig=USR1@10; fi
  t0=$(date +%s)
  # CKPT_SQUEUE=true: signals only (see scenario 1)
  j=$(cd "$d" && MPI_LAUNCHER=$launcher CKPT=$CKPT_BIN HEAT_MPI=$d/heat_mpi MAX_RESTARTS=2 CKPT_DIR=$d/ckpt \
      CKPT_LOG=$d/ckpt.log CKPT_SQUEUE=true submit --time=1 --signal=$sig -o "$out" "$script" \
      $MPI_N $MPI_ITERS $MPI_DELAY_US) || fail "sbatch"
  ev "job $j submitted: MPI_LAUNCHER=$launcher sbatch --time=1 --signal=$sig examples/$lang/heat_mpi.sbatch $MPI_N $MPI_ITERS $MPI_DELAY_US"
  # (srun-each: tasks 1-3 of the first run stop without requeueing: only the last run's lines end it)
  local ended='^ckpt job: (finished|failed|stopped after a checkpoint, not requeued)'
  [ "$launcher" = srun-each ] && ended='^ckpt job: (finished|failed)'
  wait_line "$out" "$ended" 240 >> "$d/evidence" || fail "the job never finished"
  wait_state "$j" COMPLETED 30 >> "$d/evidence" || fail "the job did not end COMPLETED"
  t1=$(date +%s)
  ev "state COMPLETED $((t1 - t0)) s after sbatch, Restarts=$(job_field "$j" Restarts)"
  # every checkpoint and restore of the log, grouped by event and step: which ranks, which triggers
  python3 - "$d/ckpt.log" > "$d/ranks" <<'PY' || fail "cannot read the ckpt log"
import json, sys
seen = {}
for line in open(sys.argv[1]):
    e = json.loads(line)
    if e.get("event") in ("checkpoint", "restore") and e.get("step") is not None:
        k = (e["event"], e["step"])
        r = seen.setdefault(k, {"ranks": [], "triggers": set(), "exit": set()})
        r["ranks"].append(e["rank"])
        r["triggers"].update(e.get("trigger") or [])
        r["exit"].add(e.get("exit"))
for (ev, step), r in sorted(seen.items(), key=lambda x: (x[0][1], x[0][0])):
    print(ev, step, "ranks=" + ",".join(map(str, sorted(r["ranks"]))), "triggers=" + ",".join(sorted(r["triggers"])),
          "exit=" + ",".join(sorted(str(x) for x in r["exit"])))
PY
  sed 's/^/log: /' "$d/ranks" >> "$d/evidence"
  local usr1 term resumed stop_line rq
  usr1=$(grep -m1 '^checkpoint .*triggers=[a-z,-]*signal' "$d/ranks")
  term=$(grep -m1 '^checkpoint .*triggers=[a-z,-]*sigterm' "$d/ranks")
  [ -n "$usr1" ] || fail "no checkpoint triggered by USR1 in the log"
  echo "$usr1" | grep -q 'ranks=0,1,2,3 ' || fail "not all 4 ranks took the USR1 checkpoint at the same step: $usr1"
  [ -n "$term" ] || fail "no checkpoint triggered by SIGTERM in the log"
  echo "$term" | grep -q 'ranks=0,1,2,3 ' || fail "not all 4 ranks took the last checkpoint at the same step: $term"
  local s_term; s_term=$(echo "$term" | cut -d' ' -f2)
  if [ "$launcher" = srun ]; then   # no B:: the ranks got USR1 from Slurm, not through the batch shell
    grep -q 'ckpt job: USR1' "$out" && fail "the batch shell got USR1 (--signal without B:)"
  elif [ "$launcher" = srun-each ]; then  # every rank's own ckpt job got it too (and asked its rank)
    [ "$(grep -c '^ckpt job: USR1: checkpoint requested' "$out")" -ge 4 ] || fail "not every rank's ckpt job got USR1"
    [ "$(grep -c 'of this srun step: task 0 requeues the job' "$out")" = 3 ] || fail "tasks 1-3 did not leave the requeue to task 0"
  else                              # B:: ckpt job (the batch shell) forwarded USR1 to mpirun, which passed it on
    grep -q '^ckpt job: USR1: checkpoint requested' "$out" || fail "the batch shell (ckpt job) did not forward USR1"
    grep -q '^mpirun: Forwarding signal 10 to job$' "$out" || fail "mpirun did not forward USR1 to the ranks"
  fi
  grep -q 'DUE TO TIME LIMIT' "$out" || fail "the first run was not ended by the time limit"
  stop_line=$(grep -m1 '^stopping after the checkpoint' "$out")
  # (mpirun stops forwarding the ranks' output once it has SIGTERM: there the log is the evidence)
  if [ "$launcher" != mpirun ] || [ -n "$stop_line" ]; then
    [ "$stop_line" = "stopping after the checkpoint at iteration $s_term; the ranks stopped at $s_term $s_term $s_term $s_term" ] \
      || fail "the ranks did not all stop at iteration $s_term: '$stop_line'"
  fi
  [ "$(grep '"event":"step-committed"' "$d/ckpt.log" | grep -c "\"step\":$s_term,")" = 4 ] \
    || fail "the 4 ranks did not all see step $s_term committed"
  rq=$(grep -m1 '^ckpt requeue: ' "$out")
  [ "$rq" = "ckpt requeue: requeued job $j (restart 1 of 2; checkpoint step $s_term)" ] \
    || fail "the script's ckpt requeue said '$rq'"
  # the restart: 4 ranks with SLURM_RESTART_COUNT=1; rank 0 resumed at that iteration (ckpt_mpi_restart makes
  # every rank restart from the same step: otherwise the halo exchanges would mix iterations and the final
  # field could not be the uninterrupted one)
  resumed=$(grep '"event":"start"' "$d/ckpt.log" | grep '"restart_count":1,' | grep -o '"rank":[0-9]*' | sort | tr '\n' ' ')
  [ "$resumed" = '"rank":0 "rank":1 "rank":2 "rank":3 ' ] || fail "the restart did not start 4 ranks with SLURM_RESTART_COUNT=1: $resumed"
  grep -q "^resumed at iteration $s_term\$" "$out" || fail "rank 0 did not resume at iteration $s_term"
  fin=$(grep '^done:' "$out")
  [ "$fin" = "$ref" ] || fail "result '$fin' differs from the uninterrupted '$ref'"
  [ "$(job_field "$j" Restarts)" = 1 ] || fail "Restarts=$(job_field "$j" Restarts), not 1"
  pass "USR1 -> ${usr1%% triggers*} on ranks 0-3; time limit -> last checkpoint at $s_term on ranks 0-3, all stopped there; ckpt requeue; the 4 ranks resumed at $s_term; $fin = uninterrupted"
}
scenario_mpi_c_srun() { scenario_mpi c srun; }
scenario_mpi_f_srun() { scenario_mpi fortran srun; }
scenario_mpi_c_mpirun() { scenario_mpi c mpirun; }
scenario_mpi_c_srun_each() { scenario_mpi c srun-each; }

# 7. `ckpt requeue --max-restarts N` in a batch script (requeue.sbatch): the program is stopped with SIGTERM
#    (last checkpoint, exit 3) or killed (no checkpoint) a few seconds into each run, and the script asks
#    ckpt requeue. (a) requeue-finish: requeued once, the restart finishes with the uninterrupted checksum;
#    (b) requeue-max: every run makes progress, and the loop stops at N=2 restarts; (c) requeue-noprogress:
#    the restart is killed before its first checkpoint, so it is not requeued although N=5 would allow it.
RQ_STEPS=80
scenario_requeue() {   # scenario_requeue NAME MAX_RESTARTS "RUNS" FINAL_STATE [STEPS]
  local name=$1 max=$2 runs=$3 steps=${5:-$RQ_STEPS} out j t0 t1
  d=$W/requeue-$name; mkdir -p "$d/ckpt"; out=$d/job.out
  t0=$(date +%s)
  j=$(APP=$APP STEPS=$steps USEC=100000 CKPT=$CKPT_BIN MAX_RESTARTS=$max RUNS="$runs" STOP_AFTER=3 \
      CKPT_DIR=$d/ckpt CKPT_LOG=$d/ckpt.log CKPT_SQUEUE=true submit -o "$out" "$HERE/requeue.sbatch") || fail "sbatch"
  ev "job $j submitted: MAX_RESTARTS=$max, runs: $runs"
  wait_line "$out" '^=== .*(program exit 0|ckpt requeue exit [^0])' 150 >> "$d/evidence" || fail "the job never ended"
  wait_state "$j" "$4" 30 "" >> "$d/evidence" || fail "the job did not end $4"
  t1=$(date +%s)
  n_runs=$(grep -c '^START ' "$out")
  ev "state $4 $((t1 - t0)) s after sbatch, Restarts=$(job_field "$j" Restarts), $n_runs runs"
  log_ckpts "$d/ckpt.log"
}
rq_check_resumes() {   # every restart resumed at the step of the checkpoint the run before it wrote last
  local out=$1 prev=""
  while IFS= read -r line; do
    case $line in
      START*) ;;
      CHECKPOINT*) prev=$(echo "$line" | sed 's/.*step=\([0-9]*\).*/\1/') ;;
      RESUMED*) [ "${line#RESUMED step=}" = "$prev" ] || { echo "resumed at '${line#RESUMED step=}', the last checkpoint was at step '$prev'"; return 1; } ;;
    esac
  done < <(grep -E '^(START|CHECKPOINT|RESUMED)' "$out")
}
scenario_requeue_finish() {
  local n ref fin out
  ref=$(cd "$W/bin" && env -u SLURM_JOB_ID CKPT_DIR="$(mktemp -d "$W/rqref.XXXX")" CKPT_LOG=off CKPT_SOCKET=0 "$APP" $RQ_STEPS 0 \
        | sed -n 's/^DONE .*checksum=\([0-9a-f]*\).*/\1/p')
  scenario_requeue finish 3 "term done" COMPLETED; n=$n_runs
  out=$d/job.out
  [ "$n" = 2 ] || fail "$n runs, not 2"
  grep -q '^ckpt requeue: requeued job [0-9]* (restart 1 of 3; checkpoint step [0-9]*)$' "$out" || fail "no 'ckpt requeue: requeued job' line"
  rq_check_resumes "$out" >> "$d/evidence" || fail "a restart did not resume from the last checkpoint"
  fin=$(sed -n 's/^DONE .*checksum=\([0-9a-f]*\).*/\1/p' "$out")
  [ -n "$ref" ] && [ "$fin" = "$ref" ] || fail "checksum '$fin' differs from the uninterrupted run's '$ref'"
  pass "SIGTERM -> checkpoint, ckpt requeue -> restart 1 resumed and finished: checksum $fin = uninterrupted"
}
scenario_requeue_max() {
  local n out
  scenario_requeue max 2 "term term term term" FAILED 1000; n=$n_runs
  out=$d/job.out
  [ "$n" = 3 ] || fail "$n runs, not 3 (the first and 2 restarts)"
  [ "$(grep -c '^ckpt requeue: requeued job' "$out")" = 2 ] || fail "not exactly 2 requeues"
  grep -q '^ckpt requeue: requeued job [0-9]* (restart 2 of 2; ' "$out" || fail "no 'restart 2 of 2' requeue"
  grep -q '^ckpt requeue: not requeuing job [0-9]*: it was restarted 2 time(s), the limit is 2$' "$out" \
    || fail "no refusal at the limit"
  [ "$(grep -c '^CHECKPOINT ' "$out")" = 3 ] || fail "not 3 checkpoints (one per run)"
  rq_check_resumes "$out" >> "$d/evidence" || fail "a restart did not resume from the last checkpoint"
  grep -q '^DONE' "$out" && fail "the program finished: the test is too short"
  pass "3 runs, each with progress; requeued 2 times, then 'restarted 2 time(s), the limit is 2'; job FAILED"
}
scenario_requeue_noprogress() {
  local n out
  scenario_requeue noprogress 5 "term kill term" FAILED; n=$n_runs
  out=$d/job.out
  [ "$n" = 2 ] || fail "$n runs, not 2"
  [ "$(grep -c '^ckpt requeue: requeued job' "$out")" = 1 ] || fail "not exactly 1 requeue"
  grep -q '^RESUMED' "$out" || fail "the restart did not resume"
  grep -q '^=== .* program exit 137$' "$out" || fail "the restart was not killed"
  grep -q '^ckpt requeue: not requeuing job [0-9]*: no progress since the last restart' "$out" \
    || fail "no refusal for lack of progress"
  pass "run 1 checkpointed and was requeued; restart 1 was killed before a checkpoint -> '$(grep -m1 -o 'no progress since the last restart' "$out")', not requeued (limit 5); job FAILED"
}

# ------------------------------------------------------------------------------------------------- run
declare -A PID_OF
for s in $SCENARIOS; do
  fn=scenario_${s//-/_}
  declare -F "$fn" >/dev/null || { echo "unknown scenario $s"; exit 2; }
  mkdir -p "$W/$s"
  ( "$fn" ) > "$W/$s/runner.log" 2>&1 &
  PID_OF[$s]=$!; PIDS+=("$!")
  say "scenario $s started (pid $!)"
done
for s in $SCENARIOS; do wait "${PID_OF[$s]}"; say "scenario $s finished"; done
PIDS=()

failed=0
echo
for s in $SCENARIOS; do
  d=$W/$s
  verdict=$(cat "$d/verdict" 2>/dev/null || echo "FAIL: the scenario ended without a verdict")
  echo "== $s: $verdict"
  case "$verdict" in PASS*|SKIP*) ;; *) failed=$((failed + 1)) ;; esac
  sed 's/^/   | /' "$d/evidence" 2>/dev/null
  for f in "$d"/job*.out; do
    [ -f "$f" ] || continue
    echo "   job output ($(basename "$f")):"
    sed 's/^/   > /' "$f"
  done
  if [ -s "$d/runner.log" ]; then echo "   runner:"; sed 's/^/   ! /' "$d/runner.log"; fi
done
echo
say "slurm integration tests: $failed failed ($(echo $SCENARIOS | wc -w) scenarios) in $(( $(date +%s) - T_START )) s; work dir $W"
if [ "$failed" = 0 ] && [ -z "${CKPT_SLURM_WORK:-}" ]; then rm -rf "$W"; fi
[ "$failed" = 0 ]
