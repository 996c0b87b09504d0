#!/bin/bash
# Submit disarm_array.sbatch with one array task per sub-* folder of BIDS_DIR.
#
#   submit_array.sh BIDS_DIR OUT_DIR [disarm-pipeline options...]
#
# MAX_PARALLEL (default 20) caps the tasks running at once; SBATCH_EXTRA adds sbatch options
# (e.g. "-p short --account=lab"), which override the #SBATCH lines of disarm_array.sbatch.
set -euo pipefail
if [ $# -lt 2 ]; then
    echo "usage: $0 BIDS_DIR OUT_DIR [disarm-pipeline options...]" >&2
    exit 64
fi
N=$(find "$1" -mindepth 1 -maxdepth 1 -type d -name 'sub-*' | wc -l)
if [ "$N" -eq 0 ]; then
    echo "$0: no sub-* folder in $1" >&2
    exit 66
fi
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck disable=SC2086  # SBATCH_EXTRA is a list of options
exec sbatch ${SBATCH_EXTRA:-} --array="1-${N}%${MAX_PARALLEL:-20}" \
    "$HERE/disarm_array.sbatch" "$@"
