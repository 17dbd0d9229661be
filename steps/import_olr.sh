#!/usr/bin/env bash
# Stage 0 with --olr-root: validate a real OLR release given as Kaldi data dirs
# (<olr-root>/<set>/{wav.scp,utt2spk,spk2utt,utt2lang[,segments][,trials]}) and copy each set
# to <data>/<set>/ with absolute audio paths. The first set is the training set.
set -euo pipefail
help_message="Usage: $0 [options] <olr-root> <data> <train-set> [<test-set>...]"
skip_bad=false   # skip (and count) bad utterances instead of stopping

root=$(cd "$(dirname "$0")" && pwd -P)/..  # physical: steps/ is reached via a symlink
. "$root/path.sh"
. "$root/utils/parse_options.sh"

if [ $# -lt 3 ]; then
  echo "$help_message" >&2; exit 1
fi
python -m apm.bin.import_olr --skip-bad "$skip_bad" "$@"
