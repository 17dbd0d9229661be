#!/usr/bin/env bash
# Entry point: sets up the environment (first run only), then runs a recipe.
#   ./run.sh [--recipe olr] [recipe options...]     (./run.sh --help for the recipe's options)
# The recipe runs with the caller's directory unchanged: relative paths among the options are
# relative to it (the recipe resolves them before it enters its own directory).
set -euo pipefail
root=$(cd "$(dirname "$0")" && pwd)
recipe=olr
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --recipe) recipe=${2:?--recipe needs a name}; shift 2 ;;
    --recipe=*) recipe=${1#*=}; shift ;;
    *) args+=("$1"); shift ;;
  esac
done
if [ ! -x "$root/egs/$recipe/run.sh" ]; then
  echo "run.sh: no recipe '$recipe'; available: $(ls "$root/egs" | tr '\n' ' ')" >&2
  exit 1
fi
"$root/utils/setup_env.sh"
exec "$root/egs/$recipe/run.sh" ${args[@]+"${args[@]}"}
