# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The scep_enroll state file: a pending transaction and the history of issued certificates."""

from __future__ import annotations

import datetime
import json
import os

from ansible_collections.tokenfleet.pki.plugins.module_utils.files import private_file_args, write_file
from ansible_collections.tokenfleet.pki.plugins.module_utils.scep.message import ScepError

VERSION = 1


def utc_now_text():
    return datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')


class ScepState(object):
    """JSON with ``pending`` (transaction id, request, signer certificate, key reference) and ``history``."""

    def __init__(self, path, history_size=20):
        self.path = path
        self.history_size = history_size
        self.pending = None
        self.history = []
        self.raw = None
        if os.path.exists(path):
            try:
                with open(path, 'rb') as handle:
                    self.raw = handle.read()
                data = json.loads(self.raw.decode('utf-8'))
                self.pending = data.get('pending')
                self.history = list(data.get('history') or [])
            except (OSError, ValueError, AttributeError) as exc:
                raise ScepError('state_path %s is not a scep_enroll state file (%s); move it away to start over'
                                % (path, exc))

    def content(self):
        return json.dumps(dict(version=VERSION, pending=self.pending, history=self.history[-self.history_size:]),
                          indent=2, sort_keys=True).encode('utf-8') + b'\n'

    def add_issued(self, facts):
        entry = dict((key, facts.get(key)) for key in ('serial_number', 'subject', 'not_before', 'not_after',
                                                       'fingerprint_sha256'))
        entry['issued_at'] = utc_now_text()
        self.history.append(entry)
        self.history = self.history[-self.history_size:]

    def save(self, module):
        content = self.content()
        if content != self.raw:
            write_file(module, self.path, content, 0o600, private_file_args(module, self.path))
            self.raw = content
