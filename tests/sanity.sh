#!/usr/bin/env bash
# Run `ansible-test sanity` on the collection.
#
# ansible-test needs the collection at .../ansible_collections/virtops/migration, so the files git
# knows about (tracked, plus untracked ones that are not ignored) are copied into such a tree in a
# temporary directory, and the tests run there: local state (.venv, lab caches, build output) never
# reaches them.
#
# The tests run for one Python version (SANITY_PYTHON, default 3.11), each in a virtual environment
# that ansible-test creates and fills with that test's pinned requirements (--venv --requirements;
# PyPI must be reachable the first time, later runs reuse ~/.ansible/test/venv). Tests that need a
# tool this machine lacks (shellcheck, pwsh) are skipped and named; everything else must pass.
#
# ansible-test puts pip into each new virtual environment with a get-pip script it downloads from
# its own CI file server, which these machines cannot reach. When that script is not cached, a
# stand-in is cached instead: it installs pip from Python's bundled ensurepip and then the pinned
# pip version from the package index, which is what the real script does.
#
# Usage: tests/sanity.sh [extra ansible-test sanity arguments, e.g. --test validate-modules]
# Exits non-zero when any test fails.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${VENV:-$repo/.venv}
python_version=${SANITY_PYTHON:-3.11}
ansible_test=$venv/bin/ansible-test

if [ ! -x "$ansible_test" ]; then
  echo "sanity: $ansible_test not found (run 'make setup' first, or set VENV)" >&2
  exit 2
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/virtops-migration-sanity.XXXXXX")
trap 'rm -rf "$work"' EXIT
dest=$work/ansible_collections/virtops/migration
mkdir -p "$dest"

# Copy what git would commit, keeping symlinks as symlinks; files deleted from the work tree but
# still tracked are skipped.
copied=0
while IFS= read -r -d '' path; do
  if [ -e "$repo/$path" ] || [ -L "$repo/$path" ]; then
    mkdir -p "$dest/$(dirname "$path")"
    cp -P -p "$repo/$path" "$dest/$path"
    copied=$((copied + 1))
  fi
done < <(git -C "$repo" ls-files -z --cached --others --exclude-standard --deduplicate)
echo "sanity: copied $copied files into $dest"

# The pip version ansible-test bootstraps (and so the name of its cached get-pip script).
pip_version=$("$venv/bin/python" - "$python_version" <<'PY' 2>/dev/null || echo 24.2
import sys, types
from ansible_test._internal.python_requirements import get_venv_packages
print(get_venv_packages(types.SimpleNamespace(version=sys.argv[1]))["pip"])
PY
)
get_pip=$HOME/.ansible/test/cache/get_pip_${pip_version//./_}.py
shim_mark="# virtops.migration get-pip stand-in v3"
if [ ! -s "$get_pip" ] || { grep -q "virtops.migration" "$get_pip" && ! grep -qF "$shim_mark" "$get_pip"; }; then
  mkdir -p "$(dirname "$get_pip")"
  { echo "$shim_mark"; cat <<'PY'; } > "$get_pip"
# Stand-in for get-pip.py, cached by virtops.migration's tests/sanity.sh because ansible-test's
# download server is unreachable here. ansible-test runs it inside a virtual environment created
# without pip, with pip install arguments such as: pip==24.2 --no-setuptools --no-wheel
import subprocess
import sys

args = [arg for arg in sys.argv[1:] if arg not in ("--no-setuptools", "--no-wheel")]
# In a child process: ensurepip drops the pip configuration (index, certificates) of the process
# it runs in, and the install below needs that configuration.
subprocess.check_call([sys.executable, "-m", "ensurepip", "--default-pip"], stdout=subprocess.DEVNULL)
subprocess.check_call([sys.executable, "-m", "pip", "install", "--quiet", *args])
if "--no-setuptools" in sys.argv[1:]:
    subprocess.check_call([sys.executable, "-m", "pip", "uninstall", "--quiet", "--yes", "setuptools"])
PY
  echo "sanity: cached a stand-in for ansible-test's pip $pip_version bootstrap script at $get_pip"
fi

skip=()
if ! command -v shellcheck >/dev/null 2>&1; then
  skip+=(--skip-test shellcheck)
  echo "sanity: shellcheck is not installed here; skipping the shellcheck test"
fi
if ! command -v pwsh >/dev/null 2>&1; then
  skip+=(--skip-test pslint)
  echo "sanity: pwsh is not installed here; skipping the pslint test"
fi

cd "$dest"
start=$(date +%s)
status=0
"$ansible_test" sanity --venv --requirements --python "$python_version" --color no "${skip[@]}" "$@" || status=$?
echo "sanity: ansible-test sanity finished with exit code $status in $(($(date +%s) - start)) s"
exit "$status"
