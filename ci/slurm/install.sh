#!/usr/bin/env bash
# Install a single-node Slurm (22.05 on Debian 12) plus munge from the distribution's packages.
# Idempotent: does nothing when the daemons and clients are already installed.
#   bash ci/slurm/install.sh            # Slurm + munge (+ a C compiler)
#   SLURM_WITH_MPI=1 bash ci/slurm/install.sh   # also Open MPI + gfortran (for MPI scenarios)
# Needs root (or sudo) and apt-get. Takes about 10-25 s from zero.
set -euo pipefail
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
pkgs=(slurm-wlm slurmctld slurmd slurm-client munge gcc libc6-dev)
[ "${SLURM_WITH_MPI:-0}" = 1 ] && pkgs+=(openmpi-bin libopenmpi-dev gfortran)

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" = 0 ]; then
  echo "slurm install: all packages present ($(sinfo -V 2>/dev/null || echo '?'))"
else
  command -v apt-get >/dev/null || { echo "slurm install: needs apt-get (Debian/Ubuntu)" >&2; exit 1; }
  export DEBIAN_FRONTEND=noninteractive
  # The postinst scripts run "invoke-rc.d <daemon> start", which fails without systemd and
  # without a slurm.conf and aborts apt: deny service starts while installing.
  created_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    $SUDO sh -c 'printf "#!/bin/sh\nexit 101\n" > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d'
    created_policy=1
  fi
  trap '[ "$created_policy" = 1 ] && $SUDO rm -f /usr/sbin/policy-rc.d' EXIT
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  echo "slurm install: installed ${missing[*]}"
fi
# munge's postinst normally creates the key; make sure one exists.
if ! $SUDO test -s /etc/munge/munge.key; then
  $SUDO mungekey --create --keyfile=/etc/munge/munge.key
  $SUDO chown munge:munge /etc/munge/munge.key
  $SUDO chmod 0400 /etc/munge/munge.key
fi
