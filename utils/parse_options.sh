#!/usr/bin/env bash
# Kaldi-style option parsing, sourced by a script after it has set its option variables:
#
#   stage=0          # first stage to run
#   nj=2             # parallel jobs
#   . utils/parse_options.sh
#
# `--some-option value` and `--some-option=value` set $some_option; an option with no
# variable of that name is an error that lists the valid ones; `--help` prints $help_message,
# then every option with its default and the comment on its line. Positional arguments are
# left in "$@". Unlike Kaldi, `--config` is an ordinary option here (our step scripts use it
# for a YAML file), not a file of shell assignments.

# The calling script (a caller that cd's before sourcing this sets _apm_opts_script first).
_apm_opts_script=${_apm_opts_script:-${BASH_SOURCE[1]:-$0}}

# The options are the `name=value` lines of the calling script above this file's `.` line.
_apm_list_options() {
  awk '/parse_options\.sh/ {exit}
       /^[a-z_][a-z0-9_]*=/ && !/^help_message=/ {
         name = $0; sub(/=.*/, "", name); gsub(/_/, "-", name)
         val = $0; sub(/^[^=]*=/, "", val)
         com = ""
         if (match(val, /[ \t]+#[ \t]*/)) { com = substr(val, RSTART + RLENGTH); val = substr(val, 1, RSTART - 1) }
         printf "  --%-22s %-28s %s\n", name, "(default: " val ")", com
       }' "$_apm_opts_script"
}

while true; do
  [ $# -eq 0 ] && break
  case "$1" in
    --help|-h)
      [ -n "${help_message:-}" ] && printf '%s\n\n' "$help_message"
      echo "Options:"
      _apm_list_options
      exit 0 ;;
    --*=*)
      _apm_name=${1%%=*}; _apm_value=${1#*=}; shift
      set -- "$_apm_name" "$_apm_value" "$@" ;;
    --*)
      _apm_name=$(echo "${1#--}" | tr '-' '_')
      if ! [[ $_apm_name =~ ^[a-z_][a-z0-9_]*$ ]] || eval '[ -z "${'"$_apm_name"'+set}" ]'; then
        echo "$0: unknown option '$1'. Valid options are:" >&2
        _apm_list_options >&2
        exit 1
      fi
      if [ $# -lt 2 ]; then
        echo "$0: option '$1' needs a value" >&2; exit 1
      fi
      eval "_apm_old=\$$_apm_name"
      # Booleans stay booleans, as in Kaldi.
      if [ "$_apm_old" = true ] || [ "$_apm_old" = false ]; then
        if [ "$2" != true ] && [ "$2" != false ]; then
          echo "$0: option '$1' takes true or false, not '$2'" >&2; exit 1
        fi
      fi
      printf -v "$_apm_name" '%s' "$2"
      shift 2 ;;
    *) break ;;
  esac
done
unset _apm_name _apm_value _apm_old
true
