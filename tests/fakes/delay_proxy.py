# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A TCP proxy on 127.0.0.1 in front of a SCEP server that holds each PKIOperation reply for a while.

The tests use it to time a ``kill -9`` against the moment the CA's reply reaches the module: the proxy reads
the whole reply from the server, announces when it will forward it (``next_reply()``), waits until then and
forwards it. Other requests (GetCACaps, GetCACert) pass at once. One request per connection (urllib sends
``Connection: close``). Every loop is bounded: accept and socket timeouts, a lifetime after which it stops.
"""

from __future__ import annotations

import queue
import socket
import threading
import time
import typing as t

READ_LIMIT = 4 * 1024 * 1024


def _read_request(conn: socket.socket) -> bytes:
    data = b''
    while b'\r\n\r\n' not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
        if len(data) > READ_LIMIT:
            raise ValueError('request headers too large')
    head, body = data.split(b'\r\n\r\n', 1)
    length = 0
    for line in head.split(b'\r\n')[1:]:
        name, dummy, value = line.partition(b':')
        if name.strip().lower() == b'content-length':
            length = int(value.strip())
    if length > READ_LIMIT:
        raise ValueError('request body too large')
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b'\r\n\r\n' + body


def _read_all(sock: socket.socket) -> bytes:
    data = b''
    while len(data) <= READ_LIMIT:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


class DelayProxy:
    """``DelayProxy(target_port, hold=0.3).start()``; ``url`` is the proxied SCEP URL.

    ``next_reply(timeout)`` blocks until the server has answered a PKIOperation and returns the
    ``time.monotonic()`` at which the proxy forwards that answer (``hold`` seconds after it arrived).
    ``pki_operations`` counts the PKIOperation requests that went through.

    ``gate_after(n)``: the replies after the first ``n`` are held until ``open_gate()`` (or ``stop()``), so that a test
    can act while requests are known to be in flight; ``held`` counts the replies waiting there.
    """

    def __init__(self, target_port: int, hold: float = 0.3, path: str = '/scep', lifetime: float = 900.0) -> None:
        self.target_port = target_port
        self.hold = hold
        self.path = path
        self.lifetime = lifetime
        self.pki_operations = 0
        self.forwarded: list[float] = []
        self._replies: queue.Queue[float] = queue.Queue()
        self._stop = threading.Event()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(('127.0.0.1', 0))
        self._listener.listen(16)
        self._listener.settimeout(0.2)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._gate_after: int | None = None
        self._gate = threading.Event()
        self._gate.set()
        self.held = 0

    @property
    def port(self) -> int:
        return self._listener.getsockname()[1]

    @property
    def url(self) -> str:
        return 'http://127.0.0.1:%d%s' % (self.port, self.path)

    def start(self) -> DelayProxy:
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._gate.set()
        if self._thread is not None:
            self._thread.join(5)
        self._listener.close()

    def __enter__(self) -> DelayProxy:
        return self.start()

    def __exit__(self, *exc_info: t.Any) -> None:
        self.stop()

    def gate_after(self, replies: int) -> None:
        self._gate_after = replies
        self._gate.clear()

    def open_gate(self) -> None:
        self._gate.set()

    def next_reply(self, timeout: float) -> float | None:
        """When the next held PKIOperation reply is forwarded (monotonic clock), None if none came in ``timeout``."""
        try:
            return self._replies.get(timeout=timeout)
        except queue.Empty:
            return None

    def _serve(self) -> None:
        ends = time.monotonic() + self.lifetime
        while not self._stop.is_set() and time.monotonic() < ends:
            try:
                conn, dummy = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(30)
        try:
            request = _read_request(conn)
            if not request:
                return
            pki_operation = b'PKIOperation' in request.split(b'\r\n', 1)[0]
            with socket.create_connection(('127.0.0.1', self.target_port), timeout=30) as upstream:
                upstream.sendall(request)
                reply = _read_all(upstream)
            if pki_operation:
                with self._lock:
                    self.pki_operations += 1
                    gated = self._gate_after is not None and self.pki_operations > self._gate_after
                    self.held += gated
                while gated and not self._gate.wait(0.2) and not self._stop.is_set():
                    pass
                with self._lock:
                    self.held -= gated
                forward_at = time.monotonic() + self.hold
                self._replies.put(forward_at)
                self._stop.wait(max(0.0, forward_at - time.monotonic()))
                self.forwarded.append(time.monotonic())
            conn.sendall(reply)
        except (OSError, ValueError):
            pass  # the client was killed, or the server went away: nothing to forward
        finally:
            conn.close()
