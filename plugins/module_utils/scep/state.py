# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The scep_enroll state file: a pending transaction, the journal of a key swap, the history of issued certificates.

Nothing secret is kept: a pending request is remembered by its transaction id, subject and public key, and the
request itself (with its challenge password) is signed anew from the task's options when it must be sent again.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import time

from ansible_collections.tokenfleet.pki.plugins.module_utils.files import private_file_args, write_file
from ansible_collections.tokenfleet.pki.plugins.module_utils.scep.message import ScepError
from ansible_collections.tokenfleet.pki.plugins.module_utils.x509 import HAS_CRYPTOGRAPHY, public_key_der

if HAS_CRYPTOGRAPHY:
    from cryptography import x509

VERSION = 2
_PENDING_FIELDS = ('transaction_id', 'message_type', 'action', 'subject', 'public_key')
_SWAP_FIELDS = ('certificate', 'new_key', 'action', 'kind')


def utc_now_text():
    return datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')


class StateFileError(ScepError):
    pass


class _Malformed(ValueError):
    pass


def _require(condition, what):
    if not condition:
        raise _Malformed(what)


def _check_strings(entry, fields, what):
    _require(isinstance(entry, dict), '%s is not an object' % what)
    for field in fields:
        _require(isinstance(entry.get(field), str) and entry[field], '%s has no %s' % (what, field))


def _upgrade_pending(pending):
    """A version 1 pending entry kept the whole request (challenge included): keep only its subject and key."""
    if 'request' in pending:
        csr = x509.load_der_x509_csr(bytes.fromhex(pending.pop('request')))
        pending['subject'] = csr.subject.public_bytes().hex()
        pending['public_key'] = public_key_der(csr.public_key()).hex()
    return pending


def _validated(data):
    """(pending, swap, history) of a parsed state file; ValueError (or what the parsers raise) when malformed."""
    _require(isinstance(data, dict), 'the top level is not an object')
    _require(data.get('version') in (1, VERSION), 'unknown version %r' % (data.get('version'),))
    pending, swap, history = data.get('pending'), data.get('swap'), data.get('history') or []
    if pending is not None:
        _require(isinstance(pending, dict), 'pending is not an object')
        pending = _upgrade_pending(dict(pending))
        _check_strings(pending, _PENDING_FIELDS, 'pending')
        _require(pending['message_type'] in ('PKCSReq', 'RenewalReq'), 'pending has an unknown message_type')
        # null: the request was signed by a throwaway RSA signer (an EC key), which lives in memory only
        _require('signer_certificate' in pending, 'pending has no signer_certificate')
        if pending['signer_certificate'] is not None:
            x509.load_pem_x509_certificate(pending['signer_certificate'].encode('ascii'))
        bytes.fromhex(pending['subject'])
        bytes.fromhex(pending['public_key'])
    if swap is not None:
        _check_strings(swap, _SWAP_FIELDS, 'swap')
        _require(swap['kind'] in ('file', 'token'), 'swap has an unknown kind')
        if swap['kind'] == 'token':
            _check_strings(swap, ('label',), 'swap')
            bytes.fromhex(swap.get('old_id') or '')
        x509.load_pem_x509_certificate(swap['certificate'].encode('ascii'))
        bytes.fromhex(swap['new_key'])
    _require(isinstance(history, list) and all(isinstance(entry, dict) for entry in history),
             'history is not a list of objects')
    return pending, swap, list(history)


class ScepState(object):
    """JSON with ``pending`` (a request the CA has not answered yet), ``swap`` (the journal of a key and certificate
    swap under way: the new certificate and key, replayed by the next run when this one is killed) and ``history``."""

    def __init__(self, path, history_size=20):
        self.path = path
        self.history_size = history_size
        self.pending = None
        self.swap = None
        self.history = []
        self.raw = None
        self.upgraded = False  # a version 1 file whose pending request (challenge included) must be rewritten away
        if not os.path.exists(path):
            return
        try:
            with open(path, 'rb') as handle:
                self.raw = handle.read()
        except OSError as exc:
            raise StateFileError('state_path %s cannot be read: %s' % (path, exc.strerror or exc))
        try:
            data = json.loads(self.raw.decode('utf-8'))
            self.upgraded = isinstance(data, dict) and isinstance(data.get('pending'), dict) and 'request' in data['pending']
            self.pending, self.swap, self.history = _validated(data)
        except (ValueError, TypeError, KeyError, AttributeError, UnicodeError) as exc:
            if isinstance(exc, _Malformed):
                reason = str(exc)
            elif isinstance(exc, json.JSONDecodeError):
                reason = 'not JSON'
            else:
                reason = 'a field holds a value of the wrong form'
            raise StateFileError(
                'state_path %s is not a valid scep_enroll state file (%s). Nothing was changed. Move it away (for '
                'example to %s.broken) and run again: the next run then starts from the certificate and key files '
                'alone, and what the file recorded is lost: the history of issued certificates, and a pending request '
                '(it is sent again as a new one)' % (path, reason, path))

    def content(self):
        return json.dumps(dict(version=VERSION, pending=self.pending, swap=self.swap,
                               history=self.history[-self.history_size:]),
                          indent=2, sort_keys=True).encode('utf-8') + b'\n'

    def add_issued(self, facts):
        entry = dict((key, facts.get(key)) for key in ('serial_number', 'subject', 'not_before', 'not_after',
                                                       'fingerprint_sha256'))
        entry['issued_at'] = utc_now_text()
        self.history.append(entry)
        self.history = self.history[-self.history_size:]

    def save(self, module):
        """Write the state atomically; it is on disk (fsync) before the caller takes the next step."""
        content = self.content()
        if content != self.raw:
            write_file(module, self.path, content, 0o600, private_file_args(module, self.path))
            self.raw = content


class StateLock(object):
    """An exclusive fcntl lock on ``<state_path>.lock`` for the whole run, so that two runs never both enroll.

    A second run waits up to ``seconds`` for the first to finish, then fails naming the state file. The lock file
    is removed when the run ends (a killed run's file is harmless: the lock dies with the process); a waiter that
    got a removed file's lock tries again on the new file.
    """

    def __init__(self, state_path, seconds, interval=0.1):
        self.state_path = state_path
        self.path = state_path + '.lock'
        self.seconds = seconds
        self.interval = interval
        self.fd = None

    def _try(self):
        """True when this process now holds the lock on the file that is at ``self.path``."""
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StateFileError('cannot create the lock file %s beside state_path: %s' % (self.path, exc.strerror or exc))
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self.fd)
            self.fd = None
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            return False
        try:
            same = os.stat(self.path).st_ino == os.fstat(self.fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # the holder removed the file as we opened it: lock the new one
            os.close(self.fd)
            self.fd = None
        return same

    def __enter__(self):
        deadline = time.monotonic() + self.seconds
        while not self._try():
            if time.monotonic() >= deadline:
                raise StateFileError('another run is working on state_path %s (it holds %s) and did not finish within '
                                     '%d seconds (timeout); nothing was changed, run again later'
                                     % (self.state_path, self.path, self.seconds))
            time.sleep(self.interval)
        return self

    def __exit__(self, *exc_info):
        if self.fd is not None:
            os.unlink(self.path)
            os.close(self.fd)  # closing releases the lock
            self.fd = None
