#!/usr/bin/env bash
# Cloud TPU VM (single host or a pod slice): install and run jaxseg on every worker.
#
#   launch/tpu_vm.sh TPU_NAME ZONE configs/unet_ct.py gs://BUCKET/runs/unet_ct [--config.KEY=VALUE ...]
#
# On a pod slice, JAX finds the other workers by itself (jax.distributed.initialize() is called
# when TPU_WORKER_HOSTNAMES is set). The workdir should be a bucket (gs://...) every worker sees.
set -euo pipefail
tpu=${1:?usage: launch/tpu_vm.sh TPU_NAME ZONE CONFIG WORKDIR [FLAGS...]}
zone=${2:?zone}
config=${3:?config}
workdir=${4:?workdir}
shift 4
repo=$(cd "$(dirname "$0")/.." && pwd)
gcloud compute tpus tpu-vm scp --recurse --zone="$zone" --worker=all "$repo" "$tpu":~/jaxseg
gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all --command="
  cd ~/jaxseg && pip install -q -e '.[tpu]' &&
  python -m jaxseg.main --config=$config --workdir=$workdir $*"
