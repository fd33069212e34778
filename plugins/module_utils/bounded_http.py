# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""What SCEP and KSeF share about talking to a server that may be slow, broken or hostile.

- ``NetworkBudget``: one ``timeout`` for all the requests of a run. A socket timeout alone bounds
  each read, so a server that drips one byte a second holds a run for ever; the budget arms a
  timer (SIGALRM) around each request and its reading, and charges the time spent to the run.
- ``read_capped``: an answer is read up to a size limit, never whole.
- ``server_text``: text a server sent, made safe to put in a message: control characters and
  terminal escapes removed, cut to about 200 characters.

Private to the collection.
"""

from __future__ import annotations

import contextlib
import re
import signal
import threading
import time

from ansible_collections.tokenfleet.pki.plugins.module_utils.common import PkiError

SERVER_TEXT_LIMIT = 200
_ESCAPES = re.compile(r'\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)?|[@-Z\\-_])')
_CONTROLS = re.compile(r'[\x00-\x1f\x7f-\x9f]+')


class BudgetExpired(Exception):
    """Raised inside ``NetworkBudget.bound()`` when the run's timeout is used up.

    Deliberately not an OSError or PkiError: urllib wraps OSErrors, and callers must not mistake
    this for a server's answer. Each client turns it into its own message naming the timeout.
    """


class AnswerTooLarge(PkiError):
    """An answer over the size limit; the message names what was read and the limit."""


class NetworkBudget(object):
    """``seconds`` of network time for a whole run, spent across all its requests.

    Deliberate waits between requests (poll intervals, Retry-After) are not network time and are
    bounded by their own options.
    """

    def __init__(self, seconds):
        self.seconds = float(seconds)
        self.spent = 0.0

    def remaining(self):
        return self.seconds - self.spent

    def socket_timeout(self):
        """The timeout to give a connection: never more than what is left (at least a moment)."""
        return max(0.001, min(self.seconds, self.remaining()))

    @contextlib.contextmanager
    def bound(self):
        """Run the block with what is left of the budget; BudgetExpired when it runs out inside."""
        remaining = self.remaining()
        if remaining <= 0:
            raise BudgetExpired()
        armed = threading.current_thread() is threading.main_thread()
        previous = None
        if armed:
            def expire(signum, frame):
                raise BudgetExpired()

            previous = signal.signal(signal.SIGALRM, expire)
            signal.setitimer(signal.ITIMER_REAL, remaining)
        start = time.monotonic()
        try:
            yield
        finally:
            if armed:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, previous)
            self.spent += time.monotonic() - start


def read_capped(response, limit, what):
    """At most ``limit`` bytes of ``response``; AnswerTooLarge names ``what`` when the answer is longer."""
    length = response.headers.get('Content-Length') if getattr(response, 'headers', None) is not None else None
    if length is not None and length.strip().isdigit() and int(length) > limit:
        raise AnswerTooLarge('%s: the answer announces %s bytes, more than the limit of %d bytes' % (what, length.strip(), limit))
    data = response.read(limit + 1)
    if len(data) > limit:
        raise AnswerTooLarge('%s: the answer is longer than the limit of %d bytes' % (what, limit))
    return data


def server_text(value, limit=SERVER_TEXT_LIMIT):
    """``value`` (bytes or text from a server) as one safe line of at most about ``limit`` characters."""
    if value is None:
        return ''
    if isinstance(value, bytes):
        value = value[:limit * 8].decode('utf-8', 'replace')
    text = _CONTROLS.sub(' ', _ESCAPES.sub('', str(value)[:limit * 8]))
    text = ' '.join(text.split())
    if len(text) > limit:
        text = text[:limit].rstrip() + '...'
    return text
