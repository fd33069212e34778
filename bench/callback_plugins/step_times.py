# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
name: step_times
type: aggregate
short_description: When each task of a playbook run started, and when the run ended (bench helper)
description:
  - Bench helper of tokenfleet.pki (bench/report_bench.py), not part of the collection.
  - Writes to the file named by O(path) a JSON object whose C(steps) are [task name, seconds since the playbook
    started] for every task start and [null, seconds] at the end, so that each step's wall time is the gap to the
    next, and whose C(inner) are the [step, seconds] a task timed itself (a result's C(seconds), as
    tokenfleet.pki.fleet_report returns them).
  - Does nothing when O(path) is not set.
options:
  path:
    description: The JSON file to write.
    type: path
    env:
      - name: TOKENFLEET_STEP_TIMES
"""

import json
import time

from ansible.plugins.callback import CallbackBase


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = 'aggregate'
    CALLBACK_NAME = 'step_times'
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._started = time.monotonic()
        self._steps = []
        self._inner = []

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._steps.append([task.get_name(), time.monotonic() - self._started])

    def v2_runner_on_ok(self, result):
        """The controller steps tokenfleet.pki.fleet_report times itself, as [["<task> / <step>", seconds]]."""
        data = getattr(result, 'result', None)
        data = data if isinstance(data, dict) else result._result  # pylint: disable=protected-access
        if isinstance(data.get('seconds'), dict):
            self._inner = [['%s / %s' % (result.task_name, name), value] for name, value in data['seconds'].items()]

    def v2_playbook_on_stats(self, stats):
        self._steps.append([None, time.monotonic() - self._started])
        path = self.get_option('path')
        if path:
            with open(path, 'w', encoding='utf-8') as output:
                json.dump(dict(steps=self._steps, inner=self._inner), output)
