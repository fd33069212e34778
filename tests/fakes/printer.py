# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A simulated network printer for the tests: an HTTPS service that takes a new TLS identity as PKCS#12 and restarts.

It behaves like the printers of the device_certificate role: out of the box it serves TLS with a
self-signed "factory" certificate it generates; an administrator uploads a PKCS#12 (key, certificate,
optionally CA certificates); the printer checks it, answers, "restarts" (stops listening, waits
``restart_delay`` seconds, listens again on the same port) and from then on presents the uploaded
certificate, followed by the PKCS#12's CA certificates ordered as a chain, in every TLS handshake.

In-process use (tests)::

    with FakePrinter(admin_password='s3cret', restart_delay=0.5) as printer:
        printer.url                       # https://127.0.0.1:<port>
        printer.current_certificate()     # the certificate the TLS handshake presents now
        ... POST the PKCS#12 (below) ...
        printer.wait_restarted(timeout=10)  # True once the restart that upload caused is over
        printer.restarts                  # completed restarts
        printer.history                   # every /admin request: HistoryEntry(status, reason, sha256, ...)
        printer.certificates              # every certificate served so far, factory first
        printer.errors                    # unexpected exceptions in the fake (a bug here); [] in a good run

Admin API (HTTPS on the printer's only port; one request per connection, answers carry ``Connection: close``)::

    POST /admin/certificate
        X-Admin-Password: <admin password>     or   Authorization: Basic base64("admin:<admin password>")
        X-PKCS12-Password: <PKCS#12 password>  (leave it out for a PKCS#12 without a password)
        Content-Type: application/x-pkcs12     (not checked)
        Content-Length: <n>                    body: the PKCS#12 file as is (DER), at most 1 MiB

      200  JSON {"status": "accepted", "restart_in_seconds": 0.5, "subject", "issuer", "serial", "not_after",
           "sha256", "chain_length"}; then the printer restarts with the new key and certificate
      401  wrong or missing admin password                    (checked first)
      400  text/plain naming the problem: empty body, not PKCS#12 or wrong PKCS#12 password, no private
           key, no certificate for the key, a key the TLS stack cannot use, a multipart form instead of the file
      411  no Content-Length    413  body over 1 MiB    503  a restart is already under way
      Nothing changes unless the answer is 200.

    GET /admin/certificate (admin password as above)  ->  200 JSON about the certificate served now (+ "pem", "restarts")
    GET /                                             ->  200 text/plain "fake printer <name>"

With curl::

    curl -k --data-binary @printer.p12 -H 'Content-Type: application/x-pkcs12' \\
         -H 'X-Admin-Password: s3cret' -H 'X-PKCS12-Password: p12pass' https://127.0.0.1:<port>/admin/certificate

With Ansible (on the controller, ``delegate_to: localhost``)::

    - ansible.builtin.uri:
        url: "https://127.0.0.1:{{ port }}/admin/certificate"
        method: POST
        src: "{{ bundle_dir }}/{{ inventory_hostname }}.p12"
        headers: {Content-Type: application/x-pkcs12, X-Admin-Password: "{{ admin_password }}", X-PKCS12-Password: "{{ p12_password }}"}
        validate_certs: false
      no_log: true

Header values are read as UTF-8 (ASCII passwords are safest). Manual use: ``python tests/fakes/printer.py --help``.

It listens on 127.0.0.1 only and every wait is bounded: a client gets ``io_timeout`` seconds per
socket operation (TLS handshake included), a restart lets running requests finish for at most
one second, and ``stop()`` wakes the restart wait, closes the listening socket and every connection and
joins its threads. Only the standard library and cryptography are used; nothing from ``plugins/``.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import datetime
import errno
import hmac
import http.server
import ipaddress
import json
import os
import secrets
import signal
import socket
import socketserver
import ssl
import sys
import tempfile
import threading
import time
import typing as t
import urllib.parse

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ADMIN_PATH = '/admin/certificate'
ADMIN_USER = 'admin'
MAX_BODY = 1 << 20
DEFAULT_RESTART_DELAY = 0.5
DEFAULT_IO_TIMEOUT = 10.0
DRAIN_SECONDS = 1.0         # how long a restart lets running requests finish before it closes their connections
JOIN_SECONDS = 5.0          # bound for joining a thread that has been woken
BIND_RETRY_SECONDS = 5.0    # how long a restart retries to listen on its port again (EADDRINUSE)
POLL_INTERVAL = 0.05

STATE_NEW, STATE_SERVING, STATE_RESTARTING, STATE_STOPPED, STATE_FAILED = 'new', 'serving', 'restarting', 'stopped', 'failed'
TLS_KEY_TYPES = (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)


class UploadRejected(Exception):
    """An admin request answered with an error status; nothing was changed."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


@dataclasses.dataclass(frozen=True)
class HistoryEntry:
    """One request to /admin/...: what was asked, how it was answered (no secrets are kept)."""
    time: float                   # time.time() when answered
    method: str
    path: str
    status: int                   # HTTP status of the answer
    reason: str                   # 'accepted', or the error text of a 4xx/5xx answer
    sha256: str | None = None     # fingerprint of the uploaded certificate, when the PKCS#12 held one
    subject: str | None = None


@dataclasses.dataclass(frozen=True)
class TlsIdentity:
    """A key, its certificate and the CA certificates sent after it, and the server context serving them."""
    key: t.Any
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    context: ssl.SSLContext


def fingerprint(certificate: x509.Certificate) -> str:
    """SHA-256 fingerprint of a certificate, lower-case hex without separators."""
    return certificate.fingerprint(hashes.SHA256()).hex()


def certificate_facts(certificate: x509.Certificate) -> dict[str, t.Any]:
    return {
        'subject': certificate.subject.rfc4514_string(),
        'issuer': certificate.issuer.rfc4514_string(),
        'serial': '%x' % certificate.serial_number,
        'not_after': certificate.not_valid_after_utc.isoformat(),
        'sha256': fingerprint(certificate),
    }


def _public_der(public_key: t.Any) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def make_factory_identity(name: str, key_type: str = 'ec') -> TlsIdentity:
    """A fresh self-signed "factory" certificate (CN=<name>, OU=factory default) for 127.0.0.1 and localhost."""
    if key_type == 'rsa':
        key: t.Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif key_type == 'ec':
        key = ec.generate_private_key(ec.SECP256R1())
    else:
        raise ValueError('key_type must be "ec" or "rsa", not %r' % key_type)
    now = datetime.datetime.now(datetime.timezone.utc)
    subject = x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, name),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, 'factory default'),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, 'tokenfleet.pki fake printer'),
    ])
    certificate = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address('127.0.0.1')), x509.DNSName('localhost')]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return TlsIdentity(key, certificate, (), server_context(key, certificate, ()))


def server_context(key: t.Any, certificate: x509.Certificate, chain: t.Sequence[x509.Certificate]) -> ssl.SSLContext:
    """A TLS server context for key + certificate + chain (ssl loads only files: a private temporary directory)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    key_password = secrets.token_bytes(24).hex().encode('ascii')
    with tempfile.TemporaryDirectory(prefix='fake-printer-') as directory:
        cert_path, key_path = os.path.join(directory, 'chain.pem'), os.path.join(directory, 'key.pem')
        with open(cert_path, 'wb') as handle:
            for cert in (certificate,) + tuple(chain):
                handle.write(cert.public_bytes(serialization.Encoding.PEM))
        with open(os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), 'wb') as handle:
            handle.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.BestAvailableEncryption(key_password)))
        context.load_cert_chain(cert_path, key_path, password=key_password)
    return context


def order_chain(certificate: x509.Certificate, others: t.Sequence[x509.Certificate]) -> tuple[x509.Certificate, ...]:
    """The CA certificates in issuing order from the certificate upwards; unrelated ones follow in their order."""
    remaining = list(others)
    chain: list[x509.Certificate] = []
    current = certificate
    while current.issuer != current.subject:
        issuer = next((cert for cert in remaining if cert.subject == current.issuer), None)
        if issuer is None:
            break
        remaining.remove(issuer)
        chain.append(issuer)
        current = issuer
    return tuple(chain + remaining)


def identity_from_pkcs12(data: bytes, password: bytes | None) -> TlsIdentity:
    """Open and check an uploaded PKCS#12; UploadRejected(400, <why>) when it cannot be served."""
    if not data:
        raise UploadRejected(400, 'the request body is empty: send the PKCS#12 file itself as the body')
    try:
        key, certificate, others = pkcs12.load_key_and_certificates(data, password)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        hint = 'no X-PKCS12-Password header was sent' if password is None else 'the X-PKCS12-Password is wrong'
        raise UploadRejected(400, 'cannot open the PKCS#12 (%s): the body is not PKCS#12 or %s' % (exc, hint)) from exc
    if key is None:
        raise UploadRejected(400, 'the PKCS#12 holds no private key (%d certificate(s) only)' % (len(others) + (certificate is not None)))
    if certificate is None:
        if others:
            raise UploadRejected(400, 'none of the %d certificate(s) in the PKCS#12 belongs to its private key' % len(others))
        raise UploadRejected(400, 'the PKCS#12 holds a private key but no certificate')
    if not isinstance(key, TLS_KEY_TYPES):
        raise UploadRejected(400, 'a %s key cannot be used for TLS' % type(key).__name__)
    if _public_der(key.public_key()) != _public_der(certificate.public_key()):
        raise UploadRejected(400, 'the certificate in the PKCS#12 does not belong to its private key')
    chain = order_chain(certificate, others)
    try:
        context = server_context(key, certificate, chain)
    except (ssl.SSLError, ValueError) as exc:
        raise UploadRejected(400, 'the TLS stack cannot use this key and certificate: %s' % exc) from exc
    return TlsIdentity(key, certificate, chain, context)


class FakePrinter:
    """The simulated printer: ``start()``/``stop()`` or a ``with`` block; see the module documentation."""

    def __init__(self, admin_password: str | None = None, restart_delay: float = DEFAULT_RESTART_DELAY, name: str = 'printer',
                 port: int = 0, io_timeout: float = DEFAULT_IO_TIMEOUT, key_type: str = 'ec') -> None:
        if restart_delay < 0:
            raise ValueError('restart_delay must be >= 0')
        if io_timeout <= 0:
            raise ValueError('io_timeout must be > 0')
        self.name = name
        self.host = '127.0.0.1'
        self.port = port
        self.admin_password = secrets.token_urlsafe(18) if admin_password is None else admin_password
        if not self.admin_password:
            raise ValueError('admin_password must not be empty')
        self.restart_delay = float(restart_delay)
        self.io_timeout = float(io_timeout)
        self.restarts = 0
        self.history: list[HistoryEntry] = []
        self.errors: list[str] = []
        self.state = STATE_NEW
        self.factory = make_factory_identity(name, key_type)
        self.certificates: list[x509.Certificate] = [self.factory.certificate]
        self._identity = self.factory
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._serve_thread: threading.Thread | None = None
        self._restart_thread: threading.Thread | None = None
        self._restart_pending = False
        self._restart_go = threading.Event()
        self._listening = False

    # ---------------------------------------------------------------- public API

    @property
    def url(self) -> str:
        return 'https://%s:%d' % (self.host, self.port)

    @property
    def factory_certificate(self) -> x509.Certificate:
        return self.factory.certificate

    @property
    def listening(self) -> bool:
        with self._lock:
            return self._listening

    def current_certificate(self) -> x509.Certificate:
        """The certificate the TLS handshake presents (the old one until a restart has completed)."""
        with self._lock:
            return self._identity.certificate

    def current_chain(self) -> tuple[x509.Certificate, ...]:
        """The CA certificates sent after current_certificate(), in order."""
        with self._lock:
            return self._identity.chain

    def start(self) -> 'FakePrinter':
        with self._lock:
            if self.state != STATE_NEW:
                raise RuntimeError('a FakePrinter starts once (state %s)' % self.state)
            server = _Server(self, (self.host, self.port), self._identity.context)
            self.port = server.server_address[1]
            self._serve(server)
            self.state = STATE_SERVING
        return self

    def stop(self) -> None:
        """Stop at once: wake a restart in progress, close the listening socket and every connection, join the threads."""
        with self._lock:
            if self.state == STATE_NEW:
                self.state = STATE_STOPPED
            self._stopping.set()
            self._restart_go.set()
            restart_thread = self._restart_thread
        self._take_down(drain=0.0)
        if restart_thread is not None and restart_thread is not threading.current_thread():
            restart_thread.join(JOIN_SECONDS + DRAIN_SECONDS)
            if restart_thread.is_alive():
                self._error('the restart thread did not end within %s s' % (JOIN_SECONDS + DRAIN_SECONDS))
        self._take_down(drain=0.0)
        with self._lock:
            self.state = STATE_STOPPED
            self._restart_pending = False
            self._changed.notify_all()

    def __enter__(self) -> 'FakePrinter':
        return self.start()

    def __exit__(self, *exc_info: t.Any) -> None:
        self.stop()

    def wait_restarted(self, timeout: float = 10.0) -> bool:
        """Wait until no restart is pending and the printer listens again; False on timeout, stop or failure."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._restart_pending or self.state != STATE_SERVING:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.state in (STATE_NEW, STATE_STOPPED, STATE_FAILED):
                    return False
                self._changed.wait(remaining)
            return True

    def wait_down(self, timeout: float = 10.0) -> bool:
        """Wait until the printer does not listen (during a restart, or after stop()); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._listening:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(remaining)
            return True

    def status(self) -> dict[str, t.Any]:
        with self._lock:
            facts = certificate_facts(self._identity.certificate)
            facts.update(name=self.name, url=self.url, state=self.state, restarts=self.restarts, chain_length=len(self._identity.chain))
            return facts

    # ---------------------------------------------------------------- used by the handler

    def check_admin(self, given: str | None) -> bool:
        if given is None:
            return False
        return hmac.compare_digest(given.encode('utf-8'), self.admin_password.encode('utf-8'))

    def record(self, entry: HistoryEntry) -> None:
        with self._lock:
            self.history.append(entry)

    def accept(self, identity: TlsIdentity) -> None:
        """Take an uploaded identity: it is served after the restart, which waits for begin_restart()."""
        with self._lock:
            if self._stopping.is_set():
                raise UploadRejected(503, 'the printer is shutting down')
            if self._restart_pending:
                raise UploadRejected(503, 'a restart is already under way; try again after it')
            self._restart_pending = True
            self.state = STATE_RESTARTING
            self._restart_go = threading.Event()
            self._restart_thread = threading.Thread(target=self._restart, args=(identity, self._restart_go),
                                                    name='fake-printer-%d-restart' % self.port, daemon=True)
            self._restart_thread.start()
            self._changed.notify_all()

    def begin_restart(self) -> None:
        """Called by the handler once the 200 answer is out: the restart may take the server down now."""
        with self._lock:
            self._restart_go.set()

    # ---------------------------------------------------------------- internals

    def _error(self, text: str) -> None:
        with self._lock:
            self.errors.append(text)
        sys.stderr.write('fake-printer %s: %s\n' % (self.name, text))

    def _serve(self, server: _Server) -> None:
        """Install a bound server and run its accept loop (called with the lock held)."""
        self._server = server
        self._listening = True
        self._serve_thread = threading.Thread(target=server.serve_forever, kwargs={'poll_interval': POLL_INTERVAL},
                                              name='fake-printer-%d-serve' % self.port, daemon=True)
        self._serve_thread.start()
        self._changed.notify_all()

    def _take_down(self, drain: float) -> None:
        """Stop listening, then close the connections (after up to ``drain`` seconds for running requests)."""
        with self._lock:
            server, thread = self._server, self._serve_thread
            self._server = self._serve_thread = None
        if server is None:
            return
        server.shutdown()           # serve_forever() ends within POLL_INTERVAL
        server.server_close()       # connection refused from here on
        with self._lock:
            self._listening = False
            self._changed.notify_all()
        if thread is not None:
            thread.join(JOIN_SECONDS)
        server.close_connections(drain, self._stopping)
        with self._lock:
            self._changed.notify_all()

    def _restart(self, identity: TlsIdentity, go: threading.Event) -> None:
        try:
            # the handler sets the event right after its answer; bounded in case it died first
            go.wait(self.io_timeout)
            if self._stopping.is_set():
                return
            self._take_down(drain=DRAIN_SECONDS)
            if self._stopping.wait(self.restart_delay):
                return
            server = self._bind_again(identity.context)
            with self._lock:
                if self._stopping.is_set():
                    if server is not None:
                        server.server_close()
                    return
                if server is None:
                    self.state = STATE_FAILED
                    self._restart_pending = False
                    self._changed.notify_all()
                    return
                self._identity = identity
                self.certificates.append(identity.certificate)
                self.restarts += 1
                self._restart_pending = False
                self.state = STATE_SERVING
                self._serve(server)
        except Exception as exc:  # pylint: disable=broad-exception-caught
            self._error('restart failed: %r' % exc)
            with self._lock:
                self.state = STATE_FAILED
                self._restart_pending = False
                self._changed.notify_all()

    def _bind_again(self, context: ssl.SSLContext) -> _Server | None:
        deadline = time.monotonic() + BIND_RETRY_SECONDS
        while True:
            try:
                return _Server(self, (self.host, self.port), context)
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE or time.monotonic() >= deadline:
                    self._error('cannot listen on port %d again: %s' % (self.port, exc))
                    return None
            if self._stopping.wait(POLL_INTERVAL):
                return None


class _Server(http.server.ThreadingHTTPServer):
    """ThreadingHTTPServer with TLS, that tracks its connections and handler threads so that they can be ended."""
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, printer: FakePrinter, address: tuple[str, int], context: ssl.SSLContext) -> None:
        self.printer = printer
        self.tls = context
        self._open_connections: set[ssl.SSLSocket] = set()
        self._handler_threads: list[threading.Thread] = []
        self._tracking = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)     # no reverse DNS lookup (HTTPServer.server_bind calls getfqdn)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def get_request(self) -> tuple[t.Any, t.Any]:
        sock, address = self.socket.accept()
        sock.settimeout(self.printer.io_timeout)
        try:
            # the TLS handshake runs in the handler thread (setup()), so a silent client cannot block accept()
            wrapped = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        except (OSError, ValueError):
            sock.close()
            raise
        with self._tracking:
            self._open_connections.add(wrapped)
        return wrapped, address

    def process_request(self, request: t.Any, client_address: t.Any) -> None:
        thread = threading.Thread(target=self.process_request_thread, args=(request, client_address),
                                  name='fake-printer-%d-conn' % self.server_address[1], daemon=True)
        with self._tracking:
            self._handler_threads = [alive for alive in self._handler_threads if alive.is_alive()]
            self._handler_threads.append(thread)
        thread.start()

    def shutdown_request(self, request: t.Any) -> None:
        with self._tracking:
            self._open_connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: t.Any, client_address: t.Any) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, (ssl.SSLError, ConnectionError, TimeoutError, OSError)):
            return      # clients that refuse the certificate, hang up, time out, or a connection closed by stop()
        self.printer._error('handler error: %r' % error)  # pylint: disable=protected-access

    def close_connections(self, drain: float, stopping: threading.Event) -> None:
        """Let handlers finish for up to ``drain`` seconds (less when ``stopping``), then wake and join the rest."""
        deadline = time.monotonic() + drain
        while time.monotonic() < deadline and not stopping.is_set():
            with self._tracking:
                busy = [thread for thread in self._handler_threads if thread.is_alive()]
            if not busy:
                break
            busy[0].join(POLL_INTERVAL)
        with self._tracking:
            connections, threads = list(self._open_connections), list(self._handler_threads)
        for connection in connections:
            try:
                # the raw socket's shutdown wakes a handler blocked in recv or in the handshake; the handler closes it
                socket.socket.shutdown(connection, socket.SHUT_RDWR)
            except OSError:
                pass
        deadline = time.monotonic() + JOIN_SECONDS
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                self.printer._error('a connection thread did not end within %s s' % JOIN_SECONDS)  # pylint: disable=protected-access


def _header_text(value: str) -> str:
    """http.server decodes header bytes as latin-1; take UTF-8 when the bytes are UTF-8."""
    raw = value.encode('latin-1', 'replace')
    try:
        return raw.decode('utf-8')
    except UnicodeDecodeError:
        return value


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'        # so that curl's "Expect: 100-continue" is answered at once
    server_version = 'FakePrinter/1.0'
    server: _Server

    def setup(self) -> None:
        self.request.do_handshake()
        super().setup()

    def log_message(self, format: str, *args: t.Any) -> None:  # pylint: disable=redefined-builtin
        if os.environ.get('FAKE_PRINTER_VERBOSE'):
            sys.stderr.write('fake-printer %s: %s\n' % (self.server.printer.name, format % args))

    def _send(self, status: int, content_type: str, body: bytes, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header('Content-Type', content_type)
        self.send_header('Content-Length', str(len(body)))
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.send_header('Connection', 'close')
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()
        self.close_connection = True

    def _text(self, status: int, text: str, extra: dict[str, str] | None = None) -> None:
        self._send(status, 'text/plain; charset=utf-8', (text + '\n').encode('utf-8'), extra)

    def _json(self, status: int, document: dict[str, t.Any]) -> None:
        self._send(status, 'application/json', json.dumps(document, indent=2).encode('utf-8'))

    def _read_body(self) -> bytes:
        if 'chunked' in (self.headers.get('Transfer-Encoding') or '').lower():
            raise UploadRejected(411, 'send the PKCS#12 with a Content-Length (chunked bodies are not accepted)')
        length = self.headers.get('Content-Length')
        if length is None:
            raise UploadRejected(411, 'a Content-Length header is required')
        try:
            size = int(length)
        except ValueError as exc:
            raise UploadRejected(400, 'bad Content-Length %r' % length) from exc
        if size < 0:
            raise UploadRejected(400, 'bad Content-Length %r' % length)
        if size > MAX_BODY:
            raise UploadRejected(413, 'the body has %d bytes; at most %d are accepted' % (size, MAX_BODY))
        return self.rfile.read(size)

    def _admin_password(self) -> str | None:
        value = self.headers.get('X-Admin-Password')
        if value is not None:
            return _header_text(value)
        scheme, _sep, token = (self.headers.get('Authorization') or '').partition(' ')
        if scheme.lower() != 'basic':
            return None
        try:
            user, sep, password = base64.b64decode(token.strip(), validate=True).decode('utf-8').partition(':')
        except (ValueError, UnicodeDecodeError):
            return None
        return password if sep and user == ADMIN_USER else None

    def _unauthorized(self) -> UploadRejected:
        return UploadRejected(401, 'wrong or missing admin password (header X-Admin-Password, or HTTP Basic auth as user "%s")' % ADMIN_USER)

    def do_GET(self) -> None:  # pylint: disable=invalid-name
        printer = self.server.printer
        path = urllib.parse.urlsplit(self.path).path
        if path == '/':
            self._text(200, 'fake printer %s' % printer.name)
            return
        if path != ADMIN_PATH:
            self._text(404, 'not found: %s' % path)
            return
        if not printer.check_admin(self._admin_password()):
            error = self._unauthorized()
            printer.record(HistoryEntry(time.time(), 'GET', path, error.status, error.text))
            self._text(error.status, error.text, {'WWW-Authenticate': 'Basic realm="printer admin"'})
            return
        document = printer.status()
        document['pem'] = printer.current_certificate().public_bytes(serialization.Encoding.PEM).decode('ascii')
        printer.record(HistoryEntry(time.time(), 'GET', path, 200, 'ok'))
        self._json(200, document)

    def do_POST(self) -> None:  # pylint: disable=invalid-name
        printer = self.server.printer
        path = urllib.parse.urlsplit(self.path).path
        if path != ADMIN_PATH:
            self._text(404 if path != '/' else 405, 'POST the PKCS#12 to %s' % ADMIN_PATH)
            return
        identity: TlsIdentity | None = None
        try:
            body = self._read_body()    # read before answering, so that the client never writes into a closed connection
            if not printer.check_admin(self._admin_password()):
                raise self._unauthorized()
            if (self.headers.get('Content-Type') or '').lower().startswith('multipart/'):
                raise UploadRejected(400, 'send the PKCS#12 file itself as the body (Content-Type: application/x-pkcs12), not a multipart form')
            p12_password = self.headers.get('X-PKCS12-Password')
            identity = identity_from_pkcs12(body, None if p12_password is None else _header_text(p12_password).encode('utf-8'))
            printer.accept(identity)
        except UploadRejected as exc:
            cert = identity.certificate if identity is not None else None
            printer.record(HistoryEntry(time.time(), 'POST', path, exc.status, exc.text,
                                        fingerprint(cert) if cert else None, cert.subject.rfc4514_string() if cert else None))
            extra = {'WWW-Authenticate': 'Basic realm="printer admin"'} if exc.status == 401 else None
            if exc.status == 503:
                extra = {'Retry-After': str(max(1, int(printer.restart_delay + DRAIN_SECONDS + 1)))}
            self._text(exc.status, exc.text, extra)
            return
        document = dict(status='accepted', restart_in_seconds=printer.restart_delay, chain_length=len(identity.chain),
                        **certificate_facts(identity.certificate))
        printer.record(HistoryEntry(time.time(), 'POST', path, 200, 'accepted', document['sha256'], document['subject']))
        try:
            self._json(200, document)
        finally:
            printer.begin_restart()


# --- CLI --------------------------------------------------------------------------------------

def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Simulated network printer(s) for manual tests: HTTPS on 127.0.0.1 with a self-signed factory certificate; '
                    'POST a PKCS#12 to %s and the printer restarts serving it.' % ADMIN_PATH,
        epilog='Upload: curl -k --data-binary @new.p12 -H "X-Admin-Password: <admin password>" -H "X-PKCS12-Password: <p12 password>" '
               'https://127.0.0.1:<port>%s   (or HTTP Basic auth as user "admin"). 200 = accepted (JSON), then a restart; '
               '401 wrong admin password; 400 bad PKCS#12 (text says why). GET %s (admin) shows the certificate served now.'
               % (ADMIN_PATH, ADMIN_PATH))
    parser.add_argument('--admin-password', default=os.environ.get('FAKE_PRINTER_ADMIN_PASSWORD'),
                        help='admin password (default: $FAKE_PRINTER_ADMIN_PASSWORD, else a random one, printed)')
    parser.add_argument('--count', type=int, default=1, help='number of printers, each on its own port (default 1)')
    parser.add_argument('--port', type=int, default=0, help='port of a single printer (default: a free one)')
    parser.add_argument('--name', default='printer', help='printer name, the factory certificate CN; with --count N: <name>-01 ...')
    parser.add_argument('--restart-delay', type=float, default=DEFAULT_RESTART_DELAY,
                        help='seconds without listening during a restart (default %s)' % DEFAULT_RESTART_DELAY)
    parser.add_argument('--key-type', choices=['ec', 'rsa'], default='ec', help='factory key: EC P-256 (default) or RSA 2048')
    parser.add_argument('--json', action='store_true', help='print one JSON line {"printers": [{name, url, port, admin_password, factory_sha256}]}')
    parser.add_argument('--max-seconds', type=float, default=3600.0, help='stop after this many seconds (default 3600)')
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error('--count must be at least 1')
    if args.port and args.count != 1:
        parser.error('--port needs --count 1')
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    names = [args.name] if args.count == 1 else ['%s-%02d' % (args.name, number) for number in range(1, args.count + 1)]
    printers = [FakePrinter(admin_password=args.admin_password, restart_delay=args.restart_delay, name=name, port=args.port,
                            key_type=args.key_type) for name in names]
    done = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_args: done.set())
    try:
        for printer in printers:
            printer.start()
        if args.json:
            print(json.dumps({'printers': [dict(name=p.name, url=p.url, port=p.port, admin_password=p.admin_password,
                                                factory_sha256=fingerprint(p.factory_certificate)) for p in printers]}), flush=True)
        else:
            for printer in printers:
                print('fake printer %s at %s  admin password: %s  factory certificate SHA-256 %s'
                      % (printer.name, printer.url, printer.admin_password, fingerprint(printer.factory_certificate)), flush=True)
        seen = {printer.name: (0, 0) for printer in printers}

        def report() -> None:
            for printer in printers:
                now = (len(printer.history), printer.restarts)
                for entry in printer.history[seen[printer.name][0]:now[0]]:
                    sys.stderr.write('%s: %s %s -> %d %s\n' % (printer.name, entry.method, entry.path, entry.status, entry.reason))
                if now[1] != seen[printer.name][1]:
                    sys.stderr.write('%s: restarted (%d), now serving %s\n'
                                     % (printer.name, now[1], printer.current_certificate().subject.rfc4514_string()))
                seen[printer.name] = now

        deadline = time.monotonic() + args.max_seconds
        while not done.wait(min(0.2, max(0.0, deadline - time.monotonic()))) and time.monotonic() < deadline:
            report()
        report()
    finally:
        for printer in printers:
            printer.stop()
    return 0


if __name__ == '__main__':
    sys.exit(main())
