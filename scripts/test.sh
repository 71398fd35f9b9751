#!/usr/bin/env bash
# Second README command: install what the tests need, then run the whole suite (vitest).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh --test
npx vitest run "$@"
