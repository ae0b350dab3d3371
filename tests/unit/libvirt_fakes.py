# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Small stand-ins for libvirt connection, domain, network and pool objects.

They answer from XML samples and raise real ``libvirt.libvirtError`` objects carrying real error
codes, so the code under test meets the same exceptions it meets on a host.
"""

from __future__ import annotations

import contextlib
import typing as t
import xml.etree.ElementTree as ET

import libvirt

from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import placement
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.errors import HostUnreachableError

# Host UUIDs of the fake cluster: hv1's is the one in the sample capabilities-qemu.xml.
HV1_UUID = "685adf38-a605-49f0-b38b-31df0e753953"
HV2_UUID = "0c9a4b52-7d3e-4f1a-9e55-2b8c6d1f0a77"
HV3_UUID = "b7d2e6f0-1c4a-4e8b-8f3d-5a9c0e2b7d41"

# Devices of a VM's XML: an SR-IOV failover pair in teaming mode (its VF at host PCI 0000:3b:02.1), and
# a USB host device, which cannot migrate.
TEAMING_PAIR = (
    "<interface type='network'><mac address='52:54:00:aa:00:01'/><source network='lab'/><model type='virtio'/>"
    "<teaming type='persistent'/><alias name='ua-fo-backup'/></interface>"
    "<interface type='hostdev' managed='yes'><mac address='52:54:00:aa:00:01'/>"
    "<source><address type='pci' domain='0x0000' bus='0x3b' slot='0x02' function='0x1'/></source>"
    "<teaming type='transient' persistent='ua-fo-backup'/><alias name='ua-fo-vf'/></interface>"
)
USB_HOSTDEV = "<hostdev mode='subsystem' type='usb' managed='yes'><source><vendor id='0x0781'/><product id='0x5567'/></source></hostdev>"


def libvirt_error(code: int, message: str, domain: int = libvirt.VIR_FROM_QEMU) -> libvirt.libvirtError:
    """A real ``libvirtError`` as libvirt-python raises it, with ``err`` filled in."""
    libvirt.virResetLastError()
    exc = libvirt.libvirtError(message)
    # virError fields: code, domain, message, level, str1, str2, str3, int1, int2
    exc.err = (code, domain, message, libvirt.VIR_ERR_ERROR, message, None, None, -1, -1)
    exc.args = (message,)
    return exc


def unsupported(api: str) -> libvirt.libvirtError:
    return libvirt_error(
        libvirt.VIR_ERR_NO_SUPPORT,
        "this function is not supported by the connection driver: %s" % api,
        libvirt.VIR_FROM_DOMAIN,
    )


class FakeDomain:
    def __init__(
        self,
        xml: str,
        state: t.Tuple[int, int] = (libvirt.VIR_DOMAIN_RUNNING, 1),
        persistent: bool = True,
        autostart: bool = False,
        vanished: bool = False,
    ) -> None:
        self.xml = xml
        self._state = state
        self._persistent = persistent
        self._autostart = autostart
        self.vanished = vanished
        self._name = xml.split("<name>", 1)[1].split("</name>", 1)[0]
        self._uuid = xml.split("<uuid>", 1)[1].split("</uuid>", 1)[0] if "<uuid>" in xml else None
        # What jobStats answers: the current job (none by default), and the last completed one.
        self.job: t.Dict[str, t.Any] = {"type": libvirt.VIR_DOMAIN_JOB_NONE}
        self.completed_job: t.Dict[str, t.Any] = {"type": libvirt.VIR_DOMAIN_JOB_NONE}
        # The calls that change the VM (create, suspend, resume), in order, and per call name the
        # libvirtError it raises instead of doing anything.
        self.calls: t.List[t.Tuple[t.Any, ...]] = []
        self.errors: t.Dict[str, libvirt.libvirtError] = {}
        # The connection it was last looked up or listed through (what virDomain.connect answers).
        self.conn: t.Optional["FakeConnection"] = None
        # The persistent definition when it differs from the running one (XMLDesc with VIR_DOMAIN_XML_INACTIVE).
        self.inactive_xml: t.Optional[str] = None

    def connect(self) -> "FakeConnection":
        if self.conn is None:
            raise libvirt_error(libvirt.VIR_ERR_INVALID_CONN, "invalid connection pointer in virDomainGetConnect")
        return self.conn

    def _check(self) -> None:
        if self.vanished:
            raise libvirt_error(
                libvirt.VIR_ERR_NO_DOMAIN,
                "Domain not found: no domain with matching uuid '%s'" % self._name,
                libvirt.VIR_FROM_QEMU,
            )

    def name(self) -> str:
        return self._name

    def UUIDString(self) -> str:
        if self._uuid is None:
            raise AssertionError("the fake domain's XML has no <uuid>")
        return self._uuid

    def info(self) -> t.List[int]:
        """[state, max memory KiB, memory KiB, vCPUs, CPU time ns]."""
        self._check()
        return [self._state[0], 0, 0, 1, 0]

    def jobStats(self, flags: int = 0) -> t.Dict[str, t.Any]:
        self._check()
        return dict(self.completed_job if flags & libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED else self.job)

    def XMLDesc(self, flags: int = 0) -> str:
        self._check()
        if flags & libvirt.VIR_DOMAIN_XML_INACTIVE and self.inactive_xml is not None:
            return self.inactive_xml
        return self.xml

    def state(self, flags: int = 0) -> t.List[int]:
        self._check()
        return list(self._state)

    def isActive(self) -> int:
        self._check()
        return int(self._state[0] not in (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_NOSTATE))

    def isPersistent(self) -> int:
        self._check()
        return int(self._persistent)

    def autostart(self) -> int:
        self._check()
        return int(self._autostart)

    def setAutostart(self, flag: int) -> int:  # noqa: N802 (libvirt's name)
        self._check()
        self.calls.append(("setAutostart", flag))
        if "setAutostart" in self.errors:
            raise self.errors["setAutostart"]
        self._autostart = bool(flag)
        return 0

    def _change(self, call: str, allowed: t.Sequence[int], refusal: str, state: t.Tuple[int, int]) -> int:
        """Record ``call``; raise its error if one is set, or libvirt's refusal from another state."""
        self._check()
        self.calls.append((call,))
        if call in self.errors:
            raise self.errors[call]
        if self._state[0] not in allowed:
            raise libvirt_error(libvirt.VIR_ERR_OPERATION_INVALID, "Requested operation is not valid: %s" % refusal)
        self._state = state
        return 0

    def create(self) -> int:
        shut_off = (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_NOSTATE)
        return self._change("create", shut_off, "domain is already running", (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_BOOTED))

    def suspend(self) -> int:
        active = (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_PAUSED)
        return self._change("suspend", active, "domain is not running", (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_USER))

    def resume(self) -> int:
        active = (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_PAUSED)
        return self._change("resume", active, "domain is not running", (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_UNPAUSED))

    def snapshotNum(self, flags: int = 0) -> int:  # noqa: N802 (libvirt's name)
        self._check()
        return int(getattr(self, "snapshots", 0))

    def undefineFlags(self, flags: int = 0) -> int:  # noqa: N802 (libvirt's name)
        """Forget the definition (the domain vanishes once it is not active either)."""
        self._check()
        self.calls.append(("undefineFlags", flags))
        if "undefineFlags" in self.errors:
            raise self.errors["undefineFlags"]
        self._forget()
        return 0

    def _forget(self) -> None:
        self._persistent = False
        if self.conn is not None and not self.isActive() and self in self.conn.domains:
            self.conn.domains.remove(self)
            self.vanished = True

    def undefine(self) -> int:
        """Forget the definition, as ``undefineFlags(0)``."""
        self._check()
        self.calls.append(("undefine",))
        if "undefine" in self.errors:
            raise self.errors["undefine"]
        self._forget()
        return 0

    def setMetadata(self, kind: int, xml: t.Optional[str], prefix: t.Optional[str], uri: str, flags: int = 0) -> int:  # noqa: N802 (libvirt's name)
        """Replace (``xml`` None: remove) the metadata element of namespace ``uri`` in the XML."""
        self._check()
        self.calls.append(("setMetadata", xml, flags))
        if "setMetadata" in self.errors:
            raise self.errors["setMetadata"]
        root = ET.fromstring(self.xml)
        element = root.find("metadata")
        if element is None:
            element = ET.SubElement(root, "metadata")
        for child in list(element):
            if child.tag.startswith("{%s}" % uri):
                element.remove(child)
        if xml:
            added = ET.fromstring(xml)
            for node in added.iter():
                node.tag = "{%s}%s" % (uri, node.tag)
            element.append(added)
        self.xml = ET.tostring(root, encoding="unicode")
        return 0

    def hasManagedSaveImage(self, flags: int = 0) -> int:  # noqa: N802 (libvirt's name)
        self._check()
        return int(getattr(self, "saved_image", False))

    def detachDeviceFlags(self, xml: str, flags: int = 0) -> int:  # noqa: N802 (libvirt's name)
        """Remove the device with the same alias from the XML, unless ``keep_devices`` (a guest that does not release it)."""
        self._check()
        self.calls.append(("detachDeviceFlags", xml, flags))
        if "detachDeviceFlags" in self.errors:
            raise self.errors["detachDeviceFlags"]
        if not getattr(self, "keep_devices", False):
            alias = ET.fromstring(xml).find("alias")
            root = ET.fromstring(self.xml)
            devices = root.find("devices")
            for device in list(devices if devices is not None else []):
                found = device.find("alias")
                if alias is not None and found is not None and found.get("name") == alias.get("name"):
                    devices.remove(device)  # type: ignore[union-attr]
            self.xml = ET.tostring(root, encoding="unicode")
        return 0

    def attachDeviceFlags(self, xml: str, flags: int = 0) -> int:  # noqa: N802 (libvirt's name)
        """Add the device to the XML."""
        self._check()
        self.calls.append(("attachDeviceFlags", xml, flags))
        if "attachDeviceFlags" in self.errors:
            raise self.errors["attachDeviceFlags"]
        root = ET.fromstring(self.xml)
        devices = root.find("devices")
        if devices is None:
            devices = ET.SubElement(root, "devices")
        devices.append(ET.fromstring(xml))
        self.xml = ET.tostring(root, encoding="unicode")
        return 0


class FakeObject:
    """A network, storage pool or node device."""

    def __init__(self, xml: str, active: bool = True, persistent: bool = True, autostart: bool = False) -> None:
        self.xml = xml
        self._active = active
        self._persistent = persistent
        self._autostart = autostart

    def name(self) -> str:
        return self.xml.split("<name>", 1)[1].split("</name>", 1)[0]

    def XMLDesc(self, flags: int = 0) -> str:
        return self.xml

    def isActive(self) -> int:
        return int(self._active)

    def isPersistent(self) -> int:
        return int(self._persistent)

    def autostart(self) -> int:
        return int(self._autostart)


class FakeVolume:
    """A storage volume of a :class:`FakePool`: its name, sizes (bytes) and format."""

    def __init__(self, pool: "FakePool", name: str, capacity: int, allocation: int = 0, fmt: str = "qcow2") -> None:
        self.pool, self._name, self.capacity, self.allocation, self.format = pool, name, capacity, allocation, fmt

    def name(self) -> str:
        return self._name

    def path(self) -> str:
        return "%s/%s" % (self.pool.target.rstrip("/"), self._name)

    def info(self) -> t.List[int]:
        return [0, self.capacity, self.allocation]

    def XMLDesc(self, flags: int = 0) -> str:  # noqa: N802 (libvirt's name)
        return "<volume><name>%s</name><target><path>%s</path><format type='%s'/></target></volume>" % (self._name, self.path(), self.format)

    def storagePoolLookupByVolume(self) -> "FakePool":  # noqa: N802 (libvirt's name)
        return self.pool

    def delete(self, flags: int = 0) -> int:
        if self.pool.delete_error is not None:
            raise self.pool.delete_error
        self.pool.volumes.remove(self)
        self.pool.deleted.append(self.path())
        return 0


class FakePool(FakeObject):
    """A storage pool: type, target path, free bytes, its volumes; ``createXML`` adds one (``created`` keeps the XML given)."""

    def __init__(self, name: str, kind: str = "dir", target: str = "/var/lib/libvirt/images", available: int = 100 * 1024**3, active: bool = True) -> None:
        super().__init__("<pool type='%s'><name>%s</name><target><path>%s</path></target></pool>" % (kind, name, target), active=active)
        self.target = target
        self.available = available
        self.volumes: t.List[FakeVolume] = []
        self.created: t.List[str] = []
        self.deleted: t.List[str] = []
        self.create_error: t.Optional[libvirt.libvirtError] = None
        self.delete_error: t.Optional[libvirt.libvirtError] = None

    def add(self, name: str, capacity: int, allocation: int = 0, fmt: str = "qcow2") -> FakeVolume:
        volume = FakeVolume(self, name, capacity, allocation, fmt)
        self.volumes.append(volume)
        return volume

    def info(self) -> t.List[int]:
        return [2 if self._active else 0, self.available * 2, self.available, self.available]

    def refresh(self, flags: int = 0) -> int:
        return 0

    def createXML(self, xml: str, flags: int = 0) -> FakeVolume:  # noqa: N802 (libvirt's name)
        if self.create_error is not None:
            raise self.create_error
        self.created.append(xml)
        name = xml.split("<name>", 1)[1].split("</name>", 1)[0]
        capacity = int(xml.split("<capacity unit='bytes'>", 1)[1].split("<", 1)[0])
        fmt = xml.split("<format type='", 1)[1].split("'", 1)[0] if "<format type='" in xml else "raw"
        return self.add(name, capacity, 0, fmt)

    def storageVolLookupByName(self, name: str) -> FakeVolume:  # noqa: N802 (libvirt's name)
        for volume in self.volumes:
            if volume.name() == name:
                return volume
        raise libvirt_error(libvirt.VIR_ERR_NO_STORAGE_VOL, "Storage volume not found: no storage vol with matching name '%s'" % name, libvirt.VIR_FROM_STORAGE)


class FakeConnection:
    """A ``virConnect`` for a QEMU host; attributes can be replaced to change its answers."""

    def __init__(
        self,
        capabilities: str,
        domain_capabilities: t.Optional[t.Mapping[str, str]] = None,
        domains: t.Sequence[FakeDomain] = (),
        networks: t.Sequence[FakeObject] = (),
        pools: t.Sequence[FakeObject] = (),
        uri: str = "qemu+tcp://hv1.example.com/system",
    ) -> None:
        self.capabilities = capabilities
        self.domain_capabilities = dict(domain_capabilities or {})
        self.domains = list(domains)
        self.networks = list(networks)
        self.pools = list(pools)
        # Node devices (``pci_0000_3b_02_1``...), as nodeDeviceLookupByName finds them.
        self.node_devices: t.List[FakeObject] = []
        self.uri = uri
        self.hostname = "hv1"
        self.closed = False
        self.memory_stats: t.Optional[t.Dict[str, int]] = {
            "total": 24684096,
            "free": 23513768,
            "buffers": 17856,
            "cached": 831616,
        }
        self.info = ["x86_64", 24105, 2, 2596, 1, 1, 2, 1]
        self.free_memory = 24_000_000_000
        self.network_error: t.Optional[libvirt.libvirtError] = None
        self.domain_capabilities_error: t.Optional[libvirt.libvirtError] = None
        self.calls: t.List[str] = []
        self.define_error: t.Optional[libvirt.libvirtError] = None
        self.new_domain_errors: t.Dict[str, libvirt.libvirtError] = {}

    def isAlive(self) -> int:  # noqa: N802 (libvirt's name)
        return int(not self.closed)

    def setKeepAlive(self, interval: int, count: int) -> int:  # noqa: N802 (libvirt's name)
        self.keepalive = (interval, count)
        return 0

    def close(self) -> int:
        self.closed = True
        return 0

    def getURI(self) -> str:
        return self.uri

    def getHostname(self) -> str:
        return self.hostname

    def getCapabilities(self) -> str:
        return self.capabilities

    def getInfo(self) -> t.List[t.Any]:
        return list(self.info)

    def getLibVersion(self) -> int:
        return 9000000

    def getVersion(self) -> int:
        return 7002022

    def getType(self) -> str:
        return "QEMU"

    def getMemoryStats(self, cell: int, flags: int = 0) -> t.Dict[str, int]:
        self.calls.append("getMemoryStats(%d)" % cell)
        if self.memory_stats is None:
            raise unsupported("virNodeGetMemoryStats")
        return dict(self.memory_stats)

    def getFreeMemory(self) -> int:
        return self.free_memory

    def getDomainCapabilities(
        self,
        emulatorbin: t.Optional[str],
        arch: t.Optional[str],
        machine: t.Optional[str],
        virttype: t.Optional[str],
        flags: int = 0,
    ) -> str:
        self.calls.append("getDomainCapabilities(%s, %s)" % (arch, virttype))
        if self.domain_capabilities_error is not None:
            raise self.domain_capabilities_error
        if virttype not in self.domain_capabilities:
            raise unsupported("virConnectGetDomainCapabilities")
        return self.domain_capabilities[virttype]

    def listAllDomains(self, flags: int = 0) -> t.List[FakeDomain]:
        """Every domain; with one of VIR_CONNECT_LIST_DOMAINS_ACTIVE and _INACTIVE, only those."""
        active = bool(flags & libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
        inactive = bool(flags & libvirt.VIR_CONNECT_LIST_DOMAINS_INACTIVE)
        for dom in self.domains:
            dom.conn = self
        if active == inactive:
            return list(self.domains)
        return [dom for dom in self.domains if bool(dom.isActive()) == active]

    def listAllNetworks(self, flags: int = 0) -> t.List[FakeObject]:
        if self.network_error is not None:
            raise self.network_error
        return list(self.networks)

    def listAllStoragePools(self, flags: int = 0) -> t.List[FakeObject]:
        return list(self.pools)

    def storageVolLookupByPath(self, path: str) -> FakeVolume:  # noqa: N802 (libvirt's name)
        for pool in self.pools:
            for volume in getattr(pool, "volumes", ()):
                if volume.path() == path:
                    return volume
        raise libvirt_error(libvirt.VIR_ERR_NO_STORAGE_VOL, "Storage volume not found: no storage vol with matching path '%s'" % path, libvirt.VIR_FROM_STORAGE)

    def storagePoolLookupByName(self, name: str) -> FakeObject:  # noqa: N802 (libvirt's name)
        for pool in self.pools:
            if pool.name() == name:
                return pool
        raise libvirt_error(libvirt.VIR_ERR_NO_STORAGE_POOL, "Storage pool not found: no storage pool with matching name '%s'" % name, libvirt.VIR_FROM_STORAGE)

    def nodeDeviceLookupByName(self, name: str) -> FakeObject:  # noqa: N802 (libvirt's name)
        for device in self.node_devices:
            if device.name() == name:
                return device
        raise libvirt_error(libvirt.VIR_ERR_NO_NODE_DEVICE, "Node device not found: no node device with matching name '%s'" % name, libvirt.VIR_FROM_NODEDEV)

    def lookupByName(self, name: str) -> FakeDomain:
        self.calls.append("lookupByName(%s)" % name)
        for domain in self.domains:
            if domain.name() == name:
                domain.conn = self
                return domain
        raise libvirt_error(libvirt.VIR_ERR_NO_DOMAIN, "Domain not found: no domain with matching name '%s'" % name)

    def defineXML(self, xml: str) -> FakeDomain:  # noqa: N802 (libvirt's name)
        """Define a persistent domain, shut off, or redefine the one with the same UUID.

        ``define_error`` is raised instead; a new domain gets the errors in ``new_domain_errors``.
        """
        self.calls.append("defineXML")
        if self.define_error is not None:
            raise self.define_error
        uuid = xml.split("<uuid>", 1)[1].split("</uuid>", 1)[0]
        for domain in self.domains:
            if domain.UUIDString() == uuid:
                domain.xml, domain._persistent, domain.conn = xml, True, self  # pylint: disable=protected-access
                return domain
        domain = FakeDomain(xml, (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_UNKNOWN))
        domain.errors.update(self.new_domain_errors)
        domain.conn = self
        self.domains.append(domain)
        return domain

    def lookupByUUIDString(self, uuid: str) -> FakeDomain:
        self.calls.append("lookupByUUIDString(%s)" % uuid)
        for domain in self.domains:
            if "<uuid>%s</uuid>" % uuid in domain.xml:
                domain.conn = self
                return domain
        raise libvirt_error(libvirt.VIR_ERR_NO_DOMAIN, "Domain not found: no domain with matching uuid '%s'" % uuid)


class FakeCluster:
    """Fake hosts handed out by URI in place of ``libvirt_connection``.

    Each host is a :class:`FakeConnection` with its own name and a copy of the sample capabilities
    (``capabilities-qemu.xml``) carrying its own host UUID; a URI no host answers is unreachable.
    """

    def __init__(self, capabilities: str) -> None:
        self.capabilities = capabilities
        self.hosts: t.Dict[str, FakeConnection] = {}

    def add_host(self, uri: str, name: str, uuid: str) -> FakeConnection:
        """One more host the run can reach."""
        conn = FakeConnection(self.capabilities.replace(HV1_UUID, uuid), uri=uri)
        conn.hostname = name
        self.hosts[uri] = conn
        return conn

    @contextlib.contextmanager
    def connect(
        self, uri: str, username: t.Optional[str] = None, password: t.Optional[str] = None, connect_timeout: t.Optional[float] = None
    ) -> t.Iterator[FakeConnection]:
        if uri not in self.hosts:
            raise HostUnreachableError("Cannot open a libvirt connection on %s" % uri, uri=uri)
        yield self.hosts[uri]


def host_state(name: str, available: int = 8192, vcpus: int = 0, **kwargs: t.Any) -> placement.HostState:
    """A destination as the probe reads it (for the planners' pure tests): on the ``lab`` network unless told."""
    kwargs.setdefault("uuid", "uuid-" + name)
    kwargs.setdefault("networks", frozenset({"lab"}))
    return placement.HostState(name=name, uri="qemu+tcp://%s/system" % name, available_mib=available, vcpus_running=vcpus, **kwargs)
