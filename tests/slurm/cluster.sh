#!/usr/bin/env bash
# A real single-node SLURM cluster on 127.0.0.1 for the tests: munge + slurmctld + slurmd, no systemd, no cgroups,
# no accounting database (the test profile polls job status with squeue). Everything lives in one run directory.
#
#   tests/slurm/cluster.sh start [RUN_DIR]   # install (apt, once), configure and start; prints SLURM_CONF=...
#   tests/slurm/cluster.sh stop  [RUN_DIR]   # stop exactly the daemons started here (by PID file)
#
# Needs root and apt. The node offers two fake GPUs (GRES backed by /dev/null and /dev/zero) so GPU requests, multi-GPU
# ones included, can be scheduled; the jobs themselves run on the CPU.
# Snakemake's SLURM job step drops SLURM_CONF from the environment of its inner srun, so /etc/slurm/slurm.conf must
# point at this cluster: it is created as a link (never over an existing file) and removed again by stop.
# Exit code 3: this machine already has a SLURM configuration of its own; nothing was changed.
set -euo pipefail
action=${1:?usage: cluster.sh start|stop [RUN_DIR]}
run=${2:-/tmp/p2-slurm}

stop_pidfile() {
  local file=$1
  [ -f "$file" ] || return 0
  local pid
  pid=$(cat "$file")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$file"
}

system_conf=/etc/slurm/slurm.conf
if [ "$action" = stop ]; then
  stop_pidfile "$run/slurmd.pid"
  stop_pidfile "$run/slurmctld.pid"
  stop_pidfile "$run/munge/munged.pid"
  if [ -L "$system_conf" ] && [ "$(readlink "$system_conf")" = "$run/slurm.conf" ]; then rm -f "$system_conf"; fi
  exit 0
fi
[ "$action" = start ] || { echo "usage: cluster.sh start|stop [RUN_DIR]" >&2; exit 2; }

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq slurm-wlm munge >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq slurm-wlm munge >/dev/null; }
fi

if [ -e "$system_conf" ] || [ -L "$system_conf" ]; then
  if [ -L "$system_conf" ] && { ! [ -e "$system_conf" ] || grep -q '^ClusterName=p2test$' "$system_conf"; }; then
    bash "$0" stop "$(dirname "$(readlink "$system_conf")")"   # left over by an earlier test run
  else
    echo "$system_conf exists and is not this test cluster's: refusing to touch a real SLURM setup" >&2
    exit 3
  fi
fi
bash "$0" stop "$run"
rm -rf "$run"
mkdir -p "$run"/{state,spool,log,munge}
chmod 755 "$run"
chown munge:munge "$run/munge"
chmod 700 "$run/munge"
runuser -u munge -- dd if=/dev/urandom of="$run/munge/munge.key" bs=1024 count=1 status=none
chmod 400 "$run/munge/munge.key"
runuser -u munge -- /usr/sbin/munged --force --socket="$run/munge/munge.socket" --key-file="$run/munge/munge.key" \
  --pid-file="$run/munge/munged.pid" --log-file="$run/munge/munged.log" --seed-file="$run/munge/munged.seed"

node=$(hostname -s)
memory=$(( $(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) * 8 / 10 ))
cpus=$(nproc)
cat > "$run/slurm.conf" <<CONF
ClusterName=p2test
SlurmctldHost=$node(127.0.0.1)
AuthType=auth/munge
AuthInfo=socket=$run/munge/munge.socket
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$run/state
SlurmdSpoolDir=$run/spool
SlurmctldPidFile=$run/slurmctld.pid
SlurmdPidFile=$run/slurmd.pid
SlurmctldLogFile=$run/log/slurmctld.log
SlurmdLogFile=$run/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
MinJobAge=600
DefMemPerCPU=1000
GresTypes=gpu
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP
CONF
cat > "$run/gres.conf" <<CONF
NodeName=$node Name=gpu File=/dev/null
NodeName=$node Name=gpu File=/dev/zero
CONF
mkdir -p /etc/slurm
ln -sfn "$run/slurm.conf" "$system_conf"
export SLURM_CONF="$run/slurm.conf"
/usr/sbin/slurmctld -f "$SLURM_CONF"
/usr/sbin/slurmd -f "$SLURM_CONF"
for _ in $(seq 100); do
  if sinfo -h -o %t 2>/dev/null | grep -qE '^(idle|mix)'; then
    echo "SLURM_CONF=$SLURM_CONF"
    exit 0
  fi
  sleep 0.2
done
echo "the test cluster did not come up; logs in $run/log" >&2
sinfo >&2 || true
exit 1
