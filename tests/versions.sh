#!/usr/bin/env bash
# Run the unit tests (and, where SANITY_RELEASES says so, ansible-test sanity) under every maintained
# ansible-core release other than the main one (2.19, in .venv from requirements-dev.txt, which the
# other stages use).
#
# Each release gets a virtual environment of its own, .venv-core-X.Y, made with pyenv's newest
# Python of the minor version named below and filled from requirements-core-X.Y.txt. It is made
# again from scratch whenever that file or that Python changes, so it never holds anything the file
# does not pin. The collection is used in place, as in .venv:
# .venv-core-X.Y/collections/ansible_collections/virtops/migration points here. A Python that pyenv
# does not have is an error, never a reason to skip a release.
#
# Every release runs both stages even when an earlier one failed; one line per release then gives
# each stage's result and time.
#
# Usage: tests/versions.sh [X.Y ...]   (default: every release below)
# Exits non-zero when an environment cannot be made or any test fails.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

# ansible-core release -> the Python minor version it runs under (2.20 and later need 3.12 or newer;
# two different ones, so that both are covered).
declare -A PYTHON_FOR=([2.20]=3.12 [2.21]=3.13)
# The releases whose sanity tests run here too: the newest. Sanity runs on the oldest (2.19, `make
# sanity`) and the newest maintained release; 2.20's sanity is left out to keep `make test` within
# its budget on a 2-core machine (tests/README.md), because its rules lie between those two releases'.
# The unit tests run on every release.
SANITY_RELEASES=" 2.21 "
releases=("$@")
[ "${#releases[@]}" -gt 0 ] || releases=(2.20 2.21)
pyenv_versions=${PYENV_ROOT:-$HOME/.pyenv}/versions

# The newest pyenv Python of minor version $1 (3.12.1, not 3.12.1t or 3.12-dev), or nothing.
pyenv_python() {
  local dir
  dir=$(find "$pyenv_versions" -mindepth 1 -maxdepth 1 -regex ".*/${1//./\\.}\.[0-9]+" 2>/dev/null | sort -V | tail -n1)
  if [ -n "$dir" ] && [ -x "$dir/bin/python$1" ]; then
    echo "$dir/bin/python$1"
  fi
}

# Check every release before spending time on any: an unknown release or a missing Python fails now.
declare -A python_bin
for release in "${releases[@]}"; do
  minor=${PYTHON_FOR[$release]:-}
  if [ -z "$minor" ]; then
    echo "versions: no Python is set for ansible-core $release (known: ${!PYTHON_FOR[*]})" >&2
    exit 2
  fi
  python_bin[$release]=$(pyenv_python "$minor")
  if [ -z "${python_bin[$release]}" ]; then
    echo "versions: ansible-core $release runs under Python $minor, which pyenv does not have" \
      "($pyenv_versions/$minor.*/bin/python$minor); install it with 'pyenv install $minor'" >&2
    exit 2
  fi
done

# Make .venv-core-$1 with Python $2 from requirements-core-$1.txt, unless it is up to date.
prepare_venv() {
  local release=$1 python=$2 venv=.venv-core-$1 requirements=requirements-core-$1.txt
  local stamp=$venv/.requirements.stamp want
  want="$(sha256sum "$requirements" | cut -d' ' -f1) $python $("$python" -c 'import platform; print(platform.python_version())')"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "versions: creating $venv with $("$python" --version) from $requirements"
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check --upgrade pip
    "$venv/bin/pip" install -q --disable-pip-version-check -r "$requirements"
    echo "$want" > "$stamp"
  fi
  mkdir -p "$venv/collections/ansible_collections/virtops"
  ln -sfn "$repo" "$venv/collections/ansible_collections/virtops/migration"
}

# One release: its sanity and unit tests, then one summary line (the last line of its output).
run_release() {
  local release=$1 venv core python_version start sanity unit sanity_s unit_s
  local -a run
  venv=$repo/.venv-core-$release
  core=$("$venv/bin/python" -c 'from ansible import release; print(release.__version__)')
  python_version=$("$venv/bin/python" -c 'import platform; print(platform.python_version())')
  # This environment's tools and collections, not those of .venv that `make` puts first.
  run=(env PATH="$venv/bin:$PATH" ANSIBLE_COLLECTIONS_PATH="$venv/collections" PYTHONDONTWRITEBYTECODE=1)

  start=$(date +%s)
  if [[ "$SANITY_RELEASES" == *" $release "* ]]; then
    echo "== ansible-core $core (Python $python_version): ansible-test sanity"
    sanity=passed
    "${run[@]}" VENV="$venv" SANITY_PYTHON="${PYTHON_FOR[$release]}" bash tests/sanity.sh || sanity=FAILED
  else
    sanity="not run (sanity runs on 2.19 and${SANITY_RELEASES% })"
  fi
  sanity_s=$(($(date +%s) - start))

  echo "== ansible-core $core (Python $python_version): unit tests"
  start=$(date +%s)
  unit=passed
  "${run[@]}" PYTHONPATH="$venv/collections" "$venv/bin/python" -m pytest -p no:cacheprovider tests/unit -q || unit=FAILED
  unit_s=$(($(date +%s) - start))

  echo "versions: ansible-core $core (Python $python_version): sanity $sanity in $sanity_s s, unit $unit in $unit_s s"
  [ "$sanity" != FAILED ] && [ "$unit" = passed ]
}

# The environments are made one after the other (pip), then the releases run side by side, each
# into a log of its own that is shown once it has ended: the machine's CPUs are then busy to the end
# instead of one release waiting for the other.
for release in "${releases[@]}"; do
  prepare_venv "$release" "${python_bin[$release]}"
done
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
declare -A pid_of
for release in "${releases[@]}"; do
  run_release "$release" > "$logs/$release.log" 2>&1 &
  pid_of[$release]=$!
done
failed=0
summary=()
for release in "${releases[@]}"; do
  wait "${pid_of[$release]}" || failed=1
  cat "$logs/$release.log"
  summary+=("$(tail -n1 "$logs/$release.log")")
done

printf '%s\n' "${summary[@]}"
exit "$failed"
