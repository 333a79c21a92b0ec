#!/usr/bin/env bash
# Create .venv (if needed) and install lightning_ws with its dependencies. Idempotent: re-running after a change of
# pyproject.toml reinstalls, otherwise it returns at once. Needs only Python >= 3.10 and the package index.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
"$PYTHON" - <<'PY'
import sys
if sys.version_info < (3, 10):
    sys.exit(f"lightning_ws needs Python >= 3.10, found {sys.version.split()[0]}; set PYTHON=/path/to/python3.x")
PY
if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating virtual environment $VENV"
    "$PYTHON" -m venv "$VENV"
fi
STAMP="$VENV/.lightning-ws-installed"
WANT="$(cat pyproject.toml scripts/setup.sh | "$VENV/bin/python" -c 'import hashlib,sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())')"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && "$VENV/bin/python" -c "import lightning_ws, torch, torchvision" 2>/dev/null; then
    echo "[setup] $VENV is up to date"
    exit 0
fi
echo "[setup] installing dependencies into $VENV (first time: a few minutes)"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
# torch and torchvision must be an exactly matching pair (a mismatched torchvision fails to import).
"$VENV/bin/python" -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
"$VENV/bin/python" -m pip install --quiet -e ".[dev]"
"$VENV/bin/python" -c "import lightning_ws, torch, torchvision, lightning, transformers, peft, open_clip, wandb; print('[setup] ok: torch', torch.__version__, '| lightning', lightning.__version__)"
echo "$WANT" > "$STAMP"
