#!/usr/bin/env bash
# Create or refresh the project's virtualenv (.venv at the repository root).
#
# Usage: utils/setup_env.sh [--force]
#   A no-op (well under a second) when .venv already matches requirements.txt and
#   pyproject.toml; otherwise installs the pinned requirements and `apm` in editable mode.
#
# Environment:
#   PYTHON      interpreter used to create .venv (default: python3; needs >= 3.10)
#   APM_TORCH   torch requirement to install instead of the pin in requirements.txt.
#               On Linux x86_64, PyPI's torch==2.13.0 is already a CUDA build; for another
#               CUDA version use the wheel index that pytorch.org lists for it, e.g.
#               APM_TORCH="torch==2.13.0" PIP_EXTRA_INDEX_URL=<index for your CUDA> utils/setup_env.sh --force
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=$root/.venv
stamp=$venv/.apm-setup-stamp
python=${PYTHON:-python3}

if [ "${1:-}" = "--help" ] || [ "${1:-}" = "-h" ]; then
  sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
  exit 0
fi

want=$(cat "$root/requirements.txt" "$root/pyproject.toml" <(echo "${APM_TORCH:-}") | sha256sum | cut -d' ' -f1)
if [ "${1:-}" != "--force" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$venv/bin/python" ]; then
  exit 0
fi

if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
  echo "setup_env.sh: ERROR: '$python' is missing or older than Python 3.10; set PYTHON=/path/to/python3.11" >&2
  exit 1
fi

echo "setup_env.sh: preparing $venv (first run takes about a minute)" >&2
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
reqs=$root/requirements.txt
if [ -n "${APM_TORCH:-}" ]; then
  reqs=$(mktemp)
  grep -v '^torch==' "$root/requirements.txt" > "$reqs"
  "${pip[@]}" install "$APM_TORCH"
fi
"${pip[@]}" install -r "$reqs"
"${pip[@]}" install --no-deps -e "$root"
"$venv/bin/python" -c 'import apm, torch, lhotse, kaldiio' || {
  echo "setup_env.sh: ERROR: packages installed but 'import apm, torch, lhotse, kaldiio' fails (see above)" >&2
  exit 1
}
echo "$want" > "$stamp"
echo "setup_env.sh: done ($("$venv/bin/python" -c 'import torch; print("torch", torch.__version__, "cuda" if torch.cuda.is_available() else "cpu")'))" >&2
