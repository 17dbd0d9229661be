#!/usr/bin/env bash
# Stage 0 with --olr-root: validate a real OLR release given as Kaldi data dirs
# (<olr-root>/<set>/{wav.scp,utt2spk,spk2utt,utt2lang[,segments][,trials]}) and copy each set
# to <data>/<set>/ with absolute audio paths. The first set is the training set.
set -euo pipefail
help_message="Usage: $0 [options] <olr-root> <data> <train-set> [<test-set>...]"
skip_bad=false   # skip (and count) bad utterances instead of stopping

# Physical path: steps/ is usually reached through the recipe's symlink.
. "$(cd "$(dirname "$0")" && pwd -P)/../path.sh"
. "$APM_ROOT/utils/parse_options.sh"

if [ $# -lt 3 ]; then
  echo "$help_message" >&2; exit 1
fi
python -m apm.bin.import_olr --skip-bad "$skip_bad" "$@"
