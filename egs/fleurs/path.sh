# Recipe-local path.sh, as in Kaldi: defers to the repository one.
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/../../path.sh"
