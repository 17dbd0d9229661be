#!/usr/bin/env bash
# Stage 6: back-end scoring of a system's test tasks (python -m apm.bin.score).
set -euo pipefail

help_message="Usage: $0 [options] <exp/system> <task> [<task> ...]
Trains the back-ends of --config on the x-vectors of --backend-train-set (default: --train-set;
the AP20 baseline trains LDA/LR on the enrollment set) and writes, per task,
<exp/system>/scores/<task>.score (primary back-end, OLR matrix format) and
<task>.<backend>.score for the other back-ends listed in the configuration. With --dev-sets,
each back-end is calibrated on those sets and <exp/system>/scores/calibrated/ holds the calibrated
log-posteriors. The fitted back-end is saved in <exp/system>/backend/ (backend.json + .npz).
Example: $0 --config conf/backend.yaml --data data --train-set train exp/apm_am task_full task_short"

config=conf/backend.yaml  # back-end configuration (YAML)
data=data               # directory holding the Kaldi data dirs
train_set=train         # the system's training set
backend_train_set=      # set whose x-vectors train the back-end (empty: --train-set; AP20: enroll)
skip_bad=false          # leave out test utterances without x-vectors instead of stopping
dev_sets=               # sets the calibration is trained on (space separated; empty: none)

. "$(cd "$(dirname "$0")" && pwd -P)/../path.sh"  # physical: recipes reach steps/ via a symlink
. "$APM_ROOT/utils/parse_options.sh"

if [ $# -lt 2 ]; then
  echo "$help_message" >&2
  exit 1
fi
system_dir=$1
shift

python -m apm.bin.score --config "$config" --data "$data" --train-set "$train_set" \
  --backend-train-set "$backend_train_set" --skip-bad "$skip_bad" \
  --dev-sets "$dev_sets" --log-file "$system_dir/log/score.log" "$system_dir" "$@"
