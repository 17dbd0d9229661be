#!/usr/bin/env bash
# The paper's comparison in one command: margins chosen on dev with selection seeds of their
# own, the systems of the pre-registered contrasts (conf/claims.yaml) on the evaluation seeds,
# hierarchical intervals, an A/A check and Holm-adjusted verdicts (local/paper_comparison), on
# the OLR recipe's sets and test conditions (local/mini_olr/tasks.py).
set -euo pipefail

help_message="Usage: egs/olr/local/reproduce_tables.sh [options]
Writes <out>/RESULTS.md: the paper's comparison with pre-registered contrasts
(conf/claims.yaml), margins chosen on dev with selection seeds that no evaluation uses,
hierarchical (speaker, utterance) and seed-level intervals, an A/A check of their coverage,
Holm-adjusted verdicts and the power of each contrast.
  1. stages 0-3 once (corpus, manifests, features, PocketSphinx labels; with --sources
     oracle also the eSpeak oracle labels mapped to a shared phone inventory)
  2. selection: K and APM-K (K = AM, AAM) at every grid margin on the --select-seeds; each
     family's margin is the one with the lowest mean dev Cavg; a choice at the edge of its
     grid adds the next margin and is made again (--grid-growth times at most)
  3. evaluation on the --seeds: the systems the primary contrasts name (--exploratory true:
     also softmax, K at APM's nominal margin, normalised APM), --jobs trainings at once;
     --seed-batch N trains N seeds of a system in one process (one vmapped step over the
     stacked models: for a GPU, the default with --ngpu 1 is 8)
  4. python -m paper_comparison report
Reruns skip finished trainings. Measured cost: see docs/paper-comparison.md (Reproducing the paper's comparison).
--quick: tiny corpus, margins 0.1 0.2, no grid growth, selection seeds 101 102, seeds 1 2,
200 bootstrap draws (the end-to-end test).
e.g.: egs/olr/local/reproduce_tables.sh --seeds \"\$(seq -s ' ' 1 20)\""

corpus_size=mini          # mini-OLR size: tiny, mini or full
seeds="1 2 3 4 5 6"       # evaluation seeds (4 or more for the A/A check)
select_seeds="101 102 103"  # seeds of the dev selection runs; never evaluation seeds
margins="0.1 0.2 0.3"     # initial grid of margins for K and APM-K
grid_growth=2             # margins a family's grid may add when its choice is at an edge
claims=                   # pre-registered contrasts (default: egs/olr/conf/claims.yaml)
exploratory=false         # true: also evaluate the systems only exploratory contrasts use
sources=pocketsphinx      # label sources: pocketsphinx and/or oracle (each with its own baselines)
kinds="am aam"            # margin forms compared, each with its APM counterpart
jobs=$(nproc)             # trainings run at once (each uses one thread)
seed_batch=auto           # seeds of one system trained together in one process (apm.train.seed_batch);
                          # auto: 8 with --ngpu 1 (fills the GPU), else 1 (on CPU separate processes are as fast)
n_boot=1000               # hierarchical bootstrap draws
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
if [ "$seed_batch" = auto ]; then
  seed_batch=$([ "$ngpu" -eq 1 ] && echo 8 || echo 1)
fi
if ! [[ $seed_batch =~ ^[1-9][0-9]*$ ]]; then
  echo "$0: --seed-batch takes a positive integer or auto, got '$seed_batch'" >&2
  exit 1
fi
if [ "$quick" = true ]; then
  corpus_size=tiny margins="0.1 0.2" seeds="1 2" select_seeds="101 102" n_boot=200 grid_growth=0
fi
conf_dir=$(realpath -m "${conf_dir:-$recipe/conf}")
claims=$(realpath -m "${claims:-$recipe/conf/claims.yaml}")
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
  python -m paper_comparison --conf-dir "$conf_dir" --claims "$claims" --margins "$margins" \
    --grid-growth "$grid_growth" --sources "$sources" --kinds "$kinds" \
    --seeds "$seeds" --select-seeds "$select_seeds" --n-boot "$n_boot" \
    --dev-tasks "$(python -m mini_olr.tasks dev)" --test-sets "$(python -m mini_olr.tasks test)" \
    --conditions "$(python -m mini_olr.tasks conditions)" \
    $([ "$exploratory" = true ] && echo --exploratory) "$@"
}

# One training: stages 4-7 of run.sh for <source> <seed> <system>, its output in a log.
# $unscored: the run.sh option left empty (selection: --test-sets, scored on the dev sets
# only; evaluation: --dev-sets, scored on the test sets only).
ali_dir() {  # the training set's alignments of a label source
  case $1 in
    pocketsphinx) echo "$data/ali/train" ;;
    oracle) echo "$data/ali_oracle/train" ;;
  esac
}
train_one() {
  local src=$1 seed=$2 system=$3 ali
  ali=$(ali_dir "$src")
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
# A seed batch: <source> <seed,seed,...> <system>: the seeds' stage 4 in one process
# (steps/train_xvector.sh --seeds), then train_one for each (its stage 4 finds the training
# done, so it only writes final.pt again, the same; then stages 5-7).
train_batch() {
  local src=$1 system=$3 seed dirs=() log
  local seeds=${2//,/ }
  for seed in $seeds; do
    dirs+=("$out/$src/seed$seed/$system/$system")
  done
  log=$out/$src/seeds_${2//,/_}_$system.log
  if ! all_final "${dirs[@]}"; then
    mkdir -p "${dirs[@]}"
    if ! "$APM_ROOT/steps/train_xvector.sh" --config "$out/conf/$system.yaml" --seeds "$seeds" \
        --ngpu "$ngpu" --ali-dir "$(ali_dir "$src")" "$data/fbank/train" "${dirs[@]}" > "$log" 2>&1; then
      echo "$(date '+%F %T') FAILED: $src seeds $seeds $system (log: $log)" >&2
      return 1
    fi
  fi
  for seed in $seeds; do
    train_one "$src" "$seed" "$system" || return 1
  done
}
all_final() {
  local dir
  for dir in "$@"; do
    [ -f "$dir/final.pt" ] || return 1
  done
}
export -f train_one train_batch all_final ali_dir
export data out recipe ngpu unscored

# Job lines "<source> <seed> <system>" -> "<source> <seed,...> <system>": up to --seed-batch
# seeds of one source and system per line, in the order given.
batch_seeds() {
  awk -v n="$seed_batch" '
    { key = $1 " " $3
      if (!(key in count)) { order[++keys] = key; count[key] = 0 }
      g = int(count[key] / n)
      if (count[key]++ % n == 0) group[key, g] = $2; else group[key, g] = group[key, g] "," $2 }
    END { for (k = 1; k <= keys; k++) { split(order[k], f, " ")
            for (g = 0; g * n < count[order[k]]; g++) print f[1], group[order[k], g], f[2] } }'
}

run_jobs() {  # job lines "<source> <seed> <system>" on stdin, --jobs at a time
  local list runner=train_one
  list=$(cat)
  echo "== $1: $(echo "$list" | grep -c .) trainings, $jobs at a time, $seed_batch seed(s) per process"
  if [ "$seed_batch" -gt 1 ]; then
    list=$(echo "$list" | batch_seeds)
    runner=train_batch
  fi
  if ! echo "$list" | xargs -r -P "$jobs" -L 1 bash -c "$runner"' "$@"' _; then
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
tables configs "$out" > "$out/jobs.txt"
run_jobs "selection on dev" < "$out/jobs.txt"
while :; do  # grow each family's grid while its choice sits at an edge (--grid-growth)
  tables grow "$out" > "$out/jobs.txt"
  [ -s "$out/jobs.txt" ] || break
  run_jobs "selection: grid grown at an edge choice" < "$out/jobs.txt"
done
lap "selection trainings"
unscored=--dev-sets
tables select "$out" > "$out/jobs.txt"
run_jobs "evaluation" < "$out/jobs.txt"
lap "evaluation trainings"

tables report --data "$data_abs" --margin-plot --command-line "$command_line" "$out"
lap "report (bootstrap, margin plot)"
echo "== done in $(( (SECONDS - start) / 60 )) min $(( (SECONDS - start) % 60 )) s: $out/RESULTS.md"
printf '   %s\n' "${times[@]}"
