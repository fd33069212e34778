# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
name: record_results
type: aggregate
short_description: Record every task result as a JSON line (test harness)
description:
  - Test helper of the tokenfleet.pki integration tests, not part of the collection.
  - Appends one JSON object per finished task to the file named by O(path), in the order
    the tasks finish. Loop items are not recorded separately; the task's final result
    (with its C(results) list) is.
  - "Each line is an object with the keys C(task) (the task name), C(host), C(status)
    (V(ok), V(failed), V(skipped) or V(unreachable)), C(changed) (boolean) and C(result)
    (the result dict as callbacks receive it)."
  - Does nothing when O(path) is not set.
options:
  path:
    description: File to append the JSON lines to.
    type: path
    env:
      - name: TOKENFLEET_RECORD_RESULTS
"""

import json
from collections.abc import Mapping, Set

from ansible.plugins.callback import CallbackBase


def _plain(value):
    """A JSON-native copy of value: ansible's str/int subclasses (tagged or unsafe values)
    become plain str/int, bytes are decoded, and anything else unknown becomes its repr()."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, bytes):
        return value.decode('utf-8', errors='replace')
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, Set)):
        return [_plain(item) for item in value]
    return repr(value)


def _result_data(result):
    """The result dict of a task result (``result`` since ansible-core 2.19, ``_result`` before)."""
    data = getattr(result, 'result', None)
    if not isinstance(data, Mapping):
        data = result._result  # pylint: disable=protected-access
    return dict(data)


def _host_name(result):
    host = getattr(result, 'host', None) or result._host  # pylint: disable=protected-access
    return host.get_name()


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = 'aggregate'
    CALLBACK_NAME = 'record_results'
    CALLBACK_NEEDS_ENABLED = True

    def _record(self, result, status):
        path = self.get_option('path')
        if not path:
            return
        data = _result_data(result)
        record = {
            'task': result.task_name,
            'host': _host_name(result),
            'status': status,
            'changed': bool(data.get('changed', False)),
            'result': data,
        }
        line = json.dumps(_plain(record), sort_keys=True)
        with open(path, 'a', encoding='utf-8') as output:
            output.write(line + '\n')

    def v2_runner_on_ok(self, result):
        self._record(result, 'ok')

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._record(result, 'failed')

    def v2_runner_on_skipped(self, result):
        self._record(result, 'skipped')

    def v2_runner_on_unreachable(self, result):
        self._record(result, 'unreachable')
