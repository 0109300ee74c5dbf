#!/usr/bin/env bash
# Cancel the remaining jobs, then stop slurmd, slurmctld and munged by their PIDs (never by name).
# Idempotent: a daemon that is not running is skipped. Takes about 5 s.
# Jobs go first: slurmstepd processes do not depend on slurmd and would outlive it.
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }
if alive "$(cat /run/slurmctld.bgpid 2>/dev/null)"; then
  jobs=$(squeue -h -o %i 2>/dev/null || true)
  if [ -n "$jobs" ]; then
    # shellcheck disable=SC2086
    scancel $jobs 2>/dev/null || true
    for _ in $(seq 1 150); do [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break; sleep 0.2; done
  fi
fi
stop_pid() {   # name pid
  local name=$1 pid=$2
  alive "$pid" || { echo "slurm stop: $name not running"; return 0; }
  $SUDO kill -TERM "$pid"
  for _ in $(seq 1 100); do alive "$pid" || { echo "slurm stop: $name ($pid) stopped"; return 0; }; sleep 0.1; done
  echo "slurm stop: $name ($pid) still alive after 10 s: SIGKILL"; $SUDO kill -KILL "$pid" 2>/dev/null || true
}
stop_pid slurmd    "$(cat /run/slurmd.bgpid 2>/dev/null)"
stop_pid slurmctld "$(cat /run/slurmctld.bgpid 2>/dev/null)"
stop_pid munged    "$(cat /run/munge/munged.pid 2>/dev/null)"
$SUDO rm -f /run/slurmd.bgpid /run/slurmctld.bgpid
exit 0
