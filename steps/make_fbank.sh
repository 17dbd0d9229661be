#!/usr/bin/env bash
# Stage 2: fbank + Kaldi energy VAD of <manifests>/<set>/cuts.jsonl.gz into <out>/<set>/:
# cuts.jsonl.gz with a lilcom-compressed lhotse store (storage/feats.*.lca), vad.scp
# (kaldiio), and with --kaldi-copy true a Kaldi feats.scp. Resumable per job: the feature jobs
# (conf cuts_per_job cuts each) are shared by --nj dispatcher jobs through $cmd (cmd.sh's
# $train_cmd); one run then merges them.
set -euo pipefail
help_message="Usage: $0 [options] <manifests> <out> <set> [<set>...]"
nj=                     # dispatcher jobs (empty: apm.utils.defaults.NJ)
cmd=${train_cmd:-dispatch.sh local}  # job dispatcher (utils/dispatch.sh; cmd.sh sets $train_cmd)
log_dir=                 # the jobs' logs: <log-dir>/fbank.JOB.log (empty: <out>/log)
config=conf/fbank.yaml   # feature config (fbank and VAD options)
skip_bad=false           # skip (and count) unreadable audio instead of stopping
kaldi_copy=false         # also write feats.scp/ark (float32) for Kaldi tools

# Physical path: steps/ is usually reached through the recipe's symlink.
. "$(cd "$(dirname "$0")" && pwd -P)/../path.sh"
. "$APM_ROOT/utils/parse_options.sh"

if [ $# -lt 3 ]; then
  echo "$help_message" >&2; exit 1
fi
python -m apm.bin.make_fbank ${nj:+--nj "$nj"} --cmd "$cmd" --log-dir "${log_dir:-$2/log}" \
  --config "$config" --skip-bad "$skip_bad" --kaldi-copy "$kaldi_copy" "$@"
