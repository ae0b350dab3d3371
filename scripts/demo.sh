#!/usr/bin/env bash
# The demo: a 3-host lab cluster of real libvirt hosts with VMs of mixed priority and size,
# then the collection at work on it through ansible-playbook over SSH.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
export ANSIBLE_COLLECTIONS_PATH="$PWD/.venv/collections"
export ANSIBLE_HOST_KEY_CHECKING=False

out=tests/output/demo
mkdir -p "$out"
inventory="$out/inventory.yml"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "Bringing up the lab: hosts lab-h1..lab-h3, six VMs on lab-h1"
tests/lab/virtlab up --hosts 3 --inventory "$inventory" \
  --vm web1:256:high --vm web2:192:high --vm db1:320:medium \
  --vm app1:192:medium --vm batch1:160:low --vm batch2:160:low \
  --vm cache1:192@2 --vm mon1:160:low@3
tests/lab/virtlab status

step "Facts of every host of the cluster (virtops.migration.host_info over SSH)"
ansible-playbook -i "$inventory" playbooks/cluster_report.yml -e cluster=lab

step "Plan: put lab-h1 into maintenance (check mode: nothing moves)"
ansible-playbook -i "$inventory" playbooks/maintenance.yml -e target=lab-h1 --check

step "Put lab-h1 into maintenance: its VMs migrate live, high priority first, spread over lab-h2 and lab-h3"
ansible-playbook -i "$inventory" playbooks/maintenance.yml -e target=lab-h1 -e "reason='demo: kernel update'"

step "The cluster now"
ansible-playbook -i "$inventory" playbooks/cluster_report.yml -e cluster=lab
tests/lab/virtlab status

step "The lab's no-VM-lost check"
tests/lab/virtlab check

step "Bring lab-h1 back to active"
ansible-playbook -i "$inventory" playbooks/activate.yml -e target=lab-h1

step "Done. The lab is still up for you to explore:"
echo "  inventory:  $inventory"
echo "  status:     tests/lab/virtlab status"
echo "  tear down:  make lab-down"
