#!/usr/bin/env bash
# The backend and runner tests, and the conformance matrix of every model family, again on the
# two ends of the transformers range: the lowest
# release pyproject.toml admits and the newest the package index serves. Each runs in a copy of
# the locked virtual environment (hard links: seconds, little disk) in which only transformers,
# and what it needs, changes: what a user gets from `pip install --upgrade transformers`.
#
# There, transformers' plain path must pass every test (fast paths off) and `audit demo` must
# complete. Fast paths are reported, not required: a run turns off any that disagrees with the
# plain path, with one warning line each (docs/compatibility.md).
#
# Usage: bash tests/transformers_range.sh [LOCKED_VENV]   (make test runs it)
set -euo pipefail
cd "$(dirname "$0")/.."
locked=${1:-.venv}
lowest=$(sed -n 's/^ *"transformers>=\([0-9][0-9.]*\)".*/\1/p' pyproject.toml)
[ -n "$lowest" ] || { echo "pyproject.toml: no 'transformers>=X' dependency" >&2; exit 2; }
tests=(
  tests/test_backends.py tests/test_backends_decoding.py tests/test_backends_loading.py
  tests/test_backends_oom.py tests/test_backends_shared_run.py tests/test_runner.py
  tests/test_fast_paths.py tests/test_tiny_models.py tests/test_model_matrix.py
)
locked_version=$("$locked/bin/python" -c 'import transformers; print(transformers.__version__)')
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

for end in lowest newest; do
  venv=.venv-transformers-$end
  rm -rf "$venv"
  cp -al "$locked" "$venv"
  py=$venv/bin/python
  if [ "$end" = lowest ]; then
    "$py" -m pip install --quiet "transformers==$lowest"
  else
    "$py" -m pip install --quiet --upgrade transformers
  fi
  version=$("$py" -c 'import transformers; print(transformers.__version__)')
  echo "== transformers $version (the $end release of the tested range)"

  echo "-- transformers' plain path: must pass"
  # "slow": the matrix's end-to-end runs (resume, analyze), which test the store, not the release.
  AUDIT_FAST_PATHS=off "$py" -m pytest -q -p no:cacheprovider -m "not fast_path and not slow" \
    "${tests[@]}"

  echo "-- fast paths against the plain path: reported (a run turns off any that disagrees)"
  if [ "$version" = "$locked_version" ]; then
    echo "the locked release: the main suite (make test) runs these fast-path tests on it"
  elif "$py" -m pytest -q -p no:cacheprovider -m "fast_path and not slow" "${tests[@]}" \
      > "$work/fast-$end.log" 2>&1; then
    tail -n 1 "$work/fast-$end.log"
    echo "every fast path agrees with the plain path on transformers $version"
  else
    cat "$work/fast-$end.log"
    # What a run printed when its self-check turned a fast path off: the path, the release
    # and the first difference. Other failures are listed as pytest gives them.
    turned_off=$(grep -oE "fast path '[a-z_]+' is off for this run: [^;]*" "$work/fast-$end.log" \
      | sort -u || true)
    echo "REPORT: fast-path tests failed on transformers $version; runs turn off each fast path" \
      "that disagrees with the plain path (one warning line), until it is fixed:"
    if [ -n "$turned_off" ]; then echo "$turned_off" | sed 's/^/  /'; fi
    grep -E "^(FAILED|ERROR) " "$work/fast-$end.log" | sed 's/^/  /' || true
  fi

  echo "-- audit demo: must complete (a fast path turned off prints one warning line)"
  "$py" -m audit.cli demo --out "$work/demo-$end" > "$work/demo-$end.log" 2>&1 \
    || { cat "$work/demo-$end.log"; exit 1; }
  grep -E '^(warning|error):' "$work/demo-$end.log" || echo "no warnings: every fast path verified"
  rm -rf "$venv"
done
