#!/usr/bin/env bash
# Stage 0 of a corpus given as Kaldi data dirs (egs/olr: a real OLR release, --olr-root):
# validate <root>/<set>/{wav.scp,utt2spk,spk2utt,utt2lang[,segments][,trials]} and copy each set
# to <data>/<set>/ (audio paths relative to the recipe directory when under it, else
# absolute). The first set is the training set; the scored sets (--scored-sets, default: all
# the others) must have trials.
set -euo pipefail
help_message="Usage: $0 [options] <root> <data> <train-set> [<set>...]
  e.g. $0 /data/AP20-OLR data train task1 task2"
skip_bad=false   # skip (and count) bad utterances instead of stopping
scored_sets=auto # sets that must have trials (auto: every set after the first; others, e.g. a back-end set, may lack them)

# Physical path: steps/ is usually reached through the recipe's symlink.
. "$(cd "$(dirname "$0")" && pwd -P)/../path.sh"
. "$APM_ROOT/utils/parse_options.sh"

if [ $# -lt 3 ]; then
  echo "$help_message" >&2; exit 1
fi
scored=()
[ "$scored_sets" = auto ] || scored=(--scored-sets "$scored_sets")
python -m apm.bin.import_data_dirs --skip-bad "$skip_bad" ${scored[@]+"${scored[@]}"} "$@"
