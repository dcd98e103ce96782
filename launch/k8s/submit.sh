#!/usr/bin/env bash
# Renders launch/k8s/jobset.yaml and submits it with kubectl.
#
#   launch/k8s/submit.sh CONFIG WORKDIR [--config.KEY=VALUE ...]
#   launch/k8s/submit.sh --dry-run CONFIG WORKDIR [...]     # prints the manifest and the kubectl command
#
# Settings (environment): JAXSEG_NAME (jaxseg), JAXSEG_IMAGE (an image with `pip install -e ".[cuda]"`
# of this repository), JAXSEG_NUM_PROCESSES (pods, 2), JAXSEG_GPUS (per pod, 8), JAXSEG_PVC (the shared
# volume's claim, jaxseg-shared, mounted at /shared), JAXSEG_DATA_DIR (/shared/jaxseg_data).
set -euo pipefail
dry_run=${DRY_RUN:-0}
if [[ "${1:-}" == "--dry-run" ]]; then dry_run=1; shift; fi
usage="usage: launch/k8s/submit.sh [--dry-run] CONFIG WORKDIR [--config.KEY=VALUE ...]"
config=${1:?$usage}
workdir=${2:?$usage}
shift 2
args="["
for arg in "$@"; do
  [[ "$arg" == *'"'* || "$arg" == *\\* ]] && { echo "launch/k8s/submit.sh: quotes or backslashes in $arg" >&2; exit 2; }
  args+="\"$arg\", "
done
args="${args%, }]"
declare -A values=(
  [NAME]=${JAXSEG_NAME:-jaxseg} [IMAGE]=${JAXSEG_IMAGE:-YOUR_REGISTRY/jaxseg:latest}
  [NUM_PROCESSES]=${JAXSEG_NUM_PROCESSES:-2} [GPUS]=${JAXSEG_GPUS:-8} [PVC]=${JAXSEG_PVC:-jaxseg-shared}
  [DATA_DIR]=${JAXSEG_DATA_DIR:-/shared/jaxseg_data} [CONFIG]=$config [WORKDIR]=$workdir [ARGS]=$args
)
manifest=$(<"$(dirname "$0")/jobset.yaml")
for key in "${!values[@]}"; do
  manifest=${manifest//"\${$key}"/${values[$key]}}
done
if [[ "$manifest" == *'${'* ]]; then
  echo "launch/k8s/submit.sh: unfilled field in jobset.yaml" >&2; exit 2
fi
if [[ "$dry_run" == 1 ]]; then
  echo "# kubectl apply -f - <<'MANIFEST'"
  echo "$manifest"
  echo "# MANIFEST"
  exit 0
fi
kubectl apply -f - <<<"$manifest"
echo "submitted JobSet ${values[NAME]}: kubectl logs -f -l jobset.sigs.k8s.io/jobset-name=${values[NAME]}"
