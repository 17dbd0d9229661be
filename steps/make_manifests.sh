#!/usr/bin/env bash
# Stage 1: import Kaldi data dirs <data>/<set> into lhotse manifests <out>/<set>/
# (recordings, supervisions with language and speaker, cuts), opening and checking all audio:
# --nj jobs through $cmd (cmd.sh's $train_cmd) each open their share of the recordings, then
# one run merges what they found and writes the manifests.
set -euo pipefail
help_message="Usage: $0 [options] <data> <out> <set> [<set>...]"
nj=                # jobs opening audio (empty: apm.utils.defaults.NJ)
cmd=${train_cmd:-dispatch.sh local}  # job dispatcher (utils/dispatch.sh; cmd.sh sets $train_cmd)
log_dir=            # the jobs' logs: <log-dir>/manifests.JOB.log (empty: <out>/log)
skip_bad=false      # skip (and count) bad utterances instead of stopping
speed_perturb=false # add 0.9/1.1 speed-perturbed cuts (<utt>_sp0.9, <utt>_sp1.1)
perturb_sets=       # sets that get the perturbed copies (space separated)

# Physical path: steps/ is usually reached through the recipe's symlink.
. "$(cd "$(dirname "$0")" && pwd -P)/../path.sh"
. "$APM_ROOT/utils/parse_options.sh"

if [ $# -lt 3 ]; then
  echo "$help_message" >&2; exit 1
fi
python -m apm.bin.make_manifests ${nj:+--nj "$nj"} --cmd "$cmd" --log-dir "${log_dir:-$2/log}" \
  --skip-bad "$skip_bad" --speed-perturb "$speed_perturb" --perturb-sets "$perturb_sets" "$@"
