#!/usr/bin/env bash
# Create .venv when missing and install pdefm into it; a no-op when nothing changed.
# torch goes in first: an existing torch in the venv is kept; otherwise TORCH_SPEC is installed
# (default torch==2.13.0, the CPU wheel; on a GPU cluster set e.g. TORCH_SPEC="torch --index-url ...").
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${PDEFM_VENV:-.venv}
PY=${PYTHON:-python3}
EXTRAS=${1:-dev}

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@"; }

if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    echo "[bootstrap] installing ${TORCH_SPEC:-torch==2.13.0}"
    # shellcheck disable=SC2086
    pip install ${TORCH_SPEC:-torch==2.13.0}
fi

stamp="$VENV/.pdefm-installed-$EXTRAS"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "[bootstrap] installing pdefm[$EXTRAS] (editable)"
    pip install -e ".[$EXTRAS]"
    touch "$stamp"
fi
