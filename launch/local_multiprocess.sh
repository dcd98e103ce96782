#!/usr/bin/env bash
# Two processes on this machine, each with 2 virtual CPU devices: a rehearsal of a multi-host run.
#
#   launch/local_multiprocess.sh configs/unet_ct.py:quick runs/mp_rehearsal [--config.KEY=VALUE ...]
set -euo pipefail
config=${1:?usage: launch/local_multiprocess.sh CONFIG WORKDIR [FLAGS...]}
workdir=${2:?workdir}
shift 2
port=$((20000 + RANDOM % 20000))
export XLA_FLAGS=--xla_force_host_platform_device_count=2 JAX_PLATFORMS=cpu
export JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo
export JAX_COORDINATOR_ADDRESS=127.0.0.1:$port JAX_NUM_PROCESSES=2
pids=()
for id in 0 1; do
  JAX_PROCESS_ID=$id python -m jaxseg.main --config="$config" --workdir="$workdir" "$@" \
    > "$workdir.process$id.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
echo "process logs: $workdir.process0.log $workdir.process1.log (exit $status)"
exit $status
