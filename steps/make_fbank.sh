#!/usr/bin/env bash
# Stage 2: fbank + Kaldi energy VAD of <manifests>/<set>/cuts.jsonl.gz into <out>/<set>/:
# cuts.jsonl.gz (lhotse features), feats.scp and vad.scp (kaldiio). Resumable per job.
set -euo pipefail
help_message="Usage: $0 [options] <manifests> <out> <set> [<set>...]"
nj=2                   # parallel jobs
conf=conf/fbank.yaml   # feature config (fbank and VAD options)
skip_bad=false         # skip (and count) unreadable audio instead of stopping

# Physical path: steps/ is usually reached through the recipe's symlink.
. "$(cd "$(dirname "$0")" && pwd -P)/../path.sh"
. "$APM_ROOT/utils/parse_options.sh"

if [ $# -lt 3 ]; then
  echo "$help_message" >&2; exit 1
fi
python -m apm.bin.make_fbank --nj "$nj" --conf "$conf" --skip-bad "$skip_bad" "$@"
