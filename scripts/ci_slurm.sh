#!/usr/bin/env bash
# A real single-node Slurm on this machine, for `make test-cluster` (tests/cluster/test_slurm.py).
#
#   sudo bash scripts/ci_slurm.sh          # install, configure, start; prints `sinfo` at the end
#
# Installs Debian's slurm-wlm and munge, writes a minimal /etc/slurm/slurm.conf for this host
# (its real CPU count and memory from `slurmd -C`, reached at 127.0.0.1), starts munged,
# slurmctld and slurmd, and waits until `sinfo` shows the node idle. Idempotent: a second call
# keeps what is running. It is meant for CI and development boxes: it refuses to overwrite a
# slurm.conf it did not write, and it never touches a machine without apt-get.
set -euo pipefail

STATE=${MOAA_SLURM_STATE:-/var/tmp/moaa-slurm}   # state, spool, pid and log files
CONF=/etc/slurm/slurm.conf
MARK="# written by moaa-cluster scripts/ci_slurm.sh"

die() { echo "ci_slurm: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (installs packages and starts daemons)"

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  command -v apt-get >/dev/null || die "no apt-get here; install Slurm and munge yourself"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
fi

# munge: the package's postinst makes a key; make one if it did not (a container may skip it)
if [ ! -s /etc/munge/munge.key ]; then
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
  chown munge:munge /etc/munge/munge.key
  chmod 400 /etc/munge/munge.key
fi
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  runuser -u munge -- munged --force
  for _ in $(seq 20); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.5; done
  munge -n | unmunge >/dev/null || die "munged did not start (see /var/log/munge/munged.log)"
fi

# slurm.conf: one node, this host, addressed on the loopback so nothing leaves the machine
host=$(hostname -s)
node_line=$(slurmd -C | head -1)   # NodeName=<host> CPUs=... RealMemory=... (measured)
[[ $node_line == NodeName=* ]] || die "slurmd -C printed no node line: $node_line"
if [ -e "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
  die "$CONF exists and was not written by this script; not touching it"
fi
mkdir -p "$STATE/state" "$STATE/spool" /etc/slurm
new_conf=$(cat <<EOF
$MARK
ClusterName=moaa-ci
SlurmctldHost=$host(127.0.0.1)
AuthType=auth/munge
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
KillWait=30
StateSaveLocation=$STATE/state
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
$node_line NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
)
changed=0
if [ ! -e "$CONF" ] || [ "$(cat "$CONF")" != "$new_conf" ]; then
  printf '%s\n' "$new_conf" >"$CONF"
  changed=1
fi

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
if [ "$changed" = 1 ]; then   # a new config: restart whatever runs with the old one
  for pid_file in "$STATE/slurmd.pid" "$STATE/slurmctld.pid"; do
    if alive "$pid_file"; then kill "$(cat "$pid_file")"; sleep 1; fi
  done
fi
alive "$STATE/slurmctld.pid" || slurmctld
alive "$STATE/slurmd.pid" || slurmd

for _ in $(seq 60); do
  state=$(sinfo -h -n "$host" -o %T 2>/dev/null || true)
  case $state in
    idle | mixed | allocated) break ;;
    down* | drain*) scontrol update nodename="$host" state=resume 2>/dev/null || true ;;
  esac
  sleep 1
done
sinfo
[[ $state == idle || $state == mixed || $state == allocated ]] ||
  die "node $host is '$state', not idle (logs: $STATE/slurmctld.log, $STATE/slurmd.log)"
