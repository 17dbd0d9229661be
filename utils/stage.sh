#!/usr/bin/env bash
# Stage runner, sourced by recipes after parse_options.sh. Needs $stage, $stop_stage, $force
# and $exp (logs go to $exp/log, completion records to $exp/.done).
#
#   run_stage 2 fbank steps/make_fbank.sh --nj 2 data/manifests data/fbank train
#   run_stage 0 import_olr --watch /data/olr steps/import_data_dirs.sh /data/olr data train test
#
# runs the command when 2 is within [stage, stop_stage], logs it to $exp/log/stage2.fbank.log
# and the console, and records completion together with the command line and the content of
# the config files (*.yaml, *.conf, ...) it names: a rerun with the same command and configs
# skips it (unless --force true); a finished run invalidates the records of all later stages,
# since their inputs changed. On failure it prints the stage, the log path
# and the last lines of the log, and exits.
#
# `--watch PATH` (repeatable, between the name and the command, not passed to it) adds the
# inputs the stage reads to the record: the size and modification time of PATH, or of every
# file under it (recursively, following symlinks) when it is a directory. Editing, adding or
# removing a watched file reruns the stage (what find cannot read, e.g. a symlink loop, is
# warned about and left out). Watch inputs that are not outputs of earlier stages
# (those already invalidate later records), e.g. a corpus given by the user.
#
# This is the shell front of the project's one "already done" mechanism (apm/utils/done.py):
# a record file holds the signature of a step's inputs, written atomically after success and
# compared on the next run. Stages inside (features, extraction, training) keep their own
# records with the same Python utility, so a stage rerun by this runner still skips the sets
# that are up to date.
#
# The previous attempts' logs are kept: stage2.fbank.log.1 (the last) ... .log.3.

run_stage() {
  local n=$1 name=$2
  shift 2
  local watch=()
  while [ "${1:-}" = --watch ]; do
    [ $# -ge 2 ] || { echo "run_stage $n $name: --watch needs a path" >&2; exit 1; }
    watch+=("$2")
    shift 2
  done
  if [ "$n" -lt "$stage" ] || [ "$n" -gt "$stop_stage" ]; then
    return 0
  fi
  local log_dir=$exp/log done_dir=$exp/.done
  local log=$log_dir/stage$n.$name.log marker=$done_dir/stage$n.$name
  local signature
  signature=$(printf '%q ' "$@")
  local path
  for path in ${watch[@]+"${watch[@]}"}; do
    if [ -e "$path" ]; then
      # find fails on a symlink loop or an unreadable directory: warn, and keep what it listed.
      signature+=" watch:$path=$({ find -L "$path" -type f -printf '%P %s %T@\n' 2>/dev/null || {
        echo "run_stage $n $name: warning: --watch $path: some of it cannot be read (a symlink" \
          "loop or an unreadable directory); changes there go unnoticed" >&2
        echo unreadable
      }; } | LC_ALL=C sort | sha256sum | cut -c1-16)"
    else
      signature+=" watch:$path=missing"
    fi
  done
  # Config files named on the command line count by content: an edited conf/*.yaml reruns the
  # stage. (Only configs: other named files may be the stage's own outputs.)
  local arg
  for arg in "$@"; do
    case "$arg" in
      *.yaml|*.yml|*.conf|*.cfg) [ -f "$arg" ] && signature+=" $arg=$(sha256sum < "$arg" | cut -c1-16)" ;;
    esac
  done
  mkdir -p "$log_dir" "$done_dir"
  if [ "${force:-false}" != true ] && [ -f "$marker" ] && [ "$(cat "$marker")" = "$signature" ]; then
    echo "$(date '+%F %T') stage $n ($name): done before, skipping (--force true redoes it)"
    return 0
  fi
  rm -f "$marker"
  echo "$(date '+%F %T') stage $n ($name): $*"
  local i
  for i in 2 1 ""; do  # keep the last 3 attempts' logs: .log.1 (newest) .. .log.3
    if [ -f "$log${i:+.$i}" ]; then mv -f "$log${i:+.$i}" "$log.$((${i:-0} + 1))"; fi
  done
  echo "# $(date '+%F %T') $*" > "$log"
  local start=$SECONDS
  if ! "$@" 2>&1 | tee -a "$log"; then
    {
      echo
      echo "ERROR: stage $n ($name) failed after $((SECONDS - start)) s."
      echo "  log: $log"
      echo "  last lines:"
      grep -v '^\s*$' "$log" | tail -n 15 | sed 's/^/    /'
      echo "  Fix the cause and rerun with --stage $n: finished work is kept."
    } >&2
    exit 1
  fi
  local later
  for later in "$done_dir"/stage*; do
    [ -e "$later" ] || continue
    local k=${later##*/stage}; k=${k%%.*}
    [ "$k" -gt "$n" ] && rm -f "$later"
  done
  echo "$signature" > "$marker.tmp" && mv "$marker.tmp" "$marker"
  echo "$(date '+%F %T') stage $n ($name): finished in $((SECONDS - start)) s (log: $log)"
}
