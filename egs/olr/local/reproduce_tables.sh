#!/usr/bin/env bash
# The paper's comparison in one command: margins chosen on dev, matched controls, several
# seeds, paired bootstrap intervals and per-claim verdicts (apm/report/paper.py), on the OLR
# recipe's sets and test conditions (local/mini_olr/tasks.py).
set -euo pipefail

help_message="Usage: egs/olr/local/reproduce_tables.sh [options]
Writes <out>/RESULTS.md: per label source, Cavg / EER% (mean ± std over seeds) of the
softmax systems and, for AM and AAM, the dev-chosen constant margin, APM at its dev-chosen
margin, the constant margin at APM's nominal margin, normalised APM (batch-mean margin = m)
and the constant margin at APM's measured mean margin; then, for each claim of the paper,
the paired difference in Cavg and EER with a 95% bootstrap interval (test utterances and
seeds resampled), its half-width and a verdict (supported / contradicted / not resolved).
  1. stages 0-3 once (corpus, manifests, features, PocketSphinx labels; with --sources
     oracle also the eSpeak oracle labels mapped to a shared phone inventory)
  2. selection: K and APM-K (K = AM, AAM) at every grid margin with --select-seeds; each
     family's margin is the one with the lowest mean Cavg on the dev sets (<out>/choices.yaml)
  3. evaluation: the rows above on every seed (--jobs trainings at once, one thread each)
  4. python -m apm.bin.paper_tables report
Reruns skip finished trainings. Measured cost: see docs/paper-comparison.md (Reproducing the paper's
comparison). --quick: tiny corpus, margins 0.1 0.2, seeds 1 2, 200 bootstrap replicates
(the end-to-end test).
e.g.: egs/olr/local/reproduce_tables.sh --jobs 2 --seeds \"1 2 3 4 5\""

corpus_size=mini          # mini-OLR size: tiny, mini or full
seeds="1 2 3 4 5"         # evaluation seeds
select_seeds="1"          # seeds of the dev selection runs (a subset of --seeds reuses them)
margins="0.1 0.2 0.3"     # grid of margins for K and APM-K
sources=pocketsphinx      # label sources: pocketsphinx and/or oracle (each with its own baselines)
kinds="am aam"            # margin forms compared, each with its APM counterpart
full_grid=false           # true: also evaluate every grid system on every seed
jobs=2                    # trainings run at once (each uses one thread)
n_boot=1000               # bootstrap replicates
nj=                      # parallel jobs of the data stages (0-3) (empty: apm.utils.defaults.NJ)
data=                     # data dir (default: the recipe's egs/olr/data, with its stage records)
out=                      # output dir (default: egs/olr/exp/paper)
ngpu=0                    # GPUs per training (run.sh --ngpu)
quick=false               # small end-to-end setting (see above)
conf_dir=                 # base system configs (default: egs/olr/conf; the paper's network: egs/olr/conf/paper)

. "$(cd "$(dirname "$0")/.." && pwd -P)/path.sh"  # sets $APM_ROOT; the recipe's local/ on PYTHONPATH
command_line="egs/olr/local/reproduce_tables.sh $*"
. "$APM_ROOT/utils/parse_options.sh"
recipe=$(cd "$(dirname "$0")/.." && pwd -P)  # egs/olr

if [ $# -ne 0 ]; then
  echo "$0: unexpected arguments: $*  (see --help)" >&2
  exit 1
fi
if ! [[ $jobs =~ ^[1-9][0-9]*$ ]]; then
  echo "$0: --jobs takes a positive integer, got '$jobs'" >&2
  exit 1
fi
if [ "$quick" = true ]; then
  corpus_size=tiny margins="0.1 0.2" seeds="1 2" select_seeds="1" n_boot=200
fi
conf_dir=$(realpath -m "${conf_dir:-$recipe/conf}")
# Paths given are the caller's; then everything runs from the recipe directory, where the
# default data dir keeps the recipe's own relative name (so the stage records of an earlier
# ./run.sh match and stages 0-3 are skipped).
if [ -z "$data" ]; then
  data=data
  prep_exp=exp
else
  data=$(realpath -m "$data")
  prep_exp=
fi
out=$(realpath -m "${out:-$recipe/exp/paper}")
prep_exp=${prep_exp:-$out/prep_exp}
cd "$recipe"
data_abs=$(realpath -m "$data")
mkdir -p "$out"
start=$SECONDS
times=()
lap() { times+=("$1: $(( (SECONDS - lap_start) / 60 )) min $(( (SECONDS - lap_start) % 60 )) s"); lap_start=$SECONDS; }
lap_start=$SECONDS

tables() {  # the recipe's sets and conditions: one definition, local/mini_olr/tasks.py
  python -m apm.bin.paper_tables --conf-dir "$conf_dir" --margins "$margins" --sources "$sources" --kinds "$kinds" \
    --seeds "$seeds" --select-seeds "$select_seeds" --n-boot "$n_boot" \
    --dev-tasks "$(python -m mini_olr.tasks dev)" --test-sets "$(python -m mini_olr.tasks test)" \
    --conditions "$(python -m mini_olr.tasks conditions)" \
    $([ "$full_grid" = true ] && echo --full-grid) "$@"
}

# One training: stages 4-7 of run.sh for <source> <seed> <system>, its output in a log.
# $unscored: the run.sh option left empty (selection: --test-sets, scored on the dev sets
# only; evaluation: --dev-sets, scored on the test sets only).
train_one() {
  local src=$1 seed=$2 system=$3 ali
  case $src in
    pocketsphinx) ali=$data/ali/train ;;
    oracle) ali=$data/ali_oracle/train ;;
  esac
  local exp=$out/$src/seed$seed/$system
  mkdir -p "$exp"
  if "$recipe/run.sh" --stage 4 --data "$data" --ngpu "$ngpu" --seed "$seed" \
      --system-conf-dir "$out/conf" --systems "$system" --ali-dir "$ali" --exp "$exp" \
      --results "$exp/RESULTS.md" "$unscored" "" > "$exp/run.log" 2>&1; then
    echo "$(date '+%F %T') done: $src seed $seed $system"
  else
    echo "$(date '+%F %T') FAILED: $src seed $seed $system (log: $exp/run.log)" >&2
    return 1
  fi
}
export -f train_one
export data out recipe ngpu unscored

run_jobs() {  # job lines "<source> <seed> <system>" on stdin, --jobs at a time
  local list
  list=$(cat)
  echo "== $1: $(echo "$list" | grep -c .) trainings, $jobs at a time"
  if ! echo "$list" | xargs -r -P "$jobs" -L 1 bash -c 'train_one "$@"' _; then
    echo "$0: some trainings failed (see the FAILED lines above); rerun to retry them" >&2
    exit 1
  fi
}

echo "== data stages 0-3 ($data, records in $prep_exp)"
"$recipe/run.sh" --data "$data" --stage 0 --stop-stage 3 --corpus-size "$corpus_size" ${nj:+--nj "$nj"} --exp "$prep_exp"
if [[ " $sources " == *" oracle "* ]]; then
  "$recipe/run.sh" --data "$data" --stage 3 --stop-stage 3 --corpus-size "$corpus_size" ${nj:+--nj "$nj"} \
    --ali-from oracle --ali-dir "$data/ali_oracle/train" --exp "$out/oracle_ali_exp"
fi
lap "data stages 0-3"

unscored=--test-sets
tables configs "$out" | run_jobs "selection on dev"
lap "selection trainings"
unscored=--dev-sets
tables select "$out" | run_jobs "evaluation"
lap "evaluation trainings"

tables report --data "$data_abs" --margin-plot --command-line "$command_line" "$out"
lap "report (bootstrap, margin plot)"
echo "== done in $(( (SECONDS - start) / 60 )) min $(( (SECONDS - start) % 60 )) s: $out/RESULTS.md"
printf '   %s\n' "${times[@]}"
