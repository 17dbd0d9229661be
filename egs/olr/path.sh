# Recipe-local path.sh, as in Kaldi: defers to the repository one, then puts the recipe's own
# Python code (local/: mini_olr, the recipe's sets and test conditions) on PYTHONPATH.
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/../../path.sh"
export PYTHONPATH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)/local:$PYTHONPATH"
