#!/usr/bin/env bash
# Start munged, slurmctld and slurmd in the background (no systemd) and wait until the node is idle.
# Idempotent: when the cluster already answers (scontrol ping, node idle or mixed), does nothing.
# Fresh controller state on every real start (old job records are not restored). Takes about 1 s.
# Daemons' PIDs: /run/munge/munged.pid, /run/slurmctld.bgpid, /run/slurmd.bgpid (stop.sh uses them).
set -euo pipefail
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
[ -e /etc/slurm/slurm.conf ] || { echo "slurm start: no /etc/slurm/slurm.conf (run ci/slurm/configure.sh)" >&2; exit 1; }
alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }
node_state() { sinfo -h -n localhost -o '%t' 2>/dev/null || true; }

ctld_pid=$(cat /run/slurmctld.bgpid 2>/dev/null || true)
slurmd_pid=$(cat /run/slurmd.bgpid 2>/dev/null || true)
if alive "$ctld_pid" && alive "$slurmd_pid" && scontrol ping 2>/dev/null | grep -q 'is UP'; then
  case "$(node_state)" in idle|mix|mixed|alloc|allocated)
    echo "slurm start: already running (slurmctld $ctld_pid, slurmd $slurmd_pid)"; exit 0 ;;
  esac
fi
if alive "$ctld_pid" || alive "$slurmd_pid"; then
  echo "slurm start: a half-running cluster; stopping it first"
  bash "$(dirname "$0")/stop.sh"
fi

t0=$(date +%s%N)
$SUDO sh -c 'rm -rf /var/spool/slurmctld/* /var/spool/slurmd/*'
munged_pid=$(cat /run/munge/munged.pid 2>/dev/null || true)
if ! alive "$munged_pid"; then
  $SUDO install -d -o munge -g munge -m 0755 /run/munge
  $SUDO runuser -u munge -- /usr/sbin/munged      # daemonizes; PID in /run/munge/munged.pid
fi
for _ in $(seq 1 50); do munge -n </dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
munge -n </dev/null | unmunge >/dev/null || { echo "slurm start: munged does not answer" >&2; exit 1; }

# -D (foreground) + & so that $! is the daemon's own PID
$SUDO sh -c '/usr/sbin/slurmctld -D </dev/null >>/var/log/slurm/slurmctld.stdout 2>&1 & echo $! > /run/slurmctld.bgpid'
for _ in $(seq 1 100); do scontrol ping 2>/dev/null | grep -q 'is UP' && break; sleep 0.2; done
scontrol ping 2>/dev/null | grep -q 'is UP' || { echo "slurm start: slurmctld not up" >&2; tail -20 /var/log/slurm/slurmctld.log >&2; exit 1; }
$SUDO sh -c '/usr/sbin/slurmd -D -N localhost </dev/null >>/var/log/slurm/slurmd.stdout 2>&1 & echo $! > /run/slurmd.bgpid'
state=""
for _ in $(seq 1 150); do state=$(node_state); [ "$state" = idle ] && break; sleep 0.2; done
[ "$state" = idle ] || { echo "slurm start: node not idle: '$state'" >&2; tail -20 /var/log/slurm/slurmd.log >&2; exit 1; }
srun -N1 -n1 true       # end to end: authentication, scheduling, step launch
for _ in $(seq 1 50); do [ "$(node_state)" = idle ] && break; sleep 0.1; done
t1=$(date +%s%N)
echo "slurm start: ready in $(( (t1 - t0) / 1000000 )) ms (slurmctld $(cat /run/slurmctld.bgpid), slurmd $(cat /run/slurmd.bgpid))"
