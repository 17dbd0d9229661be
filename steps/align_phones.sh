#!/usr/bin/env bash
# Stage 3: frame-level (virtual) phone labels for every cut of a feature directory.
set -euo pipefail

help_message="Usage: steps/align_phones.sh [options] <fbank-dir> <ali-dir>
Writes <ali-dir>/ali.{ark,scp} (int32 phone id per 10 ms feature frame, keyed by cut id),
phones.txt (SIL = 0) and report.{json,md} (per-language phone statistics; agreement with
the oracle alignment when --oracle-dir exists). PocketSphinx decodes in --nj jobs through
--cmd (cmd.sh's \$train_cmd); a rerun keeps the finished ones.
e.g.: steps/align_phones.sh --nj 2 --config conf/align.yaml data/fbank/train data/ali/train"

nj=                   # decoding jobs (empty: apm.utils.defaults.NJ)
cmd=${train_cmd:-dispatch.sh local}  # job dispatcher (utils/dispatch.sh; cmd.sh sets $train_cmd)
log_dir=               # the decoding jobs' logs: <log-dir>/align.JOB.log (empty: <ali-dir>/log)
config=                # align YAML (PocketSphinx settings, silence rules); empty: defaults
ali_from=pocketsphinx  # pocketsphinx, oracle (the --oracle-dir labels) or kaldi:DIR
oracle_dir=            # oracle ali.scp + phones.txt; compared against in the report if present
skip_bad=false         # leave out (and count) utterances that cannot be aligned

# physical path: egs/olr/steps is a symlink to this directory; path.sh sets $APM_ROOT
. "$(cd "$(dirname "$0")" && pwd -P)/../path.sh"
. "$APM_ROOT/utils/parse_options.sh"

if [ $# -ne 2 ]; then
  echo "$help_message" >&2
  exit 1
fi

python -m apm.bin.align_phones ${nj:+--nj "$nj"} --cmd "$cmd" --log-dir "${log_dir:-$2/log}" \
  ${config:+--config "$config"} --ali-from "$ali_from" ${oracle_dir:+--oracle-dir "$oracle_dir"} \
  --skip-bad "$skip_bad" "$1" "$2"
