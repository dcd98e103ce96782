#!/usr/bin/env bash
# N processes on this machine, each with D virtual CPU devices and gloo collectives: a rehearsal of a
# multi-host run (the same code path as SLURM, TPU and Kubernetes launches).
#
#   launch/local_multiprocess.sh CONFIG WORKDIR [--config.KEY=VALUE ...]
#   JAXSEG_PROCESSES=4 JAXSEG_DEVICES=1 launch/local_multiprocess.sh configs/unet_ct.py:quick /tmp/mp_run
#   launch/local_multiprocess.sh --dry-run CONFIG WORKDIR [...]     # prints the commands and environment
#
# Logs: WORKDIR/logs/process<i>.log. Checkpoints: WORKDIR/checkpoints; rerun the same command to resume.
# If one process fails, the others are stopped.
set -euo pipefail
dry_run=${DRY_RUN:-0}
if [[ "${1:-}" == "--dry-run" ]]; then dry_run=1; shift; fi
usage="usage: launch/local_multiprocess.sh [--dry-run] CONFIG WORKDIR [--config.KEY=VALUE ...]"
config=${1:?$usage}
workdir=${2:?$usage}
shift 2
processes=${JAXSEG_PROCESSES:-2}
devices=${JAXSEG_DEVICES:-2}
python=${PYTHON:-python}
port=${JAXSEG_PORT:-$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
export XLA_FLAGS=--xla_force_host_platform_device_count=$devices JAX_PLATFORMS=cpu
export JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo
export JAXSEG_COORDINATOR=127.0.0.1:$port JAXSEG_NUM_PROCESSES=$processes
export JAXSEG_INIT_TIMEOUT=${JAXSEG_INIT_TIMEOUT:-120}
logdir="$workdir/logs"
if [[ "$dry_run" == 1 ]]; then
  echo "# $processes processes x $devices CPU devices"
  for name in XLA_FLAGS JAX_PLATFORMS JAX_CPU_COLLECTIVES_IMPLEMENTATION JAXSEG_COORDINATOR JAXSEG_NUM_PROCESSES \
              JAXSEG_INIT_TIMEOUT; do
    echo "export $name=${!name}"
  done
  for ((id = 0; id < processes; id++)); do
    echo "JAXSEG_PROCESS_ID=$id $(printf '%q ' "$python" -m jaxseg.main --config="$config" --workdir="$workdir" "$@")> $logdir/process$id.log 2>&1 &"
  done
  exit 0
fi
mkdir -p "$logdir"
pids=()
stop() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap stop EXIT INT TERM
for ((id = 0; id < processes; id++)); do
  JAXSEG_PROCESS_ID=$id "$python" -m jaxseg.main --config="$config" --workdir="$workdir" "$@" \
    > "$logdir/process$id.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do
  if ! wait "$pid"; then status=1; stop; fi
done
trap - EXIT
echo "process logs: $logdir/process*.log (exit $status)"
exit $status
