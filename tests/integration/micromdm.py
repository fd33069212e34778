# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A real micromdm ``scepserver`` (Debian package ``scep``, v2.1.0) per test, and ``scepclient`` runs.

``MicromdmScepServer`` initialises a CA depot with ``scepserver ca -init``, starts ``scepserver``
on a free port with ``-debug -log-json`` (stdout and stderr appended to ``<directory>/scepserver.log``),
waits until it answers GetCACaps and stops it again (SIGTERM, SIGKILL after a bounded wait).

PKIOperation requests are counted from that log: the endpoint middleware of scepserver writes one
JSON line ``{"caller": "endpoint.go:...", "op": "PKIOperation", ...}`` for every request to ``/scep``
whose message could be decoded, whatever the outcome (CertRep SUCCESS or FAILURE, or HTTP 500 for an
unparsable message), and writes it before the HTTP response is sent, so the count is exact as soon as
the client has its answer. A GET PKIOperation whose ``message`` is not base64 never reaches the
endpoint; the HTTP error logger writes ``{"component": "http", "err": "illegal base64 data ..."}``
instead, and those lines are counted as well. Requests to another path (404) or with another HTTP
method (405) are not logged by scepserver and are not SCEP requests. Not countable: a POST whose body
could not be read (client hung up mid-body), logged without the operation name.

scepserver 2.1.0 has only ``-port`` (no bind address; ``-http-addr`` came in v2.2.0), so it listens on
all interfaces of the machine while a test runs; the tests talk to it on 127.0.0.1.

Fixture: ``micromdm`` (factory, see its docstring). conftest.py can re-export it with
``from micromdm import micromdm  # noqa: F401  pylint: disable=unused-import``.
"""

from __future__ import annotations

import atexit
import dataclasses
import datetime
import hashlib
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import time
import typing as t
import urllib.request
import weakref

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from harness import die_with_parent, free_port

SCEPSERVER = 'scepserver'
SCEPCLIENT = 'scepclient'
START_TIMEOUT = 10.0
"""Seconds to wait for a started scepserver to answer GetCACaps."""
STOP_TIMEOUT = 5.0
"""Seconds to wait after SIGTERM (and again after SIGKILL) for scepserver to exit."""
CA_INIT_TIMEOUT = 60.0
SCEPCLIENT_TIMEOUT = 60.0
PORT_ATTEMPTS = 5

# GET PKIOperation requests whose message could not be decoded (transport.go message()):
# base64.StdEncoding.DecodeString or url.PathUnescape failed; only PKIOperation decodes its message.
_UNDECODABLE_MESSAGE = re.compile(r'^(illegal base64 data|invalid URL escape)')

_RUNNING: weakref.WeakSet = weakref.WeakSet()
# the server is local: never send its requests through an http_proxy from the environment
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@atexit.register
def _stop_leftovers() -> None:
    """Last resort if a fixture teardown never ran (e.g. the interpreter is exiting on an error)."""
    for server in list(_RUNNING):
        server.stop()


def missing_tools() -> list[str]:
    """The micromdm binaries (and openssl) that are not on PATH."""
    return [tool for tool in (SCEPSERVER, SCEPCLIENT, 'openssl') if shutil.which(tool) is None]


def _parse_openssl_time(value: str) -> datetime.datetime | None:
    if not value:
        return None
    # index.txt uses YYMMDDHHMMSSZ (micromdm always writes two-digit years)
    return datetime.datetime.strptime(value, '%y%m%d%H%M%SZ').replace(tzinfo=datetime.timezone.utc)


@dataclasses.dataclass(frozen=True)
class IssuedCertificate:
    """One line of the depot's index.txt and the certificate file it names."""

    status: str
    """'V' (valid) or 'R' (revoked in index.txt: micromdm marks older entries with the same DN)."""
    not_after: datetime.datetime
    revoked_at: datetime.datetime | None
    serial: int
    filename: str
    subject: str
    """OpenSSL-style DN as micromdm writes it, e.g. ``/C=US/O=scep-client/OU=MDM/CN=host1``."""
    path: str
    pem: bytes | None
    """Content of the certificate file, None if the file is missing."""

    @property
    def certificate(self) -> x509.Certificate | None:
        return x509.load_pem_x509_certificate(self.pem) if self.pem else None


@dataclasses.dataclass
class ScepclientRun:
    """Result of run_scepclient()."""

    returncode: int
    stdout: str
    stderr: str
    seconds: float
    command: list[str]
    certificate_path: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


class MicromdmScepServer:
    """A micromdm scepserver with its own CA depot under ``directory``.

    ``start()`` / ``stop()`` or ``with MicromdmScepServer(...) as server:``. Stopping and starting
    again keeps the depot, the log (and so the counts) and the port.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        challenge: str | None = None,
        allowrenew: int = 0,
        crtvalid: int = 365,
        ca_key_size: int = 2048,
        start_timeout: float = START_TIMEOUT,
        stop_timeout: float = STOP_TIMEOUT,
    ) -> None:
        self.directory = os.fspath(directory)
        self.challenge = challenge
        self.allowrenew = allowrenew
        self.crtvalid = crtvalid
        self.ca_key_size = ca_key_size
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.depot = os.path.join(self.directory, 'depot')
        self.log_path = os.path.join(self.directory, 'scepserver.log')
        self.port: int | None = None
        self.process: subprocess.Popen | None = None
        self._log_file: t.BinaryIO | None = None

    # --- CA -----------------------------------------------------------------------------------

    def init_ca(self) -> None:
        """``scepserver ca -init`` into the depot unless it already holds ca.pem (start() calls this)."""
        if os.path.exists(os.path.join(self.depot, 'ca.pem')):
            return
        os.makedirs(self.directory, exist_ok=True)
        command = [SCEPSERVER, 'ca', '-init', '-depot', self.depot, '-keySize', str(self.ca_key_size),
                   '-years', '10', '-organization', 'tokenfleet test', '-organizational_unit', 'micromdm SCEP CA',
                   '-country', 'NO']
        completed = subprocess.run(command, cwd=self.directory, stdin=subprocess.DEVNULL, capture_output=True,
                                   text=True, check=False, timeout=CA_INIT_TIMEOUT)
        if completed.returncode != 0 or not os.path.exists(os.path.join(self.depot, 'ca.pem')):
            raise RuntimeError('%s failed (rc=%d):\n%s%s'
                               % (' '.join(command), completed.returncode, completed.stdout, completed.stderr))

    @property
    def ca_pem(self) -> bytes:
        with open(os.path.join(self.depot, 'ca.pem'), 'rb') as pem:
            return pem.read()

    @property
    def ca_pem_path(self) -> str:
        return os.path.join(self.depot, 'ca.pem')

    @property
    def ca_certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.ca_pem)

    @property
    def ca_fingerprint_sha256(self) -> str:
        """SHA-256 of the CA certificate (DER), colon-separated lowercase hex (``ab:cd:...``)."""
        digest = self.ca_fingerprint_sha256_hex
        return ':'.join(digest[i:i + 2] for i in range(0, len(digest), 2))

    @property
    def ca_fingerprint_sha256_hex(self) -> str:
        """SHA-256 of the CA certificate (DER), plain lowercase hex (what scepclient -ca-fingerprint takes)."""
        return hashlib.sha256(self.ca_certificate.public_bytes(serialization.Encoding.DER)).hexdigest()

    # --- process ------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError('scepserver has not been started')
        return 'http://127.0.0.1:%d/scep' % self.port

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def command(self) -> list[str]:
        command = [SCEPSERVER, '-depot', self.depot, '-port', str(self.port), '-allowrenew', str(self.allowrenew),
                   '-crtvalid', str(self.crtvalid), '-debug', '-log-json']
        if self.challenge is not None:
            command += ['-challenge', self.challenge]
        return command

    def start(self) -> MicromdmScepServer:
        """Start scepserver (CA first if needed) and wait until it answers GetCACaps; returns self."""
        if self.running:
            return self
        self.init_ca()
        fixed_port = self.port is not None
        attempts = 1 if fixed_port else PORT_ATTEMPTS
        for attempt in range(attempts):
            if not fixed_port:
                self.port = free_port()
            log_offset = os.path.getsize(self.log_path) if os.path.exists(self.log_path) else 0
            self._spawn()
            failure = self._wait_ready()
            if failure is None:
                return self
            self.stop()
            log = self.log_text()[log_offset:]
            if 'address already in use' in log and attempt + 1 < attempts:
                continue  # another process took the port between free_port() and the bind
            raise RuntimeError('scepserver did not start (%s): %s\n--- %s ---\n%s'
                               % (failure, ' '.join(self._redacted_command()), self.log_path, log))
        raise AssertionError('unreachable')  # pragma: no cover

    def _spawn(self) -> None:
        os.makedirs(self.directory, exist_ok=True)
        # one O_APPEND file description for stdout and stderr: every log line is one write()
        self._log_file = open(self.log_path, 'ab')  # pylint: disable=consider-using-with
        kwargs: dict[str, t.Any] = {}
        if sys.platform.startswith('linux'):
            kwargs['preexec_fn'] = die_with_parent
        self.process = subprocess.Popen(  # pylint: disable=consider-using-with
            self.command(), cwd=self.directory, stdin=subprocess.DEVNULL, stdout=self._log_file,
            stderr=subprocess.STDOUT, **kwargs)
        _RUNNING.add(self)

    def _wait_ready(self) -> str | None:
        """None once GetCACaps answers, else why not (process exited or timeout)."""
        deadline = time.monotonic() + self.start_timeout
        last_error = 'no attempt'
        while True:
            if self.process.poll() is not None:
                return 'exited with status %s' % self.process.returncode
            try:
                caps = self.get('GetCACaps', timeout=1.0)
                if b'POSTPKIOperation' in caps:
                    return None
                last_error = 'unexpected GetCACaps answer %r' % caps
            except (OSError, http.client.HTTPException) as exc:  # URLError is an OSError
                last_error = str(exc)
            if time.monotonic() >= deadline:
                return 'no GetCACaps answer within %.0f s, last error: %s' % (self.start_timeout, last_error)
            time.sleep(0.05)

    def _redacted_command(self) -> list[str]:
        command = self.command()
        if self.challenge is not None:
            command[command.index('-challenge') + 1] = '<challenge>'
        return command

    def stop(self) -> None:
        """Terminate scepserver: SIGTERM, then SIGKILL if it has not exited after stop_timeout. Idempotent."""
        process, self.process = self.process, None
        try:
            if process is not None and process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=self.stop_timeout)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=self.stop_timeout)
        finally:
            _RUNNING.discard(self)
            if self._log_file is not None:
                self._log_file.close()
                self._log_file = None

    def __enter__(self) -> MicromdmScepServer:
        return self.start()

    def __exit__(self, *exc_info: t.Any) -> None:
        self.stop()

    def get(self, operation: str, message: str | None = None, timeout: float = 5.0) -> bytes:
        """A plain GET ``/scep?operation=...`` (GetCACaps, GetCACert); raises on HTTP errors."""
        query = 'operation=' + operation + ('' if message is None else '&message=' + message)
        with _NO_PROXY.open(self.url + '?' + query, timeout=timeout) as response:
            return response.read()

    def post(self, operation: str, body: bytes, timeout: float = 5.0) -> bytes:
        """A plain POST ``/scep?operation=...`` with ``body``; raises on HTTP errors."""
        request = urllib.request.Request(self.url + '?operation=' + operation, data=body, method='POST',
                                         headers={'Content-Type': 'application/x-pki-message'})
        with _NO_PROXY.open(request, timeout=timeout) as response:
            return response.read()

    # --- depot --------------------------------------------------------------------------------

    def issued(self) -> list[IssuedCertificate]:
        """The depot's index.txt, in order, with each certificate file read."""
        index = os.path.join(self.depot, 'index.txt')
        if not os.path.exists(index):
            return []
        result = []
        with open(index, encoding='utf-8') as lines:
            for line in lines:
                line = line.rstrip('\n')
                if not line:
                    continue
                fields = line.split('\t')
                if len(fields) != 6:
                    raise ValueError('unexpected line in %s: %r' % (index, line))
                status, not_after, revoked_at, serial, filename, subject = fields
                path = os.path.join(self.depot, filename)
                pem = None
                if os.path.exists(path):
                    with open(path, 'rb') as certificate:
                        pem = certificate.read()
                result.append(IssuedCertificate(
                    status=status, not_after=_parse_openssl_time(not_after), revoked_at=_parse_openssl_time(revoked_at),
                    serial=int(serial, 16), filename=filename, subject=subject, path=path, pem=pem))
        return result

    def issued_files(self) -> list[str]:
        """Names of the certificate files in the depot (everything but ca.pem, ca.key, index.txt, serial)."""
        return sorted(name for name in os.listdir(self.depot)
                      if name.endswith('.pem') and name != 'ca.pem')

    # --- log ----------------------------------------------------------------------------------

    def log_text(self) -> str:
        if not os.path.exists(self.log_path):
            return ''
        with open(self.log_path, encoding='utf-8', errors='replace') as log:
            return log.read()

    def log_records(self) -> list[dict[str, t.Any]]:
        """The JSON log lines as dicts (non-JSON lines such as Go panics or fmt.Println output are skipped)."""
        records = []
        for line in self.log_text().splitlines():
            if not line.startswith('{'):
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                records.append(record)
        return records

    def operation_count(self, operation: str) -> int:
        """Requests for ``operation`` that reached scepserver's endpoint (one "op" log line each)."""
        return sum(1 for record in self.log_records() if record.get('op') == operation)

    def pkioperation_count(self) -> int:
        """Every PKIOperation request the server has received (see the module docstring)."""
        count = 0
        for record in self.log_records():
            if record.get('op') == 'PKIOperation':
                count += 1
            elif record.get('component') == 'http' and _UNDECODABLE_MESSAGE.match(str(record.get('err') or '')):
                count += 1
        return count

    def pki_messages(self) -> list[dict[str, str]]:
        """Parsed pkiMessages in order: ``{'message_type': 'PKCSReq (19)', 'transaction_id': ...}``."""
        return [dict(message_type=record.get('scep_message_type', ''), transaction_id=record.get('transaction_id', ''))
                for record in self.log_records() if record.get('msg') == 'parsed scep pkiMessage']

    def errors(self) -> list[str]:
        """Signer and service errors logged so far (e.g. 'failed to sign CSR: invalid challenge')."""
        found = []
        for record in self.log_records():
            if record.get('msg') == 'failed to sign CSR':
                found.append('failed to sign CSR: %s' % record.get('err'))
            elif record.get('component') == 'scep_service' and record.get('err'):
                found.append('%s: %s' % (record.get('method'), record.get('err')))
        return found


def run_scepclient(
    server: MicromdmScepServer,
    directory: str | os.PathLike,
    cn: str,
    challenge: str | None = None,
    private_key: str | os.PathLike | None = None,
    ca_fingerprint: str | None = None,
    extra_args: t.Sequence[str] = (),
    timeout: float = SCEPCLIENT_TIMEOUT,
) -> ScepclientRun:
    """Enroll with micromdm's own scepclient; the certificate lands in ``<directory>/client.pem``.

    scepclient creates the key (PKCS#1 RSA, ``-keySize`` 2048) when ``private_key`` does not exist and
    caches csr.pem / self.pem next to it. ``ca_fingerprint`` defaults to the server's CA (plain hex).
    It makes GetCACert, GetCACaps and one PKIOperation per attempt (it only resends on PENDING,
    which micromdm never answers).
    """
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    key = os.fspath(private_key) if private_key is not None else os.path.join(directory, 'key.pem')
    certificate = os.path.join(directory, 'client.pem')
    command = [SCEPCLIENT, '-server-url', server.url, '-private-key', key, '-certificate', certificate, '-cn', cn,
               '-ca-fingerprint', ca_fingerprint or server.ca_fingerprint_sha256_hex]
    if challenge is not None:
        command += ['-challenge', challenge]
    command += list(extra_args)
    started = time.monotonic()
    completed = subprocess.run(command, cwd=directory, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                               check=False, timeout=timeout)
    seconds = time.monotonic() - started
    return ScepclientRun(completed.returncode, completed.stdout, completed.stderr, seconds, command, certificate)


@pytest.fixture
def micromdm(tmp_path) -> t.Iterator[t.Callable[..., MicromdmScepServer]]:
    """Factory ``micromdm(challenge=None, allowrenew=0, crtvalid=365, ca_key_size=2048)``.

    Returns a started MicromdmScepServer with a fresh CA under ``<tmp>/micromdm[-N]``; every server the
    test started is stopped at teardown, also when the test failed.
    """
    missing = missing_tools()
    if missing:
        pytest.fail('micromdm SCEP tools not installed (%s); run "make deps"' % ', '.join(missing))
    servers: list[MicromdmScepServer] = []

    def start(**kwargs: t.Any) -> MicromdmScepServer:
        name = 'micromdm' if not servers else 'micromdm-%d' % len(servers)
        server = MicromdmScepServer(tmp_path / name, **kwargs)
        servers.append(server)
        return server.start()

    try:
        yield start
    finally:
        for server in reversed(servers):
            server.stop()
