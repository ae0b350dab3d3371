# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# This module_utils package is private to the virtops.migration collection; it is not a public API.
"""The per-VM migration settings stored in a domain's XML ``<metadata>``.

This is the one owner of the format; what each setting may hold, and how settings inherit, is
``settings.py``'s, and reading and writing them through libvirt is ``settings_store.py``'s. The settings travel with the domain (live and persistent
definitions alike), so nothing is kept in a side database. Pure logic: no libvirt import.

Format, under the namespace :data:`NAMESPACE_URI` with prefix :data:`NAMESPACE_PREFIX`::

    <virtops:migration xmlns:virtops="https://virtops.github.io/xmlns/migration/1">
      <priority>high</priority>
      <migration_mode>auto</migration_mode>
      <pinned_hosts><item>lab-h1</item><item>lab-h2</item></pinned_hosts>
      <auto_converge>true</auto_converge>
      <bandwidth_mib>64</bandwidth_mib>
    </virtops:migration>

Scalars are text (booleans ``true``/``false``), lists are ``<item>`` children, mappings are nested
elements. libvirt qualifies only the root element with the namespace, so children are read whether or
not they carry it.

A second element, under its own namespace :data:`PLACEMENT_URI`, keeps where the VM has been moved by
the collection (:data:`PLACEMENT_KEYS`), in the same format: the host it left for a maintenance (for
the move back) and when the balancer last moved it (its cooldown). It is not a setting: a user never
writes it, and removing the VM's settings (``migration_policy state=absent``) leaves it alone::

    <virtops-placement:placement xmlns:virtops-placement="https://virtops.github.io/xmlns/placement/1">
      <left_host>lab-h1</left_host>
      <left_host_uuid>...</left_host_uuid>
      <left_at>2026-12-07T10:00:00Z</left_at>
      <balanced_at>1796637600</balanced_at>
    </virtops-placement:placement>
"""

from __future__ import annotations

import re
import typing as t
import xml.etree.ElementTree as ET

NAMESPACE_URI = "https://virtops.github.io/xmlns/migration/1"
NAMESPACE_PREFIX = "virtops"
ROOT_TAG = "migration"
PLACEMENT_URI = "https://virtops.github.io/xmlns/placement/1"
PLACEMENT_PREFIX = "virtops-placement"
PLACEMENT_TAG = "placement"
# What the placement element holds: the host a maintenance moved the VM off (name and host UUID) and
# when, and when the balancer last moved it (seconds since the epoch); each with the type of its value.
PLACEMENT_KEYS: t.Dict[str, type] = {"left_host": str, "left_host_uuid": str, "left_at": str, "balanced_at": int}
PLACEMENT = (PLACEMENT_TAG, PLACEMENT_PREFIX, PLACEMENT_URI)


# Scalar text read back as an integer; anything else that is not true/false stays a string.
_INTEGER = re.compile(r"-?[0-9]+\Z")
# Setting names become element names: XML names without a namespace prefix.
_SETTING_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*\Z")

SettingValue = t.Union[str, int, bool, t.List[t.Any], t.Dict[str, t.Any]]


class MetadataFormatError(ValueError):
    """The metadata element exists but cannot be read as migration settings."""


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _to_text(value: t.Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _from_text(text: str) -> t.Union[str, int, bool]:
    if text in ("true", "false"):
        return text == "true"
    if _INTEGER.match(text):
        return int(text)
    return text


def _fill(parent: ET.Element, value: t.Any) -> None:
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, str) or not _SETTING_NAME.match(key):
                raise MetadataFormatError("migration setting name %r is not usable as an XML element name" % (key,))
        for key in sorted(value):
            _fill(ET.SubElement(parent, key), value[key])
    elif isinstance(value, (list, tuple)):
        parent.set("type", "list")
        for item in value:
            _fill(ET.SubElement(parent, "item"), item)
    elif value is None:
        raise MetadataFormatError(
            "migration setting <%s> has no value (None); leave it out instead" % _local(parent.tag)
        )
    else:
        parent.text = _to_text(value)


def _read(element: ET.Element) -> t.Any:
    children = list(element)
    if element.get("type") == "list":
        return [_read(child) for child in children]
    if children:
        return {_local(child.tag): _read(child) for child in children}
    return _from_text((element.text or "").strip())


def render(settings: t.Mapping[str, t.Any], qualified: bool = True, element: t.Tuple[str, str, str] = (ROOT_TAG, NAMESPACE_PREFIX, NAMESPACE_URI)) -> str:
    """Return the metadata element for ``settings``.

    ``qualified=True`` gives the element with its namespace declared, ready to be placed inside a
    domain's ``<metadata>``. ``qualified=False`` gives the bare element that
    ``virDomain.setMetadata(VIR_DOMAIN_METADATA_ELEMENT, xml, prefix, uri)`` expects.

    ``element`` is (tag, prefix, namespace URI): the settings' element by default, :data:`PLACEMENT`
    for the placement record.

    Raises :class:`MetadataFormatError` for a setting name that is not an XML name, or a ``None`` value.
    """
    tag, prefix, uri = element
    root = ET.Element(tag)
    _fill(root, dict(settings))
    text = ET.tostring(root, encoding="unicode")
    if qualified:
        head = '<%s:%s xmlns:%s="%s"' % (prefix, tag, prefix, uri)
        text = head + text[len("<" + tag) :]
        if text.endswith("</%s>" % tag):
            text = text[: -len("</%s>" % tag)] + "</%s:%s>" % (prefix, tag)
    return text


def parse(xml_text: t.Optional[str], tag: str = ROOT_TAG) -> t.Dict[str, t.Any]:
    """Read settings from the metadata element (as ``getMetadata`` returns it); ``None`` gives ``{}``."""
    if not xml_text or not xml_text.strip():
        return {}
    try:
        root = ET.fromstring(xml_text)
    except ET.ParseError as exc:
        raise MetadataFormatError("migration metadata is not well-formed XML: %s" % exc) from exc
    if _local(root.tag) != tag:
        raise MetadataFormatError("migration metadata root is <%s>, expected <%s>" % (_local(root.tag), tag))
    value = _read(root)
    return value if isinstance(value, dict) else {}


def from_domain_xml(domain_xml: str) -> t.Dict[str, t.Any]:
    """Read settings from a whole domain XML document (no libvirt call needed)."""
    return from_domain_element(ET.fromstring(domain_xml))


def from_domain_element(root: ET.Element, element: t.Tuple[str, str, str] = (ROOT_TAG, NAMESPACE_PREFIX, NAMESPACE_URI)) -> t.Dict[str, t.Any]:
    """Read settings (or, with ``element`` :data:`PLACEMENT`, the placement record) from an already parsed ``<domain>`` element."""
    tag, _prefix, uri = element
    metadata = root.find("metadata")
    if metadata is None:
        return {}
    found = metadata.find("{%s}%s" % (uri, tag))
    if found is None:
        return {}
    return parse(ET.tostring(found, encoding="unicode"), tag)


def placement_record(root: ET.Element) -> t.Dict[str, t.Any]:
    """The VM's placement record (:data:`PLACEMENT_KEYS` only) from its parsed ``<domain>``; ``{}`` when it has
    none or it cannot be read; a value of the wrong kind is left out (a record that cannot be read only means the VM
    is not moved back, nor kept from moving)."""
    try:
        record = from_domain_element(root, PLACEMENT)
    except MetadataFormatError:
        return {}
    return {
        key: record[key]
        for key, kind in PLACEMENT_KEYS.items()
        if isinstance(record.get(key), kind) and not isinstance(record.get(key), bool) and record.get(key) != ""
    }
