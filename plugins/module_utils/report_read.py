# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""What the fleet report reads of one host: its certificate, scep_enroll state file and failure record, in one pass.

Standard library only: it runs on the managed host inside the fleet_report_host module (one module call per host)
and on the controller for hosts whose files are there (no module call). Every read problem is returned as text,
never raised, so that one broken host does not stop the report. Private to the collection.
"""

from __future__ import annotations

import json

FAILURE_KEYS = ('time', 'task', 'reason')
ARGUMENT_SPEC = dict(
    certificate_path=dict(type='path', required=True), state_path=dict(type='path'), error_path=dict(type='path'),
    on_controller=dict(type='bool', default=False), group=dict(type='str', default='workstations'),
    renew_before=dict(type='raw'), now=dict(type='str'))
"""The options of tokenfleet.pki.fleet_report_host: the module and its action plugin check them alike."""


def _read(path):
    """(content, None, True), or (None, why not, whether the file exists)."""
    try:
        with open(path, 'rb') as handle:
            return handle.read(), None, True
    except FileNotFoundError:
        return None, 'File not found: %s' % path, False
    except IsADirectoryError:
        return None, 'Source is a directory and must be a file: %s' % path, True
    except PermissionError:
        return None, 'File is not readable: %s' % path, True
    except OSError as exc:
        return None, '%s cannot be read: %s' % (path, exc.strerror or exc), True


def _json(data):
    """The JSON value of ``data``, or raises ValueError (UnicodeDecodeError and JSONDecodeError are ValueErrors)."""
    return json.loads(data.decode('utf-8'))


def host_paths(certificate_path, state_path=None, error_path=None):
    """(certificate, state file, failure record): by default the last two are named after the certificate."""
    return certificate_path, state_path or certificate_path + '.scep.json', error_path or certificate_path + '.error.json'


def read_host_files(certificate_path, state_path, error_path):
    """The certificate text and only what the report needs of the other two files; read errors as text.

    The state file may hold a pending request, the failure record the reason of a failed run. Neither is returned
    whole: of the state only whether a request is pending, its transaction id and start time; of the failure record
    its time, task and reason, the fields the roles write (see docs/failure-and-recovery.md).
    """
    result = dict(certificate_path=certificate_path, state_path=state_path, error_path=error_path, certificate=None,
                  certificate_error=None, certificate_found=False, pending=False, pending_transaction=None,
                  pending_since=None, state_error=None, last_run_failed=False, failure={})
    content, error, found = _read(certificate_path)
    result['certificate_found'] = found
    if content is not None:
        result['certificate'] = content.decode('utf-8', 'replace')
    else:
        result['certificate_error'] = error

    content, error, found = _read(state_path)
    if content is None and found:
        result['state_error'] = 'state file: %s' % error
    elif content is not None:
        try:
            state = _json(content)
        except ValueError as exc:
            result['state_error'] = 'state file %s is not a scep_enroll state file: %s' % (state_path, exc)
        else:
            pending = state.get('pending') if isinstance(state, dict) else None
            result['pending'] = bool(pending)
            if isinstance(pending, dict):
                result['pending_transaction'] = pending.get('transaction_id')
                result['pending_since'] = pending.get('started_at')

    content, error, found = _read(error_path)
    if content is not None:
        try:
            record = _json(content)
        except ValueError:  # a record that is not JSON leaves the row without a last error, as before
            record = None
        if isinstance(record, dict) and record:
            result['last_run_failed'] = True
            result['failure'] = dict((key, record[key]) for key in FAILURE_KEYS if key in record)
    return result
