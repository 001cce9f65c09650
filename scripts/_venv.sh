# Sourced by scripts/demo and scripts/test: make sure a virtual environment with
# imgmatch installed from this checkout is active. An already active virtual
# environment is used as it is; otherwise .venv is created on first use.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${VIRTUAL_ENV:-}" ]; then
  if [ ! -x "$ROOT/.venv/bin/python" ]; then
    PY="${PYTHON:-python3}"
    "$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "imgmatch needs Python 3.10 or newer")'
    "$PY" -m venv "$ROOT/.venv"
  fi
  # shellcheck disable=SC1091
  source "$ROOT/.venv/bin/activate"
fi
STAMP="$VIRTUAL_ENV/.imgmatch-installed"
if [ ! -f "$STAMP" ] || [ "$ROOT/pyproject.toml" -nt "$STAMP" ]; then
  python -m pip install --quiet --upgrade pip >/dev/null
  python -m pip install --quiet -e "$ROOT[${IMGMATCH_EXTRAS:-test}]"
  touch "$STAMP"
fi
