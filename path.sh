# Sourced by every recipe and step script: puts the repository on PYTHONPATH and
# activates the project's virtualenv (created by utils/setup_env.sh).
APM_ROOT=$(cd -P "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
export APM_ROOT
if [ ! -x "$APM_ROOT/.venv/bin/python" ]; then
  echo "path.sh: $APM_ROOT/.venv is missing; run $APM_ROOT/utils/setup_env.sh first" >&2
  return 1 2>/dev/null || exit 1
fi
export PATH="$APM_ROOT/.venv/bin:$APM_ROOT/utils:$PATH"
export PYTHONPATH="$APM_ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
