#!/usr/bin/env bash
# A real single-node Slurm on this machine, for testing the slurm backend of utils/dispatch.sh
# (tests/test_dispatch_slurm.py) or trying cmd.sh's cmd_backend=slurm by hand. Needs root;
# runs the daemons without systemd.
#
#   utils/slurm_local.sh install   # apt-get install slurmctld slurmd slurm-client munge (if missing)
#   utils/slurm_local.sh start     # write the config, start munged, slurmctld, slurmd (if not running)
#   utils/slurm_local.sh check     # one sbatch --wait job runs and succeeds
#   utils/slurm_local.sh stop      # stop the daemons this script started (munged too, if it did)
#   utils/slurm_local.sh env       # print `export SLURM_CONF=...` for the shell
#
# Every command is idempotent. State, config and daemon logs live in $APM_SLURM_DIR
# (default /tmp/apm-slurm); clients find the cluster through SLURM_CONF=$APM_SLURM_DIR/slurm.conf
# (nothing under /etc/slurm is written). The node line is `slurmd -C`'s; ProctrackType
# proctrack/linuxproc and TaskPlugin task/none need no cgroups; job completions are logged to
# $APM_SLURM_DIR/jobcomp.txt (JobCompType jobcomp/filetxt) since there is no slurmdbd for sacct.
set -euo pipefail

dir=${APM_SLURM_DIR:-/tmp/apm-slurm}
conf=$dir/slurm.conf
export SLURM_CONF=$conf
port=${APM_SLURM_PORT:-6817}  # slurmctld; slurmd listens on the next one

die() { echo "slurm_local.sh: $*" >&2; exit 1; }

installed() { command -v slurmctld && command -v slurmd && command -v sbatch && command -v munged; } >/dev/null

do_install() {
  if installed; then echo "slurm_local.sh: Slurm and munge are installed"; return; fi
  [ "$(id -u)" -eq 0 ] || die "installing needs root (apt-get install slurmctld slurmd slurm-client munge)"
  command -v apt-get >/dev/null || die "no apt-get: install Slurm (slurmctld, slurmd, client) and munge by hand"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
  installed || die "apt-get ran but slurmctld/slurmd/sbatch/munged are still missing"
}

alive() {  # alive <pid file>
  [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

write_conf() {
  local node
  node=$(slurmd -C | head -n 1)  # NodeName=<host> CPUs=... RealMemory=...
  [[ $node = NodeName=* ]] || die "slurmd -C printed no node line: $node"
  mkdir -p "$dir/state" "$dir/spool"
  cat > "$conf.tmp" <<EOF
# written by utils/slurm_local.sh: a single-node test cluster
ClusterName=apmlocal
SlurmctldHost=localhost
SlurmctldPort=$port
SlurmdPort=$((port + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/builtin
# schedule at once, and every second (the defaults wait up to 3 s, then 60 s)
SchedulerParameters=batch_sched_delay=0,sched_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# a job without --mem gets this per CPU, not the whole node
DefMemPerCPU=1024
ReturnToService=2
# sbatch --wait polls every 2 s while MinJobAge < 8 (it backs off to 8, 32... s otherwise)
MinJobAge=4
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$dir/jobcomp.txt
$node State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  mv "$conf.tmp" "$conf"
}

start_munge() {
  if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then return; fi
  [ -s /etc/munge/munge.key ] || die "/etc/munge/munge.key is missing (reinstall munge, or mungekey -c)"
  mkdir -p "$dir" /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
  if id munge >/dev/null 2>&1; then
    runuser -u munge -- munged
  else
    munged --force
  fi
  local i
  for i in $(seq 50); do
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
      cp /run/munge/munged.pid "$dir/munged.pid" 2>/dev/null || true  # ours: stop ends it
      return
    fi
    sleep 0.1
  done
  die "munged did not start (see /var/log/munge/munged.log)"
}

do_start() {
  installed || die "Slurm is not installed; run: $0 install"
  [ "$(id -u)" -eq 0 ] || die "starting the daemons needs root"
  start_munge
  if alive "$dir/slurmctld.pid" && alive "$dir/slurmd.pid"; then
    echo "slurm_local.sh: running ($conf)"; return
  fi
  write_conf
  alive "$dir/slurmctld.pid" || slurmctld -i >>"$dir/start.log" 2>&1 \
    || die "slurmctld did not start: $(tail -n 5 "$dir/slurmctld.log" 2>/dev/null)"
  alive "$dir/slurmd.pid" || slurmd >>"$dir/start.log" 2>&1 \
    || die "slurmd did not start: $(tail -n 5 "$dir/slurmd.log" 2>/dev/null)"
  local i state=""
  for i in $(seq 100); do
    state=$(sinfo -h -o %T 2>/dev/null | head -n 1 || true)
    case "$state" in
      idle*|mixed*|allocated*) echo "slurm_local.sh: started ($conf, node $state)"; return ;;
      down*|drain*) scontrol update nodename="$(sinfo -h -o %N | head -n 1)" state=resume 2>/dev/null || true ;;
    esac
    sleep 0.2
  done
  die "the node did not come up (state '$state'); see $dir/slurmctld.log and $dir/slurmd.log"
}

do_check() {
  command -v sbatch >/dev/null || die "sbatch not found; run: $0 install"
  local out
  out=$(cd "$dir" && timeout 60 sbatch --wait --parsable --job-name=apm-check --output=/dev/null \
        --wrap true 2>&1) || die "a test job did not run: $out (is it started? $0 start)"
  echo "slurm_local.sh: job $out ran"
}

do_stop() {
  local f pid
  for f in slurmd slurmctld munged; do  # munged only when start started it
    if alive "$dir/$f.pid"; then
      pid=$(cat "$dir/$f.pid")
      kill "$pid"
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    fi
    rm -f "$dir/$f.pid"
  done
  echo "slurm_local.sh: stopped"
}

case "${1:-}" in
  install) do_install ;;
  start) do_start ;;
  check) do_check ;;
  stop) do_stop ;;
  env) echo "export SLURM_CONF=$conf" ;;
  *) die "usage: $0 install|start|check|stop|env   (state in \$APM_SLURM_DIR, default /tmp/apm-slurm)" ;;
esac
