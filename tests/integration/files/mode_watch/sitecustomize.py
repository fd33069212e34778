# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Test helper (not part of the collection): every mode the files of one directory have while a module runs.

Python imports this as ``sitecustomize`` when PYTHONPATH names this directory. In a module process (an
``AnsiballZ_*.py``) with TOKENFLEET_MODE_WATCH_DIR and TOKENFLEET_MODE_WATCH_LOG set, an audit hook runs before every
audited operation (open, os.chmod, os.chown, os.rename, os.link, os.utime, os.setxattr, ...) and notes the mode of
each file in the directory; at exit one JSON line ``{name: [modes]}`` is appended to the log. A file's mode or name
changes only by such an operation, so what is noted before each one (and at exit) is every mode a file had, in
every moment of the run, however short.
"""

from __future__ import annotations

import atexit
import json
import os
import stat
import sys

_SEEN: dict[str, set[int]] = {}
_BUSY = []


def _note(directory):
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return
    for entry in entries:
        try:
            mode = stat.S_IMODE(entry.stat(follow_symlinks=False).st_mode)
        except OSError:  # gone meanwhile
            continue
        _SEEN.setdefault(entry.name, set()).add(mode)


def _install(directory, log):
    def hook(event, args):  # pylint: disable=unused-argument
        if _BUSY:
            return
        _BUSY.append(event)
        try:
            _note(directory)
        finally:
            _BUSY.pop()

    def report():
        _BUSY.append('exit')
        _note(directory)
        with open(log, 'a', encoding='utf-8') as output:
            output.write(json.dumps(dict((name, sorted(modes)) for name, modes in _SEEN.items())) + '\n')

    sys.addaudithook(hook)
    atexit.register(report)


if (os.environ.get('TOKENFLEET_MODE_WATCH_DIR') and os.environ.get('TOKENFLEET_MODE_WATCH_LOG')
        and os.path.basename(sys.argv[0] if sys.argv else '').startswith('AnsiballZ_')):
    _install(os.environ['TOKENFLEET_MODE_WATCH_DIR'], os.environ['TOKENFLEET_MODE_WATCH_LOG'])
