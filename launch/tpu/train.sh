#!/usr/bin/env bash
# Cloud TPU VM, single host or a pod slice: copy this repository to every worker and start one jaxseg
# process on each (all of that worker's chips).
#
#   launch/tpu/train.sh TPU_NAME ZONE CONFIG gs://BUCKET/runs/NAME [--config.KEY=VALUE ...]
#   launch/tpu/train.sh --dry-run TPU_NAME ZONE CONFIG gs://BUCKET/runs/NAME [...]   # prints the commands
#
# JAXSEG_DISTRIBUTED=auto makes jaxseg call jax.distributed.initialize(), which finds the other workers
# from the TPU metadata. The workdir must be a bucket every worker sees (gs://...): checkpoints, events,
# reports and config.json go there; JAXSEG_DATA_DIR (default gs://BUCKET/jaxseg_data) holds prepared data.
# Logs: ~/jaxseg/logs/<run>.log on each worker (`gcloud compute tpus tpu-vm ssh ... --worker=N`).
# Preemption (spot / queued resources): recreate the TPU and run this command again: the run resumes
# from the newest checkpoint in the bucket.
set -euo pipefail
dry_run=${DRY_RUN:-0}
if [[ "${1:-}" == "--dry-run" ]]; then dry_run=1; shift; fi
usage="usage: launch/tpu/train.sh [--dry-run] TPU_NAME ZONE CONFIG WORKDIR [--config.KEY=VALUE ...]"
tpu=${1:?$usage}
zone=${2:?$usage}
config=${3:?$usage}
workdir=${4:?$usage}
shift 4
if [[ "$workdir" != gs://* ]]; then
  echo "launch/tpu/train.sh: WORKDIR $workdir is not a gs:// bucket; every worker must see it" >&2
  exit 2
fi
bucket=${workdir#gs://}; bucket=${bucket%%/*}
data_dir=${JAXSEG_DATA_DIR:-gs://$bucket/jaxseg_data}
run=$(basename "$workdir")
repo=$(cd "$(dirname "$0")/../.." && pwd)
overrides=$(printf '%q ' "$@")
remote="cd ~/jaxseg && pip install -q -e '.[tpu]' && mkdir -p logs && \
JAXSEG_DISTRIBUTED=auto JAXSEG_DATA_DIR=$data_dir JAXSEG_INIT_TIMEOUT=${JAXSEG_INIT_TIMEOUT:-600} \
nohup python -m jaxseg.main --config=$config --workdir=$workdir $overrides > logs/$run.log 2>&1 &"
copy=(gcloud compute tpus tpu-vm scp --recurse --zone="$zone" --worker=all "$repo" "$tpu":~/jaxseg)
start=(gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all --command="$remote")
if [[ "$dry_run" == 1 ]]; then
  echo "# TPU VM $tpu ($zone): one process per worker, workdir $workdir"
  printf '%q ' "${copy[@]}"; echo
  printf '%q ' "${start[@]}"; echo
  exit 0
fi
"${copy[@]}"
"${start[@]}"
echo "started on every worker of $tpu; logs: ~/jaxseg/logs/$run.log on each, results in $workdir"
