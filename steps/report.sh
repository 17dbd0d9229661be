#!/usr/bin/env bash
# Stage 7: metrics and report of the given systems (python -m apm.bin.report).
set -euo pipefail

help_message="Usage: $0 [options] <exp-dir> <system> [<system> ...]
For each system with scores: <exp-dir>/<system>/results.json, results.md, plots/det.png and
plots/confusion_<task>.png; then --output gathers all systems in one table (Cavg / EER%).
Example: $0 --data data --test-sets \"task_full task_open\" --output RESULTS.md exp apm_am am"

data=data             # directory holding the Kaldi data dirs (trials, utt2lang)
test_sets=            # tasks to report, space separated (required)
output=RESULTS.md     # the table gathering all systems
skip_bad=false        # drop (and count) the trials of utterances without scores
command_line=         # the command recorded in the table (with the code's commit)

. "$(cd "$(dirname "$0")" && pwd -P)/../path.sh"  # physical: recipes reach steps/ via a symlink
. "$APM_ROOT/utils/parse_options.sh"

if [ $# -lt 2 ] || [ -z "$test_sets" ]; then
  echo "$help_message" >&2
  exit 1
fi
exp_dir=$1
shift

python -m apm.bin.report --data "$data" --test-sets "$test_sets" --output "$output" \
  --skip-bad "$skip_bad" --command-line "$command_line" "$exp_dir" "$@"
