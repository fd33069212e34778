# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Hostile answers for the fake KSeF API: ``fake.misbehave(method, path_regex, Behaviour(...))``.

The fake keeps its TLS set-up and answers every other request by the contract, so a client
authenticates normally and meets the hostile answer where the test puts it. Each behaviour records
when it was asked (``times``, time.monotonic()) and stops by itself: a drip ends after ``limit``
seconds, an endless listing after ``cap`` pages, a stream after ``size`` bytes or when the client
hangs up (the fake's sockets also time out).
"""

from __future__ import annotations

import json
import secrets
import threading
import time
import typing as t


class Behaviour:
    """Base: counts the requests it answered."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._lock = threading.Lock()

    @property
    def count(self) -> int:
        return len(self.times)

    def __call__(self, handler: t.Any, ctx: t.Any) -> None:
        with self._lock:
            self.times.append(time.monotonic())
        self.answer(handler, ctx)

    def answer(self, handler: t.Any, ctx: t.Any) -> None:
        raise NotImplementedError

    @staticmethod
    def send(handler: t.Any, status: int, body: bytes, content_type: str = 'application/json',
             headers: t.Sequence[tuple[str, str]] = ()) -> None:
        head = ['HTTP/1.1 %d Hostile' % status, 'Content-Type: %s' % content_type, 'Content-Length: %d' % len(body),
                'Connection: close'] + ['%s: %s' % pair for pair in headers]
        handler.wfile.write(('\r\n'.join(head) + '\r\n\r\n').encode('latin-1') + body)
        handler.wfile.flush()


class Drip(Behaviour):
    """A well-formed 200 JSON answer sent one byte every ``pause`` seconds, status line included."""

    def __init__(self, pause: float = 1.0, limit: float = 60.0) -> None:
        super().__init__()
        self.pause, self.limit = pause, limit
        self.hung_up: float | None = None

    def answer(self, handler: t.Any, ctx: t.Any) -> None:
        body = json.dumps({'tokens': [], 'continuationToken': None}).encode()
        data = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s' % (len(body) + 64, body + b' ' * 64)
        deadline = time.monotonic() + self.limit
        try:
            for byte in data:
                if time.monotonic() > deadline:
                    break
                handler.wfile.write(bytes([byte]))
                handler.wfile.flush()
                time.sleep(self.pause)
        except OSError:
            self.hung_up = time.monotonic()


class Huge(Behaviour):
    """A 200 answer of ``size`` bytes of JSON, announced by Content-Length or not; counts what it could send."""

    def __init__(self, size: int = 60 * 1024 * 1024, announce: bool = False) -> None:
        super().__init__()
        self.size, self.announce = size, announce
        self.sent = 0

    def answer(self, handler: t.Any, ctx: t.Any) -> None:
        head = 'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n'
        if self.announce:
            head += 'Content-Length: %d\r\n' % self.size
        handler.wfile.write((head + '\r\n').encode())
        chunk = b'{"tokens": [' + b' ' * (64 * 1024 - 12)
        while self.sent < self.size:
            handler.wfile.write(chunk)
            self.sent += len(chunk)
            chunk = b' ' * (64 * 1024)
        handler.wfile.flush()


class TooManyRequests(Behaviour):
    """HTTP 429 with ``Retry-After: <retry_after>`` (no header when None) for ``cap`` requests, then the contract."""

    def __init__(self, retry_after: str | t.Callable[[], str] | None, cap: int = 200) -> None:
        super().__init__()
        self.retry_after, self.cap = retry_after, cap

    def answer(self, handler: t.Any, ctx: t.Any) -> None:
        if self.count > self.cap:
            Contract().answer(handler, ctx)
            return
        value = self.retry_after() if callable(self.retry_after) else self.retry_after
        headers = [('Retry-After', value)] if value is not None else []
        body = json.dumps({'title': 'Too Many Requests', 'status': 429, 'detail': 'Przekroczono limit.'}).encode()
        self.send(handler, 429, body, 'application/problem+json', headers)


class EndlessPages(Behaviour):
    """GET /tokens pages of one valid token, each with a new continuation token (or always ``repeat``), for
    ``cap`` pages; then a last page. Each page comes ``delay`` seconds after its request."""

    def __init__(self, repeat: str | None = None, cap: int = 3000, delay: float = 0.0) -> None:
        super().__init__()
        self.repeat, self.cap, self.delay = repeat, cap, delay

    def answer(self, handler: t.Any, ctx: t.Any) -> None:
        number = self.count
        time.sleep(self.delay)
        item = {'referenceNumber': '20260101-EC-%010X-%010X-%02X' % (number, secrets.randbits(40), number % 256),
                'authorIdentifier': {'type': 'Nip', 'value': '5265877635'},
                'contextIdentifier': {'type': 'Nip', 'value': '5265877635'},
                'description': 'Endless %d' % number, 'requestedPermissions': ['InvoiceRead'],
                'dateCreated': '2026-01-01T00:00:00+00:00', 'lastUseDate': None, 'status': 'Active', 'statusDetails': []}
        page: dict[str, t.Any] = {'tokens': [item]}
        if number < self.cap:
            page['continuationToken'] = self.repeat or 'page-%d-%s' % (number, secrets.token_hex(4))
        self.send(handler, 200, json.dumps(page).encode())


class Answer(Behaviour):
    """A fixed answer: ``status``, ``body`` (bytes, or an object sent as JSON) and ``content_type``."""

    def __init__(self, status: int, body: t.Any, content_type: str = 'application/json') -> None:
        super().__init__()
        self.status, self.content_type = status, content_type
        self.body = body if isinstance(body, bytes) else json.dumps(body).encode()

    def answer(self, handler: t.Any, ctx: t.Any) -> None:
        self.send(handler, self.status, self.body, self.content_type)


class Contract(Behaviour):
    """The contract's answer, then changed: ``status`` and ``transform(parsed JSON) -> JSON`` (either optional).

    With status=500 the operation is done (a token made) but the client hears of a server error.
    """

    def __init__(self, status: int | None = None, transform: t.Callable[[t.Any], t.Any] | None = None,
                 body: bytes | None = None) -> None:
        super().__init__()
        self.status, self.transform, self.body = status, transform, body
        self.replies: list[t.Any] = []

    def answer(self, handler: t.Any, ctx: t.Any) -> None:
        reply = handler.server.fake.dispatch(ctx)
        self.replies.append(reply)
        body = reply.body
        if self.transform is not None:
            body = json.dumps(self.transform(json.loads(body))).encode()
        if self.body is not None:
            body = self.body
        content_type = reply.content_type or 'application/json'
        self.send(handler, self.status or reply.status, body, content_type, reply.headers)
