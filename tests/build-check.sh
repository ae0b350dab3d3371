#!/usr/bin/env bash
# Build the collection tarball, install it into a scratch path, and check that ansible-doc renders
# every module, filter and role from the installed copy, with no warning or error.
set -euo pipefail
cd "$(dirname "$0")/.."
out=tests/output/build
rm -rf "$out" && mkdir -p "$out"
ansible-galaxy collection build --force --output-path "$out" . >/dev/null
tarball=$(ls "$out"/virtops-migration-*.tar.gz)
ansible-galaxy collection install --offline --force -p "$out/collections" "$tarball" >/dev/null 2>&1
export ANSIBLE_COLLECTIONS_PATH="$PWD/$out/collections"

check() {  # check TYPE NAME
  local errors
  errors=$(ansible-doc -t "$1" "virtops.migration.$2" 2>&1 >/dev/null || echo "ansible-doc exited non-zero")
  if [ -n "$errors" ]; then
    echo "build: ansible-doc -t $1 virtops.migration.$2 failed: $errors" >&2
    exit 1
  fi
  echo "build: ansible-doc -t $1 virtops.migration.$2: ok"
}
for path in plugins/modules/*.py; do check module "$(basename "$path" .py)"; done
for path in plugins/filter/*.py; do check filter "$(basename "$path" .py)"; done
for path in roles/*/; do check role "$(basename "$path")"; done
echo "build: $(basename "$tarball") builds, installs, and documents every plugin and role"
