#!/usr/bin/env bash
# Run the whole test suite (slow end-to-end tests included) in the project venv.
# pytest exit code 5 ("no tests collected") is not a failure of the project.
set -uo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
"$VENV/bin/python" -m pytest -ra "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
    echo "pytest collected no tests (exit 5): treated as success"
    rc=0
fi
exit "$rc"
