#!/usr/bin/env bash
# Stage 0 (no --olr-root): synthesize the mini-OLR corpus with eSpeak NG into <data>.
# Writes <data>/<set>/ for every set of the recipe (local/mini_olr/tasks.py: train, the dev
# sets, the test tasks), <data>/oracle_ali/<set>/ and <data>/mini_olr/ (wavs, stats). Reruns with the same size,
# seed and languages skip; anything else regenerates the corpus.
set -euo pipefail
. "$(dirname "$0")/../path.sh"

size=mini            # corpus size: tiny, mini or full
nj=                 # parallel synthesis processes (empty: apm.utils.defaults.NJ)
seed=777             # random seed; the same seed gives a byte-identical corpus
languages=           # target OLR codes (empty: the size's default; CODE=VOICE for others)
unknown_languages=-  # open-set unknown codes ('-': the size's default)

help_message="Usage: $0 [options] <data-dir>
  e.g. $0 --size tiny --nj 2 --seed 777 data"
. "$(dirname "$0")/../utils/parse_options.sh"

if [ $# -ne 1 ]; then
  echo "$help_message" >&2
  exit 1
fi

unknown_opt=()
[ "$unknown_languages" != "-" ] && unknown_opt=(--unknown-languages "$unknown_languages")
python -m mini_olr --size "$size" ${nj:+--nj "$nj"} --seed "$seed" \
  --languages "$languages" "${unknown_opt[@]}" "$1"
