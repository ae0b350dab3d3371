"""The option tables of options.py: every argument spec, range check, request default and RunOptions default comes from them."""

from __future__ import annotations

import dataclasses
import importlib
import re
import typing as t
from pathlib import Path
from unittest import mock

import pytest
import yaml

from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import options
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure import requests as rq
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.plan import RunOptions
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.policy import PolicyError

COLLECTION = Path(__file__).resolve().parents[2]
PLUGINS = COLLECTION / "plugins"
MODULE_PACKAGE = "ansible_collections.virtops.migration.plugins.modules."
FRAGMENT_PACKAGE = "ansible_collections.virtops.migration.plugins.doc_fragments."
# Modules whose options an action plugin reads (no module code, no argument spec of ours).
ACTION_ONLY = {"evacuation_watch"}

# Each module's request builder, and the fewest parameters it accepts.
BUILDERS: t.Dict[str, t.Tuple[t.Callable[[t.Mapping[str, t.Any]], t.Any], t.Dict[str, t.Any]]] = {
    "vm_migrate": (rq.migrate_request, {"name": "web1", "destination_uri": "qemu+tcp://hv2/system"}),
    "host_maintenance": (rq.maintenance_request, {"state": "active"}),
    "vm_hibernate": (rq.hibernate_request, {"name": "web1"}),
    "cluster_balance": (rq.balance_request, {"hosts": ["qemu+tcp://hv1/system", "qemu+tcp://hv2/system"]}),
    "ha_recover": (rq.ha_recover_request, {"hosts": [{"name": "hv1", "uri": "qemu+tcp://hv1/system"}], "shared_storage": "/"}),
}


class _Stop(Exception):
    pass


def module_names() -> t.List[str]:
    return sorted(path.stem for path in (PLUGINS / "modules").glob("*.py") if path.stem not in ACTION_ONLY)


def spec_given_to_ansible_module(name: str) -> t.Dict[str, t.Any]:
    """The argument spec the module's main() hands to AnsibleModule."""
    module = importlib.import_module(MODULE_PACKAGE + name)
    captured: t.Dict[str, t.Any] = {}

    def fake(**kwargs: t.Any) -> t.NoReturn:
        captured.update(kwargs)
        raise _Stop()

    with mock.patch.object(module, "AnsibleModule", side_effect=fake), pytest.raises(_Stop):
        module.main()
    return captured["argument_spec"]


def test_every_module_with_code_is_in_the_table() -> None:
    assert sorted(options.MODULES) == module_names()


@pytest.mark.parametrize("name", module_names())
def test_the_argument_spec_of_each_module_is_the_one_derived_from_the_table(name: str) -> None:
    derived = options.module_spec(name)
    assert spec_given_to_ansible_module(name) == derived
    assert importlib.import_module(MODULE_PACKAGE + name).argument_spec() == derived
    # Each call gives fresh copies.
    derived[next(key for key, entry in sorted(derived.items()) if "default" in entry)]["default"] = "changed"
    assert options.module_spec(name) != derived


def documented_options(name: str) -> t.Dict[str, t.Dict[str, t.Any]]:
    """The module's options as its DOCUMENTATION and the collection's doc fragments it extends give them."""
    doc = yaml.safe_load(importlib.import_module(MODULE_PACKAGE + name).DOCUMENTATION)
    result: t.Dict[str, t.Dict[str, t.Any]] = {}
    for fragment in doc.get("extends_documentation_fragment") or []:
        parts = fragment.split(".")
        if parts[:2] != ["virtops", "migration"]:
            continue
        holder = importlib.import_module(FRAGMENT_PACKAGE + parts[2]).ModuleDocFragment
        text = getattr(holder, parts[3] if len(parts) > 3 else "DOCUMENTATION")
        result.update((yaml.safe_load(text) or {}).get("options") or {})
    result.update(doc.get("options") or {})
    return result


@pytest.mark.parametrize("name", module_names())
def test_the_documentation_of_each_module_matches_the_table(name: str) -> None:
    documented = documented_options(name)
    table = options.module_options(name)
    assert sorted(documented) == sorted(table)
    for option_name, option in table.items():
        doc = documented[option_name]
        found = {key: doc.get(key) for key in ("type", "default", "choices", "elements", "aliases")}
        found["required"] = bool(doc.get("required"))
        expected = {
            "type": option.type,
            "default": option.default,
            "choices": list(option.choices) if option.choices is not None else None,
            "elements": option.elements,
            "aliases": list(option.aliases) or None,
            "required": option.required,
        }
        assert found == expected, "%s.%s" % (name, option_name)


def test_every_option_has_a_one_line_doc() -> None:
    for name in options.MODULES:
        for option_name, option in options.module_options(name).items():
            assert option.doc and "\n" not in option.doc, "%s.%s" % (name, option_name)


def test_an_option_in_two_groups_of_one_module_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(options.MODULES, "twice", (options.CONNECTION, options.only(options.CONNECTION, "uri")))
    with pytest.raises(ValueError, match="option uri of twice is in two of its groups"):
        options.module_spec("twice")


# RunOptions' fields and the options they come from.
RUN_OPTION_SOURCES = {"poll_interval": (options.RUN, "wait_sleep"), "username": (options.CONNECTION, "username"), "password": (options.CONNECTION, "password")}


def test_run_options_defaults_are_the_table_defaults() -> None:
    defaults = RunOptions()
    for field in dataclasses.fields(RunOptions):
        group = next((group for group in (options.RUN, options.STORAGE) if field.name in group), options.VM_MIGRATE)
        group, name = RUN_OPTION_SOURCES.get(field.name) or (group, field.name)
        assert getattr(defaults, field.name) == group[name].default, field.name


# Request fields named otherwise than their option, and fields that are no option's value.
RENAMED = {"poll_interval": "wait_sleep", "policy_option": "policy"}
NOT_OPTIONS = {"policy", "options", "uri", "candidates"}


def expected_request_fields(module: str, request_type: t.Any, given: t.Mapping[str, t.Any]) -> t.Dict[str, t.Any]:
    """Each field of the request that holds an option of the module not in ``given``, at the option's default."""
    table = options.module_options(module)
    fields = {field.name: RENAMED.get(field.name, field.name) for field in dataclasses.fields(request_type) if field.name not in NOT_OPTIONS}
    return {field: table[name].default for field, name in fields.items() if name in table and name not in given}


@pytest.mark.parametrize("given_as_none", [False, True])
@pytest.mark.parametrize("module", sorted(BUILDERS))
def test_a_request_takes_the_table_default_of_every_missing_option(module: str, given_as_none: bool) -> None:
    build, base = BUILDERS[module]
    params = dict(base)
    if given_as_none:
        params.update((name, None) for name in options.module_options(module) if name not in base)
    request = build(params)
    expected = expected_request_fields(module, type(request), base)
    assert expected and {name: getattr(request, name) for name in expected} == expected
    # The request's own field defaults are the table's too.
    for field in dataclasses.fields(type(request)):
        if field.name in expected:
            own = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
            assert own == expected[field.name], field.name
    if module == "vm_migrate":
        assert request.options == RunOptions()


def test_a_missing_uri_takes_the_environment_then_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LIBVIRT_DEFAULT_URI", raising=False)
    assert rq.hibernate_request({"name": "web1"}).uri == options.DEFAULT_URI
    monkeypatch.setenv("LIBVIRT_DEFAULT_URI", "qemu+ssh://root@hv9/system")
    assert rq.hibernate_request({"name": "web1"}).uri == "qemu+ssh://root@hv9/system"


def out_of_range(option: options.Option) -> t.List[t.Any]:
    low, high, whole, exclusive = t.cast(options.Range, option.range)
    values: t.List[t.Any] = [low if exclusive else low - 1, high + 1, "ten", True]
    if whole:
        values.append(low + 1.5)
    return values


RANGED = [
    (module, name, value)
    for module in sorted(options.MODULES)
    for name, option in options.module_options(module).items()
    if option.range is not None
    for value in out_of_range(option)
]


@pytest.mark.parametrize("module, name, value", RANGED)
def test_each_ranged_option_out_of_range_is_refused_naming_it(module: str, name: str, value: t.Any) -> None:
    if module in BUILDERS:
        build, base = BUILDERS[module]
        with pytest.raises(PolicyError, match=r"^%s must be " % name):
            build(dict(base, **{name: value}))
    else:
        # A module without a request checks its ranges itself.
        assert 'options.check_ranges("%s", ' % module in (PLUGINS / "modules" / ("%s.py" % module)).read_text()
        with pytest.raises(PolicyError, match=r"^%s must be " % name):
            options.check_ranges(module, {name: value})


@pytest.mark.parametrize("module, name", sorted({(module, name) for module, name, _value in RANGED}))
def test_each_ranged_option_at_its_ends_is_accepted(module: str, name: str) -> None:
    low, high, whole, exclusive = t.cast(options.Range, options.module_options(module)[name].range)
    for accepted in (high, low + 1 if exclusive and whole else low + 0.5 if exclusive else low):
        options.check_ranges(module, {name: accepted})


# `params.get("x") or 2`, `request.get("x") or "teaming"`, `params.get("x", True)`: a default kept outside the table.
LITERAL_FALLBACK = re.compile(
    r"\b(?:params|request|args)(?:\.get\([^()]*\)|\[[^\]]*\])\s+or\s+(?:[-\d\"'\[{(]|True\b|False\b)"
    r"|\b(?:params|request|args)\.get\(\s*[\"'][a-z_]+[\"']\s*,"
)


def test_no_literal_fallback_for_an_option_in_the_plugins() -> None:
    found = [
        "%s:%d: %s" % (path.relative_to(COLLECTION), number, line.strip())
        for path in sorted(PLUGINS.rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if LITERAL_FALLBACK.search(line)
    ]
    assert found == []
    assert LITERAL_FALLBACK.search('max_outgoing=params.get("max_outgoing") or 2')
    assert LITERAL_FALLBACK.search('mode = request.get("mode") or "teaming"')
    assert LITERAL_FALLBACK.search('live=params.get("live", True)')
