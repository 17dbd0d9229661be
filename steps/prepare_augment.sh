#!/usr/bin/env bash
# Noise and RIR sets for on-the-fly augmentation: lhotse recordings manifests
# <out>/{noise,music,babble}.jsonl.gz (MUSAN noise/, music/, speech/) and <out>/rirs.jsonl.gz
# (RIRS_NOISES), named by the augment section of a system config (conf/<system>.yaml).
set -euo pipefail
help_message="Usage: $0 [options] <out>  (e.g. $0 --musan /corpora/musan data/augment)"
musan=             # MUSAN root (openslr.org/17): noise/, music/, speech/
rirs_noises=       # RIRS_NOISES root (openslr.org/28): simulated_rirs/, real_rirs_isotropic_noises/
rir_parts=sim_rir  # RIR parts, space separated: sim_rir real_rir
skip_bad=false     # leave out (log and count) unreadable files and files with NaN/Inf samples

# Physical path: steps/ is usually reached through the recipe's symlink.
. "$(cd "$(dirname "$0")" && pwd -P)/../path.sh"
. "$APM_ROOT/utils/parse_options.sh"

if [ $# -ne 1 ]; then
  echo "$help_message" >&2; exit 1
fi
python -m apm.bin.prepare_augment --musan "$musan" --rirs-noises "$rirs_noises" \
  --rir-parts "$rir_parts" --skip-bad "$skip_bad" "$1"
