#!/usr/bin/env bash
# Submits a study as a SLURM job array of SHARDS tasks, then the merge and report once all have ended.
#   SHARDS=8 PROFILE=full OUT=results/full examples/slurm/submit.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
SHARDS=${SHARDS:-8}
export PROFILE=${PROFILE:-full}
export OUT=${OUT:-results/$PROFILE}
mkdir -p logs
array=$(sbatch --parsable --array="0-$((SHARDS - 1))" --export=ALL examples/slurm/study_shard.sbatch)
report=$(sbatch --parsable --dependency="afterany:$array" --export=ALL examples/slurm/report.sbatch)
echo "submitted shards as job $array (0..$((SHARDS - 1))) and the report as job $report; results in $OUT"
