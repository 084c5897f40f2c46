#!/bin/bash
# Emulates "--workers N on N cores" on a small machine: each serving process
# (plain twistd socks5, or each worker of --workers N) is held to QUOTA/PERIOD
# of a core by a cgroup-v1 CPU quota, all on CPU0, while the load generator
# (sbtool connrate, 64 concurrent) has CPU1.  Prints connections/s per mode and
# the parent's CPU (clock ticks) during the run.  Needs root, cgroup v1's cpu
# controller at /sys/fs/cgroup/cpu, and sbtool from ../shared/bench (SBTOOL).
#
# usage: bench/workers_scale.sh QUOTA_US PERIOD_US MODE...
#   MODE: plain | w2 | w3 | w2nolog     e.g. bench/workers_scale.sh 3000 10000 plain w2 plain w2
set -u
SB=${SBTOOL:-/work/shared/bench/build/sbtool}
repo=$(cd "$(dirname "$0")/.." && pwd)
TWISTD=${TWISTD:-$repo/.venv/bin/twistd}
export PYTHONPATH=${PYTHONPATH:-$repo}  # twistd finds the socks5 plugin in the checkout
Q=$1; P=$2; shift 2
CG=/sys/fs/cgroup/cpu
log=$(mktemp -d)
taskset -c 1 "$SB" target --tcp 127.0.0.1:19000 --udp 127.0.0.1:19001 >"$log/target" 2>&1 &
TP=$!
cpu() { awk '{print $14+$15}' "/proc/$1/stat"; }
for mode in "$@"; do
  case $mode in
    plain) args=""; n=0 ;;
    w2) args="--workers 2"; n=2 ;;
    w3) args="--workers 3"; n=3 ;;
    w2nolog) args="--workers 2 --no-session-log"; n=2 ;;
    *) echo "unknown mode $mode" >&2; continue ;;
  esac
  # shellcheck disable=SC2086
  taskset -c 0 "$TWISTD" --pidfile= -n --logfile="$log/$mode.log" socks5 \
    --port tcp:19080:interface=127.0.0.1 $args >"$log/$mode.out" 2>&1 &
  SP=$!
  for _ in $(seq 1 100); do  # until every process serves (at most 10 s)
    if [ $n = 0 ]; then procs=$SP; else procs=$(pgrep -P $SP); fi
    c=$(grep -c "methods:" "$log/$mode.log" 2>/dev/null); c=${c:-0}
    [ "$(echo $procs | wc -w)" -ge $n ] && [ "$c" -ge 1 ] && [ "$c" -ge $n ] && break
    sleep 0.1
  done
  i=0
  for p in $procs; do
    i=$((i+1)); mkdir -p $CG/wscale$i
    echo "$P" > $CG/wscale$i/cpu.cfs_period_us; echo "$Q" > $CG/wscale$i/cpu.cfs_quota_us
    echo "$p" > $CG/wscale$i/cgroup.procs
  done
  c0=$(cpu $SP)
  r=$(taskset -c 1 "$SB" connrate --proxy 127.0.0.1:19080 --target 127.0.0.1:19000 --conc 64 --duration 4 --warmup 1)
  c1=$(cpu $SP)
  echo "$mode processes=$(echo $procs | wc -w) $(echo "$r" | python3 -c 'import json,sys; d=json.load(sys.stdin); print("connections/s", d["rate"], "errors", d["errors"])') parent_cpu_ticks=$((c1-c0))"
  kill $SP; wait $SP 2>/dev/null; sleep 1
  for j in $(seq 1 $i); do rmdir $CG/wscale$j 2>/dev/null; done
done
kill $TP
rm -rf "$log"
