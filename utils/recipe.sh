#!/usr/bin/env bash
# Shared plumbing of a recipe's run.sh (egs/<corpus>/run.sh): sourced, defines functions only.
#
#   . "$(dirname "$0")/utils/recipe.sh"
#   recipe_enter "$@"            # before the option lines: cd to the recipe directory
#   stage=0 ...                  # the recipe's options
#   . ./path.sh; . utils/parse_options.sh; . utils/stage.sh
#   recipe_check_options         # --stage/--stop-stage/--nj sanity
#   recipe_caller_paths data exp fbank_conf ...   # relative paths given: the caller's
#   run_stage 0 ...              # the recipe's own corpus stage
#   recipe_stages_1_to_7         # the shared stages 1-7 (variables listed at the function)
#
# Relative paths given on the command line are relative to the caller's directory; defaults
# are relative to the recipe directory, where every stage runs (paths inside generated files
# are relative to it, so a recipe directory can be moved).

# Sets user_dir, recipe_dir, given_options (the options on the command line, as " a-b c-d ")
# and command_line (recorded in RESULTS.md), then enters the recipe directory.
recipe_enter() {
  user_dir=$(pwd -P)
  recipe_dir=$(cd "$(dirname "$0")" && pwd -P)
  command_line="egs/${recipe_dir##*/}/run.sh $*"
  given_options=" "
  local arg
  for arg in "$@"; do
    case "$arg" in --*) arg=${arg%%=*}; arg=${arg//_/-}; given_options+="${arg#--} " ;; esac
  done
  cd "$recipe_dir"
  _apm_opts_script=$recipe_dir/run.sh  # for --help, which reads the option lines of run.sh
}

recipe_check_options() {
  if ! [[ $stage =~ ^[0-9]+$ && $stop_stage =~ ^[0-9]+$ ]] || [ "$stage" -gt 7 ] || [ "$stop_stage" -gt 7 ]; then
    echo "$0: --stage and --stop-stage take stage numbers (0-7), got '$stage' and '$stop_stage'" >&2
    exit 1
  fi
  if [ "$stage" -gt "$stop_stage" ]; then
    echo "$0: --stage $stage is after --stop-stage $stop_stage: nothing would run; give --stop-stage >= --stage" >&2
    exit 1
  fi
  if [ -n "${nj:-}" ] && { ! [[ $nj =~ ^[0-9]+$ ]] || [ "$nj" -lt 1 ]; }; then
    echo "$0: --nj takes a number of parallel jobs >= 1, got '$nj'" >&2
    exit 1
  fi
  if [ -n "${extract_nj:-}" ] && { ! [[ $extract_nj =~ ^[0-9]+$ ]] || [ "$extract_nj" -lt 1 ]; }; then
    echo "$0: --extract-nj takes a number of jobs per system >= 1, got '$extract_nj'" >&2
    exit 1
  fi
  case "${cmd_backend:-local}" in
    local|slurm|sge) ;;
    *) echo "$0: unknown job backend '$cmd_backend' (cmd.sh's cmd_backend or APM_CMD_BACKEND): expected local, slurm or sge" >&2
       exit 1 ;;
  esac
  if ! [[ ${jobs:-auto} = auto || $jobs =~ ^[1-9][0-9]*$ ]]; then
    echo "$0: --jobs takes auto or a number of systems run at once >= 1, got '$jobs'" >&2
    exit 1
  fi
}

# Runs of one stage for several systems, --jobs at a time (stages 4 and 5 of
# recipe_stages_1_to_7): recipe_jobs_start <count>, then recipe_job <run_stage arguments> per
# system, then recipe_jobs_wait <stage>. With --jobs auto: as many at once as the cores
# (nproc), but one at a time when --ngpu > 0 (the GPUs are the limit). Each job gets
# APM_CORES = cores / jobs at once (its torch threads, apm.utils.dist.init_distributed), so
# the jobs together use every core once. Every job keeps its own log
# ($exp/log/stage<N>.<name>.log) and record; its console lines carry a "[<name>]" prefix when
# several run at once. A failed job does not stop the others: recipe_jobs_wait names every
# failed one with its log, then exits 1 (a rerun skips the finished ones).
recipe_jobs_start() {
  local count=$1 cores
  cores=$(nproc)
  _recipe_jobs_max=${jobs:-auto}
  if [ "$_recipe_jobs_max" = auto ]; then
    if [ "${cmd_backend:-local}" != local ]; then _recipe_jobs_max=$count  # the scheduler places them
    elif [ "${ngpu:-0}" -gt 0 ]; then _recipe_jobs_max=1; else _recipe_jobs_max=$cores; fi
  fi
  [ "$count" -lt "$_recipe_jobs_max" ] && _recipe_jobs_max=$count
  [ "$_recipe_jobs_max" -lt 1 ] && _recipe_jobs_max=1
  _recipe_jobs_cores=$((cores / _recipe_jobs_max > 0 ? cores / _recipe_jobs_max : 1))
  _recipe_job_pids=() _recipe_job_names=()
}

recipe_job() {  # recipe_job <stage> <name> <command...>: run_stage in the background
  local n=$1 name=$2
  while [ "$(jobs -rp | wc -l)" -ge "$_recipe_jobs_max" ]; do
    wait -n || true  # statuses are read per job in recipe_jobs_wait
  done
  if [ "$_recipe_jobs_max" -eq 1 ]; then
    run_stage "$@"  # one at a time: in the foreground, as run_stage alone
    return
  fi
  (export APM_CORES=$_recipe_jobs_cores; run_stage "$@" 2>&1 | sed -u "s/^/[$name] /") &
  _recipe_job_pids+=($!) _recipe_job_names+=("$n $name")
}

recipe_jobs_wait() {
  local i failed=()
  for i in "${!_recipe_job_pids[@]}"; do
    wait "${_recipe_job_pids[$i]}" || failed+=("${_recipe_job_names[$i]}")
  done
  if [ ${#failed[@]} -gt 0 ]; then
    {
      echo
      echo "ERROR: stage $1: ${#failed[@]} of ${#_recipe_job_pids[@]} runs failed:"
      local job
      for job in "${failed[@]}"; do
        echo "  ${job#* } (log: $exp/log/stage${job%% *}.${job#* }.log)"
      done
      echo "  Fix the cause and rerun with --stage $1: finished work is kept."
    } >&2
    exit 1
  fi
}

# recipe_cuda_job <log> <command...>: the command as one job of cmd.sh's $cuda_cmd (local by
# default), with --gpu $ngpu when --ngpu > 0; on Slurm the training step then starts
# `srun torchrun` across the allocation (docs/cluster.md). run_stage records this function's
# name, not the dispatcher's: moving the jobs to a cluster does not redo finished stages.
recipe_cuda_job() {
  local gpus=()
  [ "${ngpu:-0}" -gt 0 ] && gpus=(--gpu "$ngpu")
  ${cuda_cmd:-dispatch.sh local} ${gpus[@]+"${gpus[@]}"} "$@"
}

# The path to use for a path given on the command line: under the recipe directory relative
# to it (files written there stay valid when it moves), elsewhere absolute.
recipe_caller_path() {
  local p=$1
  [[ $p = /* ]] || p=$user_dir/$p
  realpath -m -s --relative-base="$recipe_dir" -- "$p"
}

# For each variable named: when its option was given (and is not empty), rewrite its value
# with recipe_caller_path.
recipe_caller_paths() {
  local opt
  for opt in "$@"; do
    if [[ $given_options = *" ${opt//_/-} "* ]] && [ -n "${!opt}" ]; then
      printf -v "$opt" '%s' "$(recipe_caller_path "${!opt}")"
    fi
  done
}

# Stages 1-7 on the Kaldi data dirs that stage 0 wrote to $data/<set>. Reads: data exp nj
# extract_nj (optional) seed skip_bad speed_perturb fbank_conf align_conf ali_from ali_dir systems system_conf_dir
# resume ngpu jobs backend_conf results command_line dev_sets train_set kaldi_copy fuse, sets (every set: imported,
# given features, embedded), scored_sets (the sets with trials: scored and reported);
# optional: backend_train_set (a set training the back-end, among $sets), oracle_dir,
# data_card (a markdown description of the training corpus for MODEL.md).
recipe_stages_1_to_7() {
  local set system
  local watch_sets=()  # stage 1 reads data/<set>: a hand-edited data dir reruns it
  for set in $sets; do watch_sets+=(--watch "$data/$set"); done
  # Stages 1-3 and 5 split their work into jobs through cmd.sh's $train_cmd / $decode_cmd,
  # logging to $exp/log/<stage>/<name>.JOB.log; stage 4 trains through $cuda_cmd.
  run_stage 1 manifests "${watch_sets[@]}" steps/make_manifests.sh ${nj:+--nj "$nj"} --log-dir "$exp/log/1" --skip-bad "$skip_bad" \
    --speed-perturb "$speed_perturb" --perturb-sets "$train_set" "$data" "$data/manifests" $sets

  run_stage 2 fbank steps/make_fbank.sh ${nj:+--nj "$nj"} --log-dir "$exp/log/2" --config "$fbank_conf" --skip-bad "$skip_bad" \
    --kaldi-copy "${kaldi_copy:-false}" "$data/manifests" "$data/fbank" $sets

  local watch_ali=()  # Kaldi alignments are user input: a changed one reruns stage 3
  [[ $ali_from = kaldi:* ]] && watch_ali=(--watch "${ali_from#kaldi:}")
  run_stage 3 align ${watch_ali[@]+"${watch_ali[@]}"} steps/align_phones.sh ${nj:+--nj "$nj"} --log-dir "$exp/log/3" --config "$align_conf" \
    --ali-from "$ali_from" --skip-bad "$skip_bad" ${oracle_dir:+--oracle-dir "$oracle_dir"} \
    "$data/fbank/$train_set" "$ali_dir"

  recipe_jobs_start "$(echo $systems | wc -w)"  # the systems train at once, --jobs at a time
  for system in $systems; do
    recipe_job 4 "train_$system" recipe_cuda_job "$exp/log/4/train_$system.log" steps/train_xvector.sh --config "$system_conf_dir/$system.yaml" --seed "$seed" \
      --ngpu "$ngpu" --resume "$resume" --skip-unaligned "$skip_bad" --ali-dir "$ali_dir" "$data/fbank/$train_set" "$exp/$system"
  done
  recipe_jobs_wait 4

  local pairs
  recipe_jobs_start "$(echo $systems | wc -w)"
  for system in $systems; do
    pairs=()  # one process per system embeds every set
    for set in $sets; do pairs+=("$data/fbank/$set" "$exp/$system/xvectors/$set"); done
    recipe_job 5 "extract_$system" steps/extract_xvectors.sh --ngpu "$ngpu" --log-dir "$exp/log/5/$system" \
      ${extract_nj:+--nj "$extract_nj"} "$exp/$system" "${pairs[@]}"
  done
  recipe_jobs_wait 5

  for system in $systems; do
    run_stage 6 "score_$system" steps/score.sh --config "$backend_conf" --data "$data" --skip-bad "$skip_bad" \
      --train-set "$train_set" ${backend_train_set:+--backend-train-set "$backend_train_set"} \
      --dev-sets "$dev_sets" "$exp/$system" $scored_sets
  done

  local reported=$systems  # fusion (stage 7, before the report): 2+ systems and dev sets
  if [ "${fuse:-true}" = true ] && [ "$(echo $systems | wc -w)" -ge 2 ] && [ -n "$dev_sets" ]; then
    run_stage 7 fuse steps/fuse.sh --data "$data" --dev-sets "$dev_sets" --tasks "$scored_sets" \
      --skip-bad "$skip_bad" "$exp" $systems
    reported="$systems fusion"
  fi
  run_stage 7 report steps/report.sh --data "$data" --test-sets "$scored_sets" --command-line "$command_line" \
    --skip-bad "$skip_bad" --output "$results" "$exp" $reported

  for system in $systems; do  # after the report: MODEL.md carries the stage 7 results
    run_stage 7 "package_$system" steps/package_model.sh --fbank-conf "$fbank_conf" --data "$data" \
      ${data_card:+--data-card "$data_card"} --dev-sets "$dev_sets" "$exp/$system"
  done
}

# One recipe run at a time per output directory. `recipe_lock MODE DIR` takes a lock on
# DIR/.lock (flock on a file descriptor kept open for the rest of the run; the kernel releases
# it when the holder dies, kill -9 included): MODE exclusive for a directory the run writes,
# shared for one it only reads (several runs may read the same data/ while none writes it).
# A run that cannot get the lock stops at once and names the PID and command that hold it:
# each holder writes them to DIR/.lock.<pid>, removed when it exits (and, after a kill -9, by
# the next run), so DIR/.lock itself stays empty and a rerun leaves the same bytes.
# The descriptor is inherited by the stage commands: a lock stays held while any of them runs.
recipe_lock() {
  local mode=$1 dir=$2 lock fd flag=-x holders="" info pid
  [ "$mode" = shared ] && flag=-s
  mkdir -p "$dir"
  lock=$(realpath -m -- "$dir/.lock")
  case " ${_apm_locked:-} " in *" $lock "*) return 0 ;; esac  # the same directory given twice
  exec {fd}>>"$lock"
  if ! flock -n "$flag" "$fd"; then
    for info in "$lock".*; do
      pid=${info##*.}
      if [[ $pid =~ ^[0-9]+$ ]] && [ -d "/proc/$pid" ]; then
        holders+=$'\n'"    PID $pid: $(cat "$info" 2>/dev/null || true)"
      fi
    done
    {
      echo "$0: $dir is in use by another run of the recipe (lock $lock)${holders:+, held by:}${holders:- (holder unknown)}"
      echo "  Two runs writing the same directory mix their outputs. Wait until it finishes, or give"
      echo "  this run other directories (--exp DIR, --data DIR)."
    } >&2
    exit 1
  fi
  for info in "$lock".*; do  # holders killed with -9 left their note
    pid=${info##*.}
    if [[ $pid =~ ^[0-9]+$ ]] && ! [ -d "/proc/$pid" ]; then rm -f "$info"; fi
  done
  printf '%s\n' "$command_line" > "$lock.$$"
  _apm_locked="${_apm_locked:-} $lock"
  _apm_lock_notes="${_apm_lock_notes:-} $(printf '%q' "$lock.$$")"
  trap 'eval "rm -f $_apm_lock_notes"' EXIT
}

# The locks of a recipe run: $exp exclusive; $data exclusive when a stage that writes it
# (0-3) is run, shared otherwise (stages 4-7 only read it, so trainings of several systems
# into different --exp may share it). Then the stale temporaries of the directories it holds
# exclusively are removed.
recipe_lock_dirs() {
  recipe_lock exclusive "$exp"
  local written=("$exp")
  if [ "$stage" -le 3 ]; then
    recipe_lock exclusive "$data"; written+=("$data")
  else
    recipe_lock shared "$data"
  fi
  # What a killed run left half-written (atomic writers' .<name>.XXXXXXXX.tmp, stage records'
  # .tmp): safe to remove now that no other run writes these directories.
  rm -f "$exp"/.done/*.tmp
  python -c 'import sys
from apm.utils.io import remove_stale_temps
for d in sys.argv[1:]:
    if n := remove_stale_temps(d):
        print(f"{d}: removed {n} temporary file(s) left by a killed run")' "${written[@]}"
}
