#!/usr/bin/env bash
# The main demo: a job checkpointed by signals and restarted, compared with an uninterrupted run.
#
#   1. run the heat solver uninterrupted (the reference result);
#   2. run it again, send SIGUSR1 (checkpoint and continue), then SIGTERM twice 20 ms apart, as Slurm does
#      to job steps (checkpoint and exit cleanly);
#   3. restart it: it resumes from the newest valid checkpoint and finishes;
#   4. the final field must be bit-for-bit the reference one.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet -p ckpt-examples -p ckpt-cli
HEAT="$PWD/target/release/heat"
CKPT="$PWD/target/release/ckpt"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/ckpt-demo.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
export CKPT_DIR="$WORK/checkpoints" CKPT_LOG="$WORK/ckpt.log"

echo "== 1. uninterrupted reference run"
(cd "$WORK" && CKPT_DIR="$WORK/reference" "$HEAT" | tee "$WORK/reference.txt")

echo "== 2. run, SIGUSR1 after 0.5 s (checkpoint, continue), SIGTERM x2 after 1.0 s (checkpoint, exit)"
"$HEAT" > "$WORK/run.txt" &
pid=$!
sleep 0.5; kill -USR1 "$pid"
sleep 0.5; kill -TERM "$pid"; sleep 0.02; kill -TERM "$pid" 2>/dev/null || true
wait "$pid"; echo "exit status $? (0: it stopped cleanly after its checkpoint)"
cat "$WORK/run.txt"

echo "== checkpoints on disk"
"$CKPT" list "$CKPT_DIR"

echo "== 3. restart"
"$HEAT" | tee "$WORK/restart.txt"

echo "== 4. compare"
ref=$(grep '^done' "$WORK/reference.txt"); got=$(grep '^done' "$WORK/restart.txt")
if [ "$ref" = "$got" ]; then
  echo "OK: the restarted job finished with the same field as the uninterrupted run ($got)"
else
  echo "MISMATCH: reference '$ref' vs restarted '$got'"; exit 1
fi
echo "== the structured log ($CKPT_LOG)"
grep -E '"event":"(checkpoint|restore|trigger)"' "$CKPT_LOG" | cut -c1-200
