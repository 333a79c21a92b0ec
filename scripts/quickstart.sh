#!/usr/bin/env bash
# Set up (scripts/setup.sh), then run the quickstart: fine-tune the shipped MiniLM as a YouTube-spam classifier,
# evaluate on the real test split, log to W&B offline. Extra arguments go to `lightning-ws fit`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/lightning-ws fit -c configs/quickstart.yaml "$@"
