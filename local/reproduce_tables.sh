#!/usr/bin/env bash
# The paper's comparison in one command: baselines, AM/AAM at every margin, APM at the best
# margins with PocketSphinx and eSpeak-oracle labels, over several seeds; then the report.
set -euo pipefail

help_message="Usage: local/reproduce_tables.sh [options]
Runs egs/olr/run.sh for every system of the paper's table and writes <out>/RESULTS.md
(mean ± std over seeds of Cavg / EER% per task, time per system, chosen margins, APM margin
plot <out>/margins.png, a written reading). Reruns skip finished stages.
  1. stages 0-3 once (corpus, manifests, features, PocketSphinx labels), plus the eSpeak
     oracle labels into <data>/ali_oracle/train
  2. configs <out>/conf/: single-task and multi-task softmax, AM and AAM at each margin
  3. per seed, stages 4-7 of the baselines into <out>/seed<k>; the AM and AAM margins with
     the lowest Cavg (mean over tasks and seeds) are chosen; APM-AM and APM-AAM at them into
     <out>/apm_seed<k> (PocketSphinx labels) and <out>/oracle_seed<k> (oracle labels)
  4. python -m apm.bin.paper_tables report
Cost on 2 CPU cores, mini-OLR (measured): about 2.6 min per system and seed, 12 systems:
31 min per seed plus the data stages (~4 min from scratch). The default two seeds fit the
90-min budget; --seeds \"1 2 3\" takes about 100 min.
e.g.: local/reproduce_tables.sh --seeds \"1 2 3\" --out egs/olr/exp/paper"

corpus_size=mini        # mini-OLR size: tiny, mini or full
seeds="1 2"             # training seeds (each seed trains all 12 systems)
margins="0.1 0.2 0.3"   # AM/AAM margins compared; APM uses the best AM and AAM ones
nj=2                    # parallel jobs of the data stages (0-3)
data=                   # data dir (default: the recipe's egs/olr/data, with its stage records)
out=                    # output dir (default: egs/olr/exp/paper)
ngpu=0                  # GPUs for training/extraction (run.sh --ngpu)

. "$(cd "$(dirname "$0")/.." && pwd -P)/path.sh"  # sets $APM_ROOT, the repository root
. "$APM_ROOT/utils/parse_options.sh"

if [ $# -ne 0 ]; then
  echo "$0: unexpected arguments: $*  (see --help)" >&2
  exit 1
fi
recipe=$APM_ROOT/egs/olr
# run.sh works inside egs/olr: the default data dir keeps the recipe's own relative name (so
# the stage records of an earlier ./run.sh match and stages 0-3 are skipped); others absolute
if [ -z "$data" ]; then
  data=data
  prep_exp=exp
else
  data=$(realpath -m "$data")
  prep_exp=
fi
out=$(realpath -m "${out:-$recipe/exp/paper}")
prep_exp=${prep_exp:-$out/prep_exp}
data_abs=$(cd "$recipe" && realpath -m "$data")
start=$SECONDS

run() { "$recipe/run.sh" --data "$data" --ngpu "$ngpu" "$@"; }
tables() { python -m apm.bin.paper_tables --conf-dir "$recipe/conf" --margins "$margins" --seeds "$seeds" "$@"; }

echo "== data stages 0-3 ($data, records in $prep_exp)"
run --stage 0 --stop-stage 3 --corpus-size "$corpus_size" --nj "$nj" --exp "$prep_exp"
run --stage 3 --stop-stage 3 --corpus-size "$corpus_size" --nj "$nj" --ali-from oracle \
  --ali-dir "$data/ali_oracle/train" --exp "$out/oracle_ali_exp"

baselines=$(tables configs "$out")
for seed in $seeds; do
  echo "== seed $seed: baselines ($baselines)"
  run --stage 4 --seed "$seed" --system-conf-dir "$out/conf" --systems "$baselines" \
    --exp "$out/seed$seed" --results "$out/seed$seed/RESULTS.md"
done

apm_systems=$(tables select "$out")
echo "== APM systems at the chosen margins: $apm_systems"
for seed in $seeds; do
  run --stage 4 --seed "$seed" --system-conf-dir "$out/conf" --systems "$apm_systems" \
    --exp "$out/apm_seed$seed" --results "$out/apm_seed$seed/RESULTS.md"
  run --stage 4 --seed "$seed" --system-conf-dir "$out/conf" --systems "$apm_systems" \
    --ali-dir "$data/ali_oracle/train" --exp "$out/oracle_seed$seed" \
    --results "$out/oracle_seed$seed/RESULTS.md"
done

tables report --data "$data_abs" "$out"
echo "== done in $(( (SECONDS - start) / 60 )) min: $out/RESULTS.md"
