# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# This module_utils package is private to the virtops.migration collection; it is not a public API.
"""The one place where a module's work becomes ``exit_json`` or ``fail_json``.

Every module's ``main()`` builds its ``AnsibleModule`` and hands :func:`run` the work to do: the
libvirt bindings are checked first, :class:`~errors.MigrationError` becomes ``fail_json`` with its
details, any other exception a failure naming its type (never a success), and ``warnings`` in the
result become Ansible warnings.
"""

from __future__ import annotations

import typing as t

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.virtops.migration.plugins.module_utils._migration.libvirt_io.connection import HAS_LIBVIRT, LIBVIRT_IMPORT_ERROR
from ansible_collections.virtops.migration.plugins.module_utils._migration.pure.errors import MigrationError, unexpected_failure


def run(module: AnsibleModule, work: t.Callable[[], t.Dict[str, t.Any]]) -> None:
    """Do ``work`` and exit the module with its result, or fail with a clear message."""
    if not HAS_LIBVIRT:
        module.fail_json(msg=missing_required_lib("libvirt-python"), exception=LIBVIRT_IMPORT_ERROR)
    try:
        result = work()
    except MigrationError as exc:
        module.fail_json(**exc.result())
    except Exception as exc:  # pylint: disable=broad-exception-caught
        module.fail_json(**unexpected_failure(exc))
    for warning in result.pop("warnings", None) or []:
        module.warn(warning)
    module.exit_json(**result)
