#!/usr/bin/env bash
# Install (Debian's slurm-wlm + munge) and start a one-node Slurm on this machine, for the tests
# and for trying the sbatch script locally. Idempotent: a running slurmctld/slurmd is left alone.
# Needs root and Debian packages; prints one line and exits 1 when it cannot.
#
#   sudo bash launch/slurm/start-test-slurm.sh      # then: sinfo; sbatch ...
set -uo pipefail
say() { echo "[test-slurm] $*"; }
[ "$(id -u)" = 0 ] || { say "needs root (installs packages, writes /etc/slurm)"; exit 1; }
command -v apt-get >/dev/null || { say "needs apt-get (Debian/Ubuntu)"; exit 1; }

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  say "installing slurm-wlm and munge"
  export DEBIAN_FRONTEND=noninteractive
  { apt-get update -qq && apt-get install -y -qq slurm-wlm munge >/dev/null; } 2>&1 | tail -2
  command -v slurmctld >/dev/null || { say "could not install slurm-wlm"; exit 1; }
fi

host=$(hostname -s)
cpus=$(nproc)
mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
conf=/etc/slurm/slurm.conf
want="NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN"
if ! grep -qF "$want" "$conf" 2>/dev/null; then
  mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
  cat > "$conf" <<CONF
ClusterName=collapse-test
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobRequeue=1
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SchedulerType=sched/backfill
KillWait=10
MinJobAge=600
$want
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
  pkill -x slurmctld; pkill -x slurmd; sleep 1
fi

if ! pgrep -x munged >/dev/null; then
  [ -s /etc/munge/munge.key ] || { mkdir -p /etc/munge; dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 2>/dev/null; }
  chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge /run/munge 2>/dev/null
  chmod 400 /etc/munge/munge.key
  mkdir -p /run/munge && chown munge:munge /run/munge
  runuser -u munge -- munged 2>/dev/null || munged --force 2>/dev/null
fi
pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd
for _ in $(seq 30); do
  if sinfo -h -o %T 2>/dev/null | grep -qE "idle|mixed|allocated"; then say "up: $(sinfo -h -o '%P %D %T %c')"; exit 0; fi
  scontrol update NodeName="$host" State=RESUME >/dev/null 2>&1
  sleep 1
done
say "slurmctld/slurmd did not come up; see /var/log/slurm/*.log"
exit 1
