"""The lab's pure parts (tests/lab/virtlab_lib, tests/integration/labkit.py): the command line of the
fence agent and of the other failure commands, fence status codes, how down hosts count in `check`,
reading a VM's name from a QEMU command line, the local disks of `add-vm --disk` (size, pool, volume
and disk XML, the state, the storage calls against libvirt's test driver), and the guest's disk
workload virtlab-blocks (compiled with gcc and run on a plain file).

The commands themselves run on the lab (they need root, namespaces and libvirtd).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import typing as t
import zlib
from pathlib import Path
from xml.etree import ElementTree

import pytest

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS / "lab"))
sys.path.insert(0, str(TESTS / "integration"))

import labkit  # noqa: E402 pylint: disable=wrong-import-position,import-error
from virtlab_lib import cli, common, hosts, image, perturbations  # noqa: E402 pylint: disable=wrong-import-position,import-error
from virtlab_lib.common import Host, Lab, LabError, Vm  # noqa: E402 pylint: disable=wrong-import-position,import-error


def parse(*argv: str) -> object:
    return cli.parser().parse_args(list(argv))


@pytest.mark.parametrize(
    ("argv", "action"),
    [
        (["fence", "lab-h1", "-o", "off"], "off"),
        (["fence", "lab-h1", "-ooff"], "off"),
        (["fence", "lab-h1", "--action=status"], "status"),
        (["fence", "lab-h1", "--action", "on"], "on"),
        (["fence", "-o", "reboot", "h2"], "reboot"),
        # fence agents reboot when no action is given
        (["fence", "lab-h1"], "reboot"),
    ],
)
def test_fence_takes_the_action_as_fence_agents_do(argv: list[str], action: str) -> None:
    args = parse(*argv)
    assert args.action == action
    assert args.handler is perturbations.cmd_fence


@pytest.mark.parametrize("argv", [["fence", "lab-h1", "-o", "cycle"], ["fence", "-o", "off"], ["crash"], ["partition"]])
def test_bad_fence_crash_and_partition_lines_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        parse(*argv)


def test_partition_crash_and_shared_disk_options() -> None:
    assert parse("partition", "h2").heal is False
    assert parse("partition", "h2", "--heal").heal is True
    assert parse("crash", "3").handler is perturbations.cmd_crash
    args = parse("add-vm", "--tiny", "--shared-disk", "64", "t1@2")
    assert (args.tiny, args.shared_disk, args.vm) == (True, 64, ["t1@2"])
    assert parse("add-vm", "a:128").shared_disk is None


@pytest.mark.parametrize(("power", "line", "code"), [("on", "Status: ON", 0), ("off", "Status: OFF", 2)])
def test_fence_status_follows_the_fence_agents_exit_codes(power: str, line: str, code: int) -> None:
    assert perturbations.fence_status(power) == (line, code)


def host(**fields: object) -> Host:
    base = {"name": "lab-h1", "index": 1, "address": "10.254.77.11", "netns": "n", "veth": "v", "dir": "/x", "host_uuid": "u"}
    return Host(**dict(base, **fields))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fields", "reason"),
    [({}, ""), ({"crashed": True}, "crashed"), ({"power": "off"}, "powered off"), ({"power": "off", "crashed": True}, "powered off")],
)
def test_a_host_is_down_when_crashed_or_powered_off(fields: dict[str, object], reason: str) -> None:
    assert host(**fields).down_reason == reason


@pytest.mark.parametrize(
    ("entry", "tag"),
    [
        ({"power": "on", "crashed": False, "link_up": True, "migration_link_up": True}, ""),
        ({"power": "on", "crashed": False, "link_up": False, "migration_link_up": False}, "PARTITIONED"),
        ({"power": "on", "crashed": False, "link_up": False, "migration_link_up": True}, ""),
        ({"power": "on", "crashed": True, "link_up": True, "migration_link_up": True}, "CRASHED"),
        ({"power": "off", "crashed": False, "link_up": False, "migration_link_up": False}, "POWERED OFF"),
    ],
)
def test_status_tags_a_host_by_its_condition(entry: dict[str, object], tag: str) -> None:
    assert hosts.power_tag(entry) == tag


def test_killed_summary_counts_qemu_processes() -> None:
    names = ["libvirtd", "qemu-system-x86", "virtlockd", "sshd", "qemu-system-x86"]
    assert perturbations.killed_summary(names) == "5 processes (libvirtd, sshd, virtlockd, 2 QEMU)"
    assert perturbations.killed_summary([]) == "nothing was running"


def test_a_vm_on_no_inspected_host_may_be_on_a_down_host() -> None:
    down = ["lab-h2 (crashed)"]
    problems = hosts.vm_invariant_problems([], [], False, [], down)
    assert problems == ["found on no inspected host (it may be on a host that is down: lab-h2 (crashed))"]
    assert not hosts.vm_invariant_problems([], [], True, [], down)
    # Without a down host, a VM found nowhere is lost, allowed to be stopped or not.
    assert hosts.vm_invariant_problems([], [], True, []) == ["defined on no host (lost)"]
    # A host that is up but cannot be read still fails the check.
    assert hosts.vm_invariant_problems([], [], True, ["lab-h3"], down) == [
        "not found on the hosts that could be inspected (not inspected: lab-h3, lab-h2 (crashed))"
    ]
    # A VM that runs on an inspected host is judged as before.
    assert not hosts.vm_invariant_problems(["lab-h1"], [("lab-h1", "running")], False, [], down)


def test_a_shared_disk_is_a_raw_virtio_disk_without_host_cache() -> None:
    vm = Vm(name="d1", memory_mib=32, priority="medium", host_index=1, tiny=True)
    assert hosts.shared_disk_xml(vm) == ""
    vm.shared_disk, vm.shared_disk_mib = "/var/tmp/virtops-lab/shared/disks/d1.img", 64
    xml = hosts.shared_disk_xml(vm)
    assert "<source file='/var/tmp/virtops-lab/shared/disks/d1.img'/>" in xml
    assert "<driver name='qemu' type='raw' cache='none'/>" in xml
    assert "<target dev='vda' bus='virtio'/>" in xml


@pytest.mark.parametrize(
    ("argv", "name"),
    [
        (["/usr/bin/qemu-system-x86_64", "-name", "guest=t1,debug-threads=on", "-S"], "t1"),
        (["qemu", "-name", "guest=a,,b,debug-threads=on"], "a,b"),
        (["qemu", "-name", "guest=web"], "web"),
        (["qemu", "-machine", "pc"], None),
        (["qemu", "-name"], None),
    ],
)
def test_qemu_guest_name_reads_the_name_option(argv: list[str], name: str | None) -> None:
    assert labkit.qemu_guest_name(argv) == name


@pytest.mark.parametrize(
    ("text", "size"),
    [("256M", 256 << 20), ("1G", 1 << 30), ("512MiB", 512 << 20), ("1024K", 1 << 20), ("1M", 1 << 20), ("1T", 1 << 40)],
)
def test_disk_sizes_are_whole_numbers_with_a_binary_unit(text: str, size: int) -> None:
    assert hosts.parse_disk_size(text) == size
    assert parse("add-vm", "--disk", text, "d1").disk == text


@pytest.mark.parametrize("text", ["256", "1.5G", "1GB", "1g", "0M", "01G", "-1G", " 1G", "1G\n", "1023K", "2T", "1 G", "G", ""])
def test_bad_disk_sizes_are_refused_with_the_expected_form(text: str) -> None:
    with pytest.raises(LabError, match=r"bad --disk .*expected a whole number and a binary unit K, M, G or T .*from 1M to 1T"):
        hosts.parse_disk_size(text)


def test_the_local_pool_and_volume_are_a_dir_pool_and_a_thin_qcow2() -> None:
    pool = ElementTree.fromstring(hosts.local_pool_xml())
    assert (pool.get("type"), pool.findtext("name"), pool.findtext("target/path")) == (
        "dir",
        "virtops-local",
        "/var/lib/libvirt/images/virtops-local",
    )
    volume = ElementTree.fromstring(hosts.local_volume_xml("d1", 256 << 20))
    assert volume.findtext("name") == "d1.qcow2"
    assert (volume.findtext("capacity"), volume.find("capacity").get("unit")) == (str(256 << 20), "bytes")  # type: ignore[union-attr]
    assert volume.findtext("allocation") == "0"
    assert volume.find("target/format").get("type") == "qcow2"  # type: ignore[union-attr]


def test_a_local_disk_is_the_next_free_virtio_disk_without_host_cache() -> None:
    vm = Vm(name="d1", memory_mib=32, priority="medium", host_index=1, tiny=True)
    assert hosts.local_disk_xml(vm) == ""
    assert hosts.free_disk_target(vm) == "vda"
    vm.shared_disk = "/var/tmp/virtops-lab/shared/disks/d1.img"
    assert hosts.free_disk_target(vm) == "vdb"
    vm.local_disk, vm.local_disk_bytes, vm.local_disk_target = "/var/lib/libvirt/images/virtops-local/d1.qcow2", 1 << 30, "vdb"
    disk = ElementTree.fromstring(hosts.local_disk_xml(vm))
    assert (disk.get("type"), disk.get("device")) == ("file", "disk")
    assert disk.find("driver").attrib == {"name": "qemu", "type": "qcow2", "cache": "none"}  # type: ignore[union-attr]
    assert disk.find("source").get("file") == vm.local_disk  # type: ignore[union-attr]
    assert disk.find("target").attrib == {"dev": "vdb", "bus": "virtio"}  # type: ignore[union-attr]
    assert disk.findtext("serial") == hosts.LOCAL_DISK_SERIAL
    assert hosts.LOCAL_DISK_GUEST_PATH == "/dev/disk/by-id/virtio-" + hosts.LOCAL_DISK_SERIAL


def lab_with(*vms: Vm, directory: Path = Path("/x")) -> Lab:
    return Lab(
        cluster="lab",
        phase="up",
        accel="qemu",
        key="/k",
        kernel="/vmlinuz",
        initrd="/initrd.img",
        inventory="/inv.yml",
        created=0.0,
        hosts=[host(dir=str(directory / "lab-h1")), host(name="lab-h2", index=2, dir=str(directory / "lab-h2"))],
        vms=list(vms),
    )


def test_the_state_keeps_a_vms_local_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(common, "STATE_FILE", tmp_path / "state.json")
    vm = Vm(name="d1", memory_mib=256, priority="high", host_index=2, guest_ip="10.254.79.10/24")
    vm.local_disk, vm.local_disk_bytes, vm.local_disk_target = "/var/lib/libvirt/images/virtops-local/d1.qcow2", 1 << 30, "vda"
    lab_with(vm).save()
    loaded = Lab.load()
    assert loaded is not None and loaded.vms == [vm]
    # A state written before VMs had local disks still loads: the VMs have none.
    data = json.loads((tmp_path / "state.json").read_text())
    for field in ("local_disk", "local_disk_bytes", "local_disk_target"):
        del data["vms"][0][field]
    (tmp_path / "state.json").write_text(json.dumps(data))
    old = Lab.load()
    assert old is not None and (old.vms[0].local_disk, old.vms[0].local_disk_bytes) == ("", 0)


def test_local_disks_through_libvirts_storage_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pool and volume calls against libvirt's test driver (one in-memory libvirt for both hosts)."""
    libvirt = pytest.importorskip("libvirt")
    monkeypatch.setattr(common, "libvirt", libvirt)
    monkeypatch.setattr(hosts, "open_connection", lambda _host: libvirt.open("test:///default"))
    anchor = libvirt.open("test:///default")
    try:
        lab = lab_with(directory=tmp_path)
        with hosts.connect(lab.hosts[0]) as conn:
            pool = hosts.ensure_local_pool(conn, lab.hosts[0])
            assert (pool.isActive(), pool.autostart()) == (1, 1)
            assert hosts.ensure_local_pool(conn, lab.hosts[0]).UUIDString() == pool.UUIDString()
        vm = Vm(name="d1", memory_mib=32, priority="medium", host_index=1, tiny=True)
        hosts.create_local_disk(lab, vm, 256 << 20)
        assert (vm.local_disk, vm.local_disk_bytes, vm.local_disk_target) == (
            "/var/lib/libvirt/images/virtops-local/d1.qcow2",
            256 << 20,
            "vda",
        )
        with hosts.connect(lab.hosts[0]) as conn:
            volume = conn.storagePoolLookupByName("virtops-local").storageVolLookupByName("d1.qcow2")
            assert volume.info()[1:] == [256 << 20, 0]
        with pytest.raises(LabError, match="creating the local disk d1.qcow2 in pool virtops-local on lab-h1: .*exists"):
            hosts.create_local_disk(lab, Vm(name="d1", memory_mib=32, priority="medium", host_index=1), 1 << 20)
        # A copy on a host that is down is a file in its private /var/lib/libvirt, deleted as such.
        lab.hosts[1].crashed = True
        copy = tmp_path / "lab-h2" / "lib-libvirt" / "images" / "virtops-local" / "d1.qcow2"
        copy.parent.mkdir(parents=True)
        copy.write_bytes(b"QFI\xfb")
        assert hosts.remove_local_disk(lab, vm) == ["lab-h1", "lab-h2"]
        assert not copy.exists()
        assert hosts.remove_local_disk(lab, vm) == []
        with hosts.connect(lab.hosts[0]) as conn:
            pool = conn.storagePoolLookupByName("virtops-local")
            assert "d1.qcow2" not in pool.listVolumes()
            pool.destroy()
            pool.undefine()
    finally:
        anchor.close()


# virtlab-blocks (tests/lab/guest/virtlab-blocks.c): its block format, restated here.
BLOCK = 4096
MASK = (1 << 64) - 1


def mix(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def block_of(seq: int) -> bytes:
    start = seq ^ 0x766C626C6F636B73
    payload = b"".join(mix((start + (j + 1) * 0x9E3779B97F4A7C15) & MASK).to_bytes(8, "little") for j in range(509))
    return b"VLBLOCK1" + seq.to_bytes(8, "little") + zlib.crc32(payload).to_bytes(4, "little") + bytes(4) + payload


@pytest.fixture(scope="module")
def blocks_program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed")
    program = tmp_path_factory.mktemp("virtlab-blocks") / "virtlab-blocks"
    static = ["-static"] if image.STATIC_LIBC.exists() else []
    subprocess.run([gcc, "-O2", *static, "-Wall", "-Werror", "-o", str(program), str(image.BLOCKS_SOURCE)], check=True)
    return program


def blocks(program: Path, *args: str) -> tuple[int, t.Any]:
    proc = subprocess.run([str(program), *args], capture_output=True, text=True, timeout=60, check=False)
    lines = proc.stdout.strip().splitlines()
    return proc.returncode, json.loads(lines[-1]) if lines and lines[-1].startswith("{") else proc.stderr


def test_virtlab_blocks_writes_and_verifies_blocks(blocks_program: Path, tmp_path: Path) -> None:
    disk, done = tmp_path / "disk.img", tmp_path / "blocks.done"
    disk.write_bytes(bytes(64 * BLOCK))
    code, result = blocks(blocks_program, "write", str(disk), "--count", "40", "--rate", "0", "--done", str(done))
    assert (code, result["written"], result["last"], result["stopped"]) == (0, 40, 39, "count")
    assert done.read_text() == "39\n"
    assert json.loads((tmp_path / "blocks.result").read_text()) == result
    data = disk.read_bytes()
    assert data[3 * BLOCK : 4 * BLOCK] == block_of(3)
    assert data[40 * BLOCK :] == bytes(24 * BLOCK)
    code, verdict = blocks(blocks_program, "verify", str(disk))
    assert code == 0
    assert {key: verdict[key] for key in ("blocks", "bad", "gap_at", "beyond_gap", "device_blocks")} == {
        "blocks": 40,
        "bad": [],
        "gap_at": 40,
        "beyond_gap": 0,
        "device_blocks": 64,
    }
    code, status = blocks(blocks_program, "status", "--done", str(done))
    assert (code, status["acked"], status["running"], status["result"]) == (0, 39, False, result)

    # A corrupted payload, and a block with its right checksum at the wrong place: bad blocks.
    with disk.open("r+b") as handle:
        handle.seek(5 * BLOCK + 1000)
        handle.write(b"\xff")
        handle.seek(8 * BLOCK)
        handle.write(block_of(7))
    code, verdict = blocks(blocks_program, "verify", str(disk))
    assert (code, verdict["blocks"], verdict["bad"], verdict["bad_count"], verdict["gap_at"]) == (1, 5, [5, 8], 2, 40)

    # A hole in the middle: the valid blocks after it are beyond the gap.
    code, _result = blocks(blocks_program, "write", str(disk), "--count", "40", "--rate", "0", "--done", str(done))
    with disk.open("r+b") as handle:
        handle.seek(20 * BLOCK)
        handle.write(bytes(BLOCK))
    code, verdict = blocks(blocks_program, "verify", str(disk))
    assert (code, verdict["blocks"], verdict["bad"], verdict["gap_at"], verdict["beyond_gap"]) == (1, 20, [], 20, 19)

    # Without --count it stops at the end of the device; it never wraps.
    code, result = blocks(blocks_program, "write", str(disk), "--rate", "0", "--done", str(done))
    assert (code, result["written"], result["stopped"]) == (0, 64, "end of device")
    code, verdict = blocks(blocks_program, "verify", str(disk))
    assert (code, verdict["blocks"], verdict["gap_at"], verdict["beyond_gap"]) == (0, 64, None, 0)


def test_virtlab_blocks_writes_in_the_background_until_stopped(blocks_program: Path, tmp_path: Path) -> None:
    disk, done = tmp_path / "disk.img", tmp_path / "blocks.done"
    disk.write_bytes(bytes(1024 * BLOCK))
    # 0.05 MiB/s: about 13 blocks a second, so it still runs when stopped.
    proc = subprocess.run(
        [str(blocks_program), "write", str(disk), "--rate", "0.05", "--background", "--done", str(done)],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    pid = int(proc.stdout)
    assert (tmp_path / "blocks.pid").read_text() == "%d\n" % pid
    deadline = time.monotonic() + 10
    while not done.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    code, status = blocks(blocks_program, "status", "--done", str(done))
    assert (code, status["running"], status["pid"]) == (0, True, pid)
    code, message = blocks(blocks_program, "write", str(disk), "--done", str(done))
    assert code == 1 and "a writer runs already (pid %d)" % pid in message
    code, status = blocks(blocks_program, "stop", "--done", str(done))
    assert (code, status["running"], status["result"]["stopped"]) == (0, False, "signal")
    assert status["acked"] == status["result"]["last"] >= 0
    code, verdict = blocks(blocks_program, "verify", str(disk))
    assert (code, verdict["blocks"], verdict["gap_at"]) == (0, status["acked"] + 1, status["acked"] + 1)


@pytest.mark.parametrize(
    ("args", "code"),
    [
        ([], 2),
        (["erase", "/dev/null"], 2),
        (["write"], 2),
        (["write", "DISK", "--count", "0"], 2),
        (["write", "DISK", "--rate", "-1"], 2),
        (["write", "DISK", "--rate", "fast"], 2),
        (["verify", "DISK", "--count", "3"], 2),
        (["write", "MISSING"], 3),
        (["verify", "MISSING"], 3),
        (["stop", "--done", "MISSING"], 3),
    ],
)
def test_virtlab_blocks_refuses_bad_command_lines(blocks_program: Path, tmp_path: Path, args: list[str], code: int) -> None:
    (tmp_path / "disk.img").write_bytes(bytes(4 * BLOCK))
    paths = {"DISK": str(tmp_path / "disk.img"), "MISSING": str(tmp_path / "missing")}
    proc = subprocess.run([str(blocks_program), *[paths.get(arg, arg) for arg in args]], capture_output=True, timeout=10, check=False)
    assert proc.returncode == code
    assert proc.stderr
