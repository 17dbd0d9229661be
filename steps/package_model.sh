#!/usr/bin/env bash
# After stage 7: the self-contained model package of a system (python -m apm.bin.package_model).
set -euo pipefail

help_message="Usage: $0 [options] <exp/system>
Writes <exp/system>/model/: network weights, the back-end stage 6 saved (<exp/system>/backend/,
copied with its calibration), languages.txt, feature/VAD/CMN settings, package.json and MODEL.md
(--data-card's description of the training corpus, the stage 7 results); the default 'unknown'
threshold of identify is chosen on the stage 6 scores of --dev-sets (their open-set ones when
there are any; none: 0, never unknown).
Use it with python -m apm.bin.identify.
Example: $0 --fbank-conf conf/fbank.yaml --data data --dev-sets \"dev_full dev_short\" exp/apm_am"

fbank_conf=conf/fbank.yaml  # the stage 2 feature configuration
data=data                   # directory holding the Kaldi data dirs
data_card=                  # markdown file describing the training corpus (MODEL.md); empty: none
dev_sets=                   # scored dev sets: the default 'unknown' threshold is chosen on them

. "$(cd "$(dirname "$0")" && pwd -P)/../path.sh"  # physical: recipes reach steps/ via a symlink
. "$APM_ROOT/utils/parse_options.sh"

if [ $# -ne 1 ]; then
  echo "$help_message" >&2
  exit 1
fi
system_dir=$1

python -m apm.bin.package_model --fbank-conf "$fbank_conf" --data "$data" \
  ${data_card:+--data-card "$data_card"} --dev-sets "$dev_sets" --log-file "$system_dir/log/package.log" "$system_dir"
