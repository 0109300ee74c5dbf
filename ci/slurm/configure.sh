#!/usr/bin/env bash
# Write /etc/slurm/slurm.conf for a one-node cluster (node "localhost", partition "debug").
#   SLURM_CPUS=8 bash ci/slurm/configure.sh    # declare 8 CPUs (default: nproc). More than the machine
#                                             # has turns on SlurmdParameters=config_overrides, so
#                                             # several one-CPU test jobs run at once.
# Idempotent: rewrites the file; a running cluster must be restarted (stop.sh, start.sh) to see it.
set -euo pipefail
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
NPROC=$(nproc)
CPUS=${SLURM_CPUS:-$NPROC}
# RealMemory must not exceed what slurmd detects (slurmd -C): keep a margin.
MEM_MB=$(( $(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo) - 512 ))
EXTRA=""
[ "$CPUS" -gt "$NPROC" ] && EXTRA="SlurmdParameters=config_overrides"
$SUDO mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
$SUDO tee /etc/slurm/slurm.conf >/dev/null <<CONF
# Written by ckpt's ci/slurm/configure.sh: single-node test cluster.
ClusterName=ci
# "localhost" is replaced by the real short host name, and a single node named localhost matches any
# host name, so nothing here names the machine.
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# A requeued job may start again only cred_expire+1 s later (default 120; minimum 5).
AuthInfo=cred_expire=10
MailProg=/bin/true
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# no cgroups (no systemd in CI)
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
# main loop every 2 s, backfill every 1 s: requeued jobs restart as soon as they are eligible
SchedulerParameters=bf_interval=1,sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
JobRequeue=1
# SIGTERM -> SIGKILL: max(KillWait, 5) s; 5 is the floor
KillWait=5
OverTimeLimit=0
InactiveLimit=0
# finished jobs stay visible to scontrol/squeue for 5 min (no accounting database)
MinJobAge=300
${EXTRA}
NodeName=localhost NodeAddr=127.0.0.1 CPUs=${CPUS} RealMemory=${MEM_MB} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF
echo "slurm configure: /etc/slurm/slurm.conf CPUs=${CPUS} RealMemory=${MEM_MB} ${EXTRA}"
