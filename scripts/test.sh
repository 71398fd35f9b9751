#!/usr/bin/env bash
# Second README command: install what the tests need, lint (Biome: format and lint errors fail), then run the whole suite (vitest).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh --test
npm run --silent lint
npx vitest run "$@"
