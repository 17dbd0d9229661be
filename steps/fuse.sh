#!/usr/bin/env bash
# Stage 7, before the report: score fusion of several systems (python -m apm.bin.fuse).
set -euo pipefail

help_message="Usage: $0 [options] <exp-dir> <system> <system> [<system> ...]
Learns a linear logistic-regression fusion (a scale per system, an offset per language) of the
systems' primary stage 6 scores on --dev-sets and writes <exp-dir>/<name>/: languages.txt,
scores/<task>.score for every --tasks set (fused, calibrated log-posteriors), fusion.json.
Stage 7's report then shows it as one more system.
Example: $0 --data data --dev-sets \"dev_full dev_short\" --tasks \"dev_full task_full\" exp apm_am am"

data=data             # directory holding the Kaldi data dirs (utt2lang)
dev_sets=             # sets the fusion weights are learned on (required)
tasks=                # sets to write fused scores for (required)
name=fusion           # the fused system's directory under <exp-dir>
skip_bad=false        # fuse on the utterances every system scored instead of stopping

. "$(cd "$(dirname "$0")" && pwd -P)/../path.sh"  # physical: recipes reach steps/ via a symlink
. "$APM_ROOT/utils/parse_options.sh"

if [ $# -lt 3 ] || [ -z "$dev_sets" ] || [ -z "$tasks" ]; then
  echo "$help_message" >&2
  exit 1
fi
exp_dir=$1
shift

python -m apm.bin.fuse --data "$data" --dev-sets "$dev_sets" --tasks "$tasks" --name "$name" \
  --skip-bad "$skip_bad" --log-file "$exp_dir/log/fuse.log" "$exp_dir" "$@"
