# Copyright (c) virtops.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Wait for a host_maintenance run started in the background, showing its progress as it goes.

One task for the whole wait: every O(interval) seconds one look at the job (the async_status module)
and, while it runs, one read of the progress file the evacuation rewrites as moves start and end. The
loop lives here, so a long evacuation costs one task, not one task include per look.
"""

from __future__ import annotations

import base64
import json
import time
import typing as t

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase
from ansible.utils.display import Display

display = Display()


def progress_line(host: str, progress: t.Mapping[str, t.Any]) -> str:
    """One progress line: moves ended out of the total, failures, and the moves running now.

    A file left by an earlier evacuation says done: this one is still planning.
    """
    if progress.get("done"):
        return "%s: planning" % host
    line = "%s: %d of %d moves ended (%d failed)" % (host, progress.get("ended", 0), progress.get("total", 0), progress.get("failed", 0))
    running = progress.get("running") or []
    if running:
        line += "; moving now: " + ", ".join("%s -> %s" % (move.get("vm"), move.get("to")) for move in running)
    return line


class ActionModule(ActionBase):
    """The module evacuation_watch: runs on the controller, looks at the managed node once per interval."""

    TRANSFERS_FILES = False
    _requires_connection = True

    def _job(self, jid: str, task_vars: t.Dict[str, t.Any]) -> t.Dict[str, t.Any]:
        """The job's status as the async_status module reports it (its result once finished)."""
        async_dir = self._remote_expand_user(self.get_shell_option("async_dir", default="~/.ansible_async"))
        return self._execute_module(
            module_name="ansible.legacy.async_status", module_args={"jid": jid, "mode": "status", "_async_dir": async_dir}, task_vars=task_vars
        )

    def _progress(self, path: str, task_vars: t.Dict[str, t.Any]) -> t.Optional[t.Dict[str, t.Any]]:
        """The progress file's content, or None while there is none (or it cannot be read)."""
        read = self._execute_module(module_name="ansible.legacy.slurp", module_args={"src": path}, task_vars=task_vars)
        if read.get("failed") or "content" not in read:
            return None
        try:
            data = json.loads(base64.b64decode(read["content"]))
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    def run(self, tmp: t.Any = None, task_vars: t.Optional[t.Dict[str, t.Any]] = None) -> t.Dict[str, t.Any]:
        task_vars = task_vars or {}
        result = super().run(tmp, task_vars)
        _valid, args = self.validate_argument_spec(
            argument_spec={
                "jid": {"type": "str", "required": True},
                "progress_file": {"type": "path", "required": True},
                "interval": {"type": "float", "default": 10.0},
                "timeout": {"type": "int", "default": 86400},
                "host": {"type": "str"},
            },
        )
        if args["interval"] < 0 or args["timeout"] < 1:
            raise AnsibleActionFail("interval must be 0 or more and timeout 1 or more seconds")
        host = args["host"] or task_vars.get("inventory_hostname", "")
        deadline = time.monotonic() + args["timeout"]
        lines: t.List[str] = []
        polls = 0
        while True:
            time.sleep(args["interval"])
            polls += 1
            job = self._job(args["jid"], task_vars)
            if job.get("finished") or (job.get("failed") and not job.get("started")):
                break
            if time.monotonic() > deadline:
                raise AnsibleActionFail(
                    "The evacuation of %s (job %s) still runs after %d s of watching; it goes on in the background."
                    % (host, args["jid"], args["timeout"])
                )
            progress = self._progress(args["progress_file"], task_vars)
            if progress is not None:
                line = progress_line(host, progress)
                # On stderr: a stdout callback that prints one document (json, yaml) stays parseable.
                display.display(line, stderr=True)
                if not lines or lines[-1] != line:
                    lines.append(line)
        job.pop("started", None)
        job["finished"] = True
        result.update(job)
        result.update(polls=polls, progress=lines)
        return result
