#!/usr/bin/env bash
# Prepare this machine (Debian 12, as root) for the demo and the tests: Debian packages for the
# lab's hypervisor hosts, and a virtual environment with the pinned controller tooling.
# Safe to run again: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

DEBIAN_PACKAGES=(
  # the lab's hypervisor hosts
  libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86 qemu-utils
  openssh-server openssh-client iproute2 util-linux procps openssl
  # SASL (SCRAM-SHA-256) authentication of the lab hosts' libvirtd
  sasl2-bin libsasl2-modules
  # the lab's guest image (kernel and agent are fetched by `virtlab image` with apt-get download;
  # the guest's workload is compiled with gcc, below, and linked statically)
  busybox-static libc6-dev
  # what the collection's modules need on a hypervisor host
  python3 python3-libvirt
  # building libvirt-python into the controller's virtual environment
  python3-venv python3-dev libvirt-dev pkg-config gcc make git
  # ansible-test sanity: its shellcheck test
  shellcheck
)

if [ "$(id -u)" != 0 ]; then
  echo "setup: run as root (it installs Debian packages and the lab needs namespaces)" >&2
  exit 1
fi

missing=()
for pkg in "${DEBIAN_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.requirements-dev.sha256
want=$(sha256sum requirements-dev.txt | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing pinned Python packages into .venv"
  .venv/bin/pip install -q --disable-pip-version-check --upgrade pip
  .venv/bin/pip install -q --disable-pip-version-check -r requirements-dev.txt
  echo "$want" > "$stamp"
fi

# The collection is used in place: .venv/collections/ansible_collections/virtops/migration points here.
mkdir -p .venv/collections/ansible_collections/virtops
ln -sfn "$PWD" .venv/collections/ansible_collections/virtops/migration
echo "setup: ready ($(.venv/bin/ansible --version | sed -n 1p))"
