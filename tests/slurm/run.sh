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
# Knobs: CKPT_SLURM_SCENARIOS (default: c-signal c-deadline python create), CKPT_SLURM_WORK (work
# directory, default a new /tmp/ckpt-slurm.XXXXXX, kept on failure), CKPT_SLURM_KEEP=1 (leave the cluster
# running), CKPT_SLURM_VENV (an existing venv with ckpt-hpc installed; default: a fresh one in the work
# directory), SLURM_CPUS (CPUs the node declares when this script configures it; default 8).
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
HERE=$ROOT/tests/slurm
SCENARIOS=${CKPT_SLURM_SCENARIOS:-c-signal c-deadline python create}
T_START=$(date +%s)
say() { printf '[%s +%3ss] %s\n' "$(date +%T)" "$(( $(date +%s) - T_START ))" "$*"; }

# ---------------------------------------------------------------------------------------------- cluster
if ! command -v sbatch >/dev/null || [ ! -x /usr/sbin/slurmctld ] || [ ! -x /usr/sbin/munged ]; then
  if [ "${CKPT_SLURM_INSTALL:-}" = 1 ] || [ "${CI:-}" = true ]; then
    bash "$ROOT/ci/slurm/install.sh" || { echo "FAIL: could not install Slurm"; exit 1; }
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
  SLURM_CPUS=${SLURM_CPUS:-8} bash "$ROOT/ci/slurm/configure.sh" || exit 1
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
say "building ckpt and libckpt (cargo build --release -p ckpt-cli -p ckpt-ffi)"
(cd "$ROOT" && cargo build --release --quiet -p ckpt-cli -p ckpt-ffi) || { echo "FAIL: cargo build"; exit 1; }
CKPT_BIN=$TARGET/release/ckpt
mkdir -p "$W/bin"
cc -O2 -Wall -Wextra -I"$ROOT/include" "$HERE/slurm_app.c" -o "$W/bin/slurm_app" \
  -L"$TARGET/release" -lckpt -Wl,-rpath,"$TARGET/release" || { echo "FAIL: compile slurm_app.c"; exit 1; }
APP=$W/bin/slurm_app
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

# 3. The Python example job, examples/python/checkpointed_program.sh itself (its USR1 trap checkpoints and
#    requeues; SIGTERM -> last checkpoint; the requeued run resumes), with --time=1 --signal=B:USR1@10.
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
  j=$(cd "$d" && PATH=$venv/bin:$PATH CKPT_DIR=$d/ckpt CKPT_LOG=$d/ckpt.log CKPT_SQUEUE=true \
      submit --time=1 --signal=B:USR1@10 --mem=500M -o "$out" \
      "$ROOT/examples/python/checkpointed_program.sh" --steps $py_steps --step-seconds 0.1) || fail "sbatch"
  ev "job $j submitted: examples/python/checkpointed_program.sh --steps $py_steps --step-seconds 0.1"
  wait_line "$out" '^Done:' 300 >> "$d/evidence" || fail "the job never finished"
  wait_state "$j" COMPLETED 30 >> "$d/evidence" || fail "the job did not end COMPLETED"
  t1=$(date +%s)
  ev "state COMPLETED $((t1 - t0)) s after sbatch, Restarts=$(job_field "$j" Restarts)"
  log_ckpts "$d/ckpt.log"
  fin=$(grep '^Done:' "$out")
  grep -q '^USR1: the time limit is near' "$out" || fail "the batch shell got no USR1"
  grep -q '^Checkpoint saved' "$out" || fail "no checkpoint"
  grep -q '"trigger":\[[^]]*"sigterm"' "$d/ckpt.log" || fail "no last checkpoint on SIGTERM after the requeue"
  grep -q '(restart 1)' "$out" || fail "no restart with SLURM_RESTART_COUNT=1"
  grep -q '^Resuming from checkpoint' "$out" || fail "the restart did not resume from a checkpoint"
  [ "$fin" = "$ref" ] || fail "result '$fin' differs from the uninterrupted '$ref'"
  pass "USR1 -> checkpoint + requeue, SIGTERM -> last checkpoint, restart resumed; $fin"
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
