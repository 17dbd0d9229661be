#!/usr/bin/env bash
# Stage 1: import Kaldi data dirs <data>/<set> into lhotse manifests <out>/<set>/
# (recordings, supervisions with language and speaker, cuts), opening and checking all audio.
set -euo pipefail
help_message="Usage: $0 [options] <data> <out> <set> [<set>...]"
nj=                # parallel processes opening audio (empty: apm.utils.defaults.NJ)
skip_bad=false      # skip (and count) bad utterances instead of stopping
speed_perturb=false # add 0.9/1.1 speed-perturbed cuts (<utt>_sp0.9, <utt>_sp1.1)
perturb_sets=       # sets that get the perturbed copies (space separated)

# Physical path: steps/ is usually reached through the recipe's symlink.
. "$(cd "$(dirname "$0")" && pwd -P)/../path.sh"
. "$APM_ROOT/utils/parse_options.sh"

if [ $# -lt 3 ]; then
  echo "$help_message" >&2; exit 1
fi
python -m apm.bin.make_manifests ${nj:+--nj "$nj"} --skip-bad "$skip_bad" \
  --speed-perturb "$speed_perturb" --perturb-sets "$perturb_sets" "$@"
