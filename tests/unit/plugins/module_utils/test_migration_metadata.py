# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The per-VM migration settings format (``_migration/pure/metadata.py``)."""

from __future__ import annotations

import typing as t
import xml.etree.ElementTree as ET

import pytest
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import metadata

ROUND_TRIPS = [
    pytest.param({}, id="empty"),
    pytest.param({"priority": "high"}, id="one-scalar"),
    pytest.param(
        {
            "priority": "low",
            "migration_mode": "manual",
            "pinned_hosts": ["lab-h1", "lab-h2"],
            "auto_converge": True,
            "compression": False,
            "bandwidth_mib": 64,
        },
        id="typical",
    ),
    pytest.param({"pinned_hosts": []}, id="empty-list"),
    pytest.param({"pinned_hosts": ["only-one"]}, id="one-item-list"),
    pytest.param({"downtime_ms": -1, "offset": 0}, id="negative-and-zero"),
    pytest.param({"policy": {"name": "post_copy", "steps": [{"stalled": 1, "downtime_ms": 150}]}}, id="nested"),
    pytest.param({"note": 'spaces and <xml> & "quotes"'}, id="escaping"),
    pytest.param({"name": "vm-\u00e9t\u00e9"}, id="unicode"),
    pytest.param({"matrix": [[1, 2], [3]]}, id="list-of-lists"),
    pytest.param({"hooks.user": "guest", "_private": "x", "with-dash": 1}, id="xml-name-characters"),
]


@pytest.mark.parametrize("settings", ROUND_TRIPS)
@pytest.mark.parametrize("qualified", [True, False])
def test_render_then_parse_gives_the_settings_back(settings: t.Dict[str, t.Any], qualified: bool) -> None:
    assert metadata.parse(metadata.render(settings, qualified=qualified)) == settings


@pytest.mark.parametrize("settings", ROUND_TRIPS)
def test_settings_survive_a_trip_through_a_domain_document(settings: t.Dict[str, t.Any]) -> None:
    domain_xml = "<domain><name>vm1</name><metadata>%s</metadata></domain>" % metadata.render(settings)
    assert metadata.from_domain_xml(domain_xml) == settings


def test_qualified_render_declares_the_namespace_on_the_root_only() -> None:
    text = metadata.render({"priority": "high"})
    assert text.startswith('<virtops:migration xmlns:virtops="https://virtops.github.io/xmlns/migration/1">')
    assert text.endswith("</virtops:migration>")
    root = ET.fromstring(text)
    assert root.tag == "{%s}migration" % metadata.NAMESPACE_URI
    assert [child.tag for child in root] == ["priority"]


def test_qualified_render_of_no_settings_is_an_empty_qualified_element() -> None:
    root = ET.fromstring(metadata.render({}))
    assert root.tag == "{%s}migration" % metadata.NAMESPACE_URI
    assert list(root) == []


def test_unqualified_render_is_what_set_metadata_expects() -> None:
    assert metadata.render({"priority": "high"}, qualified=False) == "<migration><priority>high</priority></migration>"


def test_render_orders_keys_so_equal_settings_give_equal_xml() -> None:
    assert metadata.render({"b": 1, "a": 2}) == metadata.render({"a": 2, "b": 1})


def test_reads_the_form_libvirt_returns_inside_a_domain(sample: t.Callable[[str], str]) -> None:
    # libvirt qualifies every child element with the prefix in dumpxml output.
    assert metadata.from_domain_xml(sample("domain-running.xml")) == {
        "auto_converge": True,
        "bandwidth_mib": 64,
        "migration_mode": "auto",
        "pinned_hosts": ["lab-h1", "lab-h2"],
        "priority": "high",
    }


def test_reads_the_form_get_metadata_returns() -> None:
    # virDomain.metadata(VIR_DOMAIN_METADATA_ELEMENT, uri) returns the element without namespace.
    text = (
        '<migration>\n  <auto_converge>true</auto_converge>\n  <pinned_hosts type="list">\n'
        "    <item>lab-h1</item>\n  </pinned_hosts>\n  <priority>high</priority>\n</migration>"
    )
    assert metadata.parse(text) == {"auto_converge": True, "pinned_hosts": ["lab-h1"], "priority": "high"}


@pytest.mark.parametrize(
    "domain_xml",
    [
        pytest.param("<domain><name>a</name></domain>", id="no-metadata-element"),
        pytest.param("<domain><metadata/></domain>", id="empty-metadata"),
        pytest.param(
            '<domain><metadata><o:app xmlns:o="https://example.com/o"><o:x>1</o:x></o:app></metadata></domain>',
            id="other-namespace-only",
        ),
        pytest.param(
            "<domain><metadata><migration><priority>high</priority></migration></metadata></domain>",
            id="ours-without-namespace",
        ),
    ],
)
def test_domains_without_our_element_have_no_settings(domain_xml: str) -> None:
    assert metadata.from_domain_xml(domain_xml) == {}


def test_other_applications_metadata_is_ignored(sample: t.Callable[[str], str]) -> None:
    # domain-custom.xml holds our element and another application's element side by side.
    assert metadata.from_domain_xml(sample("domain-custom.xml")) == {"priority": "urgent"}


@pytest.mark.parametrize("text", [None, "", "   \n"])
def test_no_metadata_text_means_no_settings(text: t.Optional[str]) -> None:
    assert metadata.parse(text) == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("<migration><priority>high</migration>", "not well-formed", id="mismatched-tag"),
        pytest.param("<migration>", "not well-formed", id="unclosed"),
        pytest.param("priority=high", "not well-formed", id="not-xml"),
        pytest.param("<settings><priority>high</priority></settings>", "root is <settings>", id="wrong-root"),
    ],
)
def test_malformed_metadata_raises_a_format_error(text: str, message: str) -> None:
    with pytest.raises(metadata.MetadataFormatError, match=message):
        metadata.parse(text)


def test_format_error_is_a_value_error() -> None:
    assert issubclass(metadata.MetadataFormatError, ValueError)


def test_a_root_with_only_text_gives_no_settings() -> None:
    assert metadata.parse("<migration>high</migration>") == {}


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("true", True),
        ("false", False),
        ("True", "True"),
        ("0", 0),
        ("42", 42),
        ("-7", -7),
        ("--5", "--5"),
        ("-", "-"),
        ("4.5", "4.5"),
        ("1e3", "1e3"),
        ("\u00b2", "\u00b2"),
        ("\u0663", "\u0663"),
        ("", ""),
        ("  padded  ", "padded"),
    ],
)
def test_scalar_text_is_typed_only_when_it_is_a_plain_integer_or_boolean(text: str, value: t.Any) -> None:
    assert metadata.parse("<migration><x>%s</x></migration>" % text) == {"x": value}


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        pytest.param({"1st": "x"}, "not usable as an XML element name", id="leading-digit"),
        pytest.param({"has space": "x"}, "not usable as an XML element name", id="space"),
        pytest.param({"ns:tag": "x"}, "not usable as an XML element name", id="colon"),
        pytest.param({"": "x"}, "not usable as an XML element name", id="empty-name"),
        pytest.param({3: "x"}, "not usable as an XML element name", id="integer-key"),
        pytest.param({"policy": {"bad name": 1}}, "not usable as an XML element name", id="nested-bad-name"),
        pytest.param({"priority": None}, "has no value", id="none-value"),
        pytest.param({"hosts": ["a", None]}, "has no value", id="none-in-list"),
    ],
)
def test_render_refuses_settings_it_cannot_write(settings: t.Dict[t.Any, t.Any], message: str) -> None:
    with pytest.raises(metadata.MetadataFormatError, match=message):
        metadata.render(settings)
