#!/usr/bin/env bash
# The test suite, as the README gives it: every test, browser and end-to-end ones included.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python -m pytest -q -p no:cacheprovider "$@"
