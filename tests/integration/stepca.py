# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A real step-ca (smallstep certificates 0.19.0) with a SCEP provisioner per test, on 127.0.0.1 only.

Debian ships step-ca as a library (``golang-github-smallstep-certificates-dev``); ``make deps`` builds
the binary offline from our own main package ``tests/stepca/main.go`` into ``.tmp/stepca/step-ca``
(``STEPCA_BINARY`` in the environment overrides that path).

PKI (``make_pki()``, once per test session as the ``stepca_pki`` fixture): an RSA root and an RSA
intermediate made with ``cryptography``, laid out as ``step ca init`` does: ``certs/root_ca.crt``,
``certs/intermediate_ca.crt``, ``secrets/intermediate_ca_key`` (PKCS#8, encrypted with the random
password in ``secrets/password``, handed to step-ca with ``--password-file``). SCEP needs RSA there:
step-ca decrypts requests and signs replies with the intermediate's key.

Server (``StepCaServer``): its own ``STEPPATH`` (``<directory>/step``) with ``config/ca.json`` and a
bbolt database; one provisioner of type SCEP (random challenge, optional ``includeRoot``, certificate
lifetime 24 h unless ``lifetime`` is given) and no other (no JWK, ACME or admin provisioner, admin API
off). ``address`` (HTTPS: the step-ca API, SCEP too) and ``insecureAddress`` (plain HTTP, where SCEP
clients go) are both ``127.0.0.1:<free port>``; nothing else listens (no profiling or metrics
address, no linked CA). step-ca 0.19 serves SCEP under ``/scep/<provisioner name>``, on both.

Counting: ``logger.format = json`` makes step-ca write one JSON line per HTTP request to stderr (here
``<directory>/stepca.log``), written by its logging middleware before the handler returns, so before
the client has the whole answer. For a PKIOperation that ended in a certificate the line carries the
certificate (``certificate``: base64 DER, with ``serial``, ``valid-from``, ``valid-to``, ...); a
rejection carries ``error`` (e.g. ``wrong password provided``). ``issued()`` reads the certificates
from there, ``pkioperation_count()`` the requests.

step-ca logs no SCEP message type. With ``record=True`` the server's ``url`` points at a small
recording proxy (plain HTTP on 127.0.0.1, a thread of the test process) in front of step-ca's HTTP
port, and ``pki_messages()`` reads messageType and transactionID from the signed attributes of each
request (readable without decrypting), e.g. to tell a RenewalReq from a PKCSReq.

Fixtures: ``stepca_pki`` (session) and ``stepca`` (factory, see its docstring); conftest.py registers
this module in ``pytest_plugins``.
"""

from __future__ import annotations

import atexit
import base64
import dataclasses
import datetime
import hashlib
import http.client
import http.server
import json
import os
import shutil
import ssl
import subprocess
import sys
import threading
import time
import typing as t
import urllib.parse
import urllib.request
import weakref

import pytest
from asn1crypto import cms, core
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from harness import REPO_ROOT, die_with_parent, free_port, random_pin

STEPCA_BINARY = os.environ.get('STEPCA_BINARY') or os.path.join(REPO_ROOT, '.tmp', 'stepca', 'step-ca')
PROVISIONER = 'tokenfleet'
DEFAULT_LIFETIME = datetime.timedelta(hours=24)
"""step-ca's default certificate lifetime (``defaultTLSCertDuration`` of its global claims)."""
BACKDATE = datetime.timedelta(minutes=1)
"""step-ca sets notBefore this much before the signing time (``authority.backdate``, default 1 m); notAfter is signing time + lifetime."""
STEPCA_MIN_LIFETIME = datetime.timedelta(minutes=5)
STEPCA_MAX_LIFETIME = datetime.timedelta(hours=24)
"""step-ca's default bounds (``minTLSCertDuration``, ``maxTLSCertDuration``); widened for a ``lifetime`` outside them."""
START_TIMEOUT = 20.0
"""Seconds to wait for a started step-ca to answer on both its ports."""
STOP_TIMEOUT = 5.0
"""Seconds to wait after SIGTERM (and again after SIGKILL) for step-ca to exit."""
PORT_ATTEMPTS = 5

PROXY_UPSTREAM_TIMEOUT = 60.0
"""Seconds the recording proxy waits for step-ca's answer."""
MESSAGE_TYPES = {'3': 'CertRep', '17': 'RenewalReq', '19': 'PKCSReq', '20': 'CertPoll', '21': 'GetCert', '22': 'GetCRL'}
OID_MESSAGE_TYPE = '2.16.840.1.113733.1.9.2'
OID_TRANSACTION_ID = '2.16.840.1.113733.1.9.7'

_RUNNING: weakref.WeakSet = weakref.WeakSet()
# the server is local: never send its requests through an http_proxy from the environment
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@atexit.register
def _stop_leftovers() -> None:
    """Last resort if a fixture teardown never ran (e.g. the interpreter is exiting on an error)."""
    for server in list(_RUNNING):
        server.stop()


def fingerprint(certificate: x509.Certificate) -> str:
    """SHA-256 of the certificate (DER), colon-separated lowercase hex (``ab:cd:...``)."""
    digest = fingerprint_hex(certificate)
    return ':'.join(digest[i:i + 2] for i in range(0, len(digest), 2))


def fingerprint_hex(certificate: x509.Certificate) -> str:
    """SHA-256 of the certificate (DER), plain lowercase hex (what step and scepclient take)."""
    return hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).hexdigest()


def go_duration(value: datetime.timedelta) -> str:
    """A timedelta as a Go duration string (``"86400s"``), as step-ca's claims take it."""
    seconds = int(value.total_seconds())
    if seconds <= 0 or seconds != value.total_seconds():
        raise ValueError('a step-ca certificate lifetime must be a positive number of whole seconds, not %r' % value)
    return '%ds' % seconds


# --- PKI ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class StepCaPki:
    """A root and an intermediate CA in the files step-ca reads (see the module docstring)."""

    directory: str
    root_key: rsa.RSAPrivateKey
    """Kept in memory only (step-ca does not need it); for tests that make other certificates under the root."""
    root_certificate: x509.Certificate
    intermediate_key: rsa.RSAPrivateKey
    intermediate_certificate: x509.Certificate

    @property
    def root_pem_path(self) -> str:
        return os.path.join(self.directory, 'certs', 'root_ca.crt')

    @property
    def intermediate_pem_path(self) -> str:
        return os.path.join(self.directory, 'certs', 'intermediate_ca.crt')

    @property
    def chain_pem_path(self) -> str:
        """Intermediate then root, one PEM file."""
        return os.path.join(self.directory, 'certs', 'ca_chain.crt')

    @property
    def intermediate_key_path(self) -> str:
        return os.path.join(self.directory, 'secrets', 'intermediate_ca_key')

    @property
    def password_path(self) -> str:
        return os.path.join(self.directory, 'secrets', 'password')

    @property
    def root_fingerprint(self) -> str:
        return fingerprint(self.root_certificate)

    @property
    def root_fingerprint_hex(self) -> str:
        return fingerprint_hex(self.root_certificate)

    @property
    def intermediate_fingerprint(self) -> str:
        return fingerprint(self.intermediate_certificate)

    @property
    def intermediate_fingerprint_hex(self) -> str:
        return fingerprint_hex(self.intermediate_certificate)


def _ca_certificate(subject: x509.Name, key: rsa.RSAPrivateKey, issuer: x509.Certificate | None, signer: rsa.RSAPrivateKey,
                    path_length: int, days: int) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    public_key = key.public_key()
    builder = (x509.CertificateBuilder().subject_name(subject)
               .issuer_name(subject if issuer is None else issuer.subject).public_key(public_key)
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                                            encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False))
    authority_key = public_key if issuer is None else issuer.public_key()
    builder = builder.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(authority_key), critical=False)
    return builder.sign(signer, hashes.SHA256())


def _write(path: str, data: bytes, mode: int) -> None:
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(descriptor, 'wb') as output:
        output.write(data)


def make_pki(directory: str | os.PathLike, key_size: int = 2048, name: str = 'tokenfleet step-ca') -> StepCaPki:
    """A new RSA root ("<name> Root CA", 10 years) and intermediate ("<name> Intermediate CA", 5 years) under ``directory``."""
    directory = os.fspath(directory)
    organization = x509.NameAttribute(NameOID.ORGANIZATION_NAME, 'tokenfleet test')
    root_key = rsa.generate_private_key(public_exponent=65537, key_size=key_size)
    root = _ca_certificate(x509.Name([organization, x509.NameAttribute(NameOID.COMMON_NAME, name + ' Root CA')]),
                           root_key, None, root_key, path_length=1, days=3650)
    intermediate_key = rsa.generate_private_key(public_exponent=65537, key_size=key_size)
    intermediate = _ca_certificate(x509.Name([organization, x509.NameAttribute(NameOID.COMMON_NAME, name + ' Intermediate CA')]),
                                   intermediate_key, root, root_key, path_length=0, days=1825)
    pki = StepCaPki(directory, root_key, root, intermediate_key, intermediate)
    password = random_pin(32)
    root_pem = root.public_bytes(serialization.Encoding.PEM)
    intermediate_pem = intermediate.public_bytes(serialization.Encoding.PEM)
    _write(pki.root_pem_path, root_pem, 0o644)
    _write(pki.intermediate_pem_path, intermediate_pem, 0o644)
    _write(pki.chain_pem_path, intermediate_pem + root_pem, 0o644)
    _write(pki.password_path, password.encode('ascii'), 0o600)
    _write(pki.intermediate_key_path, intermediate_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(password.encode('ascii'))), 0o600)
    return pki


def verify_chain(pki: StepCaPki | StepCaServer, certificate_path: str | os.PathLike) -> tuple[bool, str]:
    """openssl verify with the root as the only trust anchor and the intermediate as untrusted chain: (ok, output)."""
    completed = subprocess.run(['openssl', 'verify', '-CAfile', pki.root_pem_path, '-untrusted', pki.intermediate_pem_path,
                                os.fspath(certificate_path)], capture_output=True, text=True, timeout=30, check=False)
    output = completed.stdout + completed.stderr
    return completed.returncode == 0 and completed.stdout.strip().endswith(': OK'), output


# --- server -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class IssuedCertificate:
    """A certificate step-ca issued, from its request log."""

    serial: int
    subject: str
    """The subject's common name, as step-ca logs it."""
    provisioner: str
    path: str
    """The request path (``/scep/<provisioner>?operation=PKIOperation``)."""
    certificate: x509.Certificate


def log_text(log_path: str | os.PathLike) -> str:
    """A step-ca log as text ('' while there is none)."""
    if not os.path.exists(log_path):
        return ''
    with open(log_path, encoding='utf-8', errors='replace') as log:
        return log.read()


def log_records(log_path: str | os.PathLike) -> list[dict[str, t.Any]]:
    """The JSON lines of a step-ca log (``logger.format = json``: one per HTTP request); its plain start-up lines are skipped.

    Module level, for logs of a step-ca that a test did not start itself (the demo's).
    """
    records = []
    for line in log_text(log_path).splitlines():
        if line.startswith('{'):
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
    return records


def scep_requests(log_path: str | os.PathLike, operation: str | None = None) -> list[dict[str, t.Any]]:
    """Log records of requests to the SCEP endpoint, of ``operation`` if given."""
    found = []
    for record in log_records(log_path):
        parsed = urllib.parse.urlsplit(str(record.get('path', '')))
        if not parsed.path.startswith('/scep/'):
            continue
        if operation is None or urllib.parse.parse_qs(parsed.query).get('operation') == [operation]:
            found.append(record)
    return found


def issued_certificates(log_path: str | os.PathLike) -> list[IssuedCertificate]:
    """The certificates a step-ca logged as issued, in order."""
    result = []
    for record in log_records(log_path):
        if 'certificate' not in record:
            continue
        certificate = x509.load_der_x509_certificate(base64.b64decode(record['certificate']))
        result.append(IssuedCertificate(serial=certificate.serial_number, subject=str(record.get('subject', '')),
                                        provisioner=str(record.get('provisioner', '')), path=str(record.get('path', '')),
                                        certificate=certificate))
    return result


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    """Forwards one request to step-ca, keeping a copy of each PKIOperation request (bodies sent with Content-Length)."""

    server: RecordingProxy

    def do_GET(self) -> None:  # pylint: disable=invalid-name
        self._forward()

    do_POST = do_GET

    def _forward(self) -> None:
        length = int(self.headers.get('Content-Length') or 0)
        body = self.rfile.read(length) if length else b''
        if urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query).get('operation') == ['PKIOperation']:
            with self.server.lock:
                self.server.recorded.append((self.command, self.path, body))
        headers = {'Content-Type': self.headers['Content-Type']} if self.headers.get('Content-Type') else {}
        upstream = http.client.HTTPConnection('127.0.0.1', self.server.upstream_port, timeout=PROXY_UPSTREAM_TIMEOUT)
        try:
            upstream.request(self.command, self.path, body=body if self.command == 'POST' else None, headers=headers)
            response = upstream.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as exc:
            self.send_error(502, 'step-ca did not answer the recording proxy: %s' % exc)
            return
        finally:
            upstream.close()
        self.send_response(response.status, response.reason)
        if response.getheader('Content-Type'):
            self.send_header('Content-Type', response.getheader('Content-Type'))
        self.send_header('Content-Length', str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: t.Any) -> None:  # pylint: disable=redefined-builtin
        """Quiet: step-ca's own log has every request."""


class RecordingProxy(http.server.ThreadingHTTPServer):
    """Plain HTTP on 127.0.0.1:<a port the kernel picks> in front of step-ca's HTTP port (see the module docstring).

    Appends ``(method, path, body)`` of each PKIOperation request to ``recorded`` (under ``lock``).
    """

    daemon_threads = True

    def __init__(self, upstream_port: int, recorded: list[tuple[str, str, bytes]], lock: threading.Lock) -> None:
        super().__init__(('127.0.0.1', 0), _ProxyHandler)
        self.upstream_port = upstream_port
        self.recorded = recorded
        self.lock = lock
        self._thread = threading.Thread(target=self.serve_forever, kwargs=dict(poll_interval=0.1), daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return self.server_address[1]

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(timeout=STOP_TIMEOUT)


def pki_message_attributes(body: bytes) -> dict[str, str]:
    """``{'message_type': 'PKCSReq (19)', 'transaction_id': ...}`` from a pkiMessage's signed attributes.

    A body that is no SignedData with those attributes gives ``message_type`` ``'unparsable'``.
    """
    found = dict(message_type='', transaction_id='')
    try:
        for attribute in cms.ContentInfo.load(body)['content']['signer_infos'][0]['signed_attrs']:
            oid, value = attribute['type'].dotted, attribute['values'][0]
            if oid == OID_MESSAGE_TYPE:
                number = value.parse(core.PrintableString).native
                found['message_type'] = '%s (%s)' % (MESSAGE_TYPES.get(number, 'unknown'), number)
            elif oid == OID_TRANSACTION_ID:
                found['transaction_id'] = value.parse(core.PrintableString).native
    except (ValueError, TypeError, KeyError, IndexError):
        return dict(message_type='unparsable', transaction_id='')
    return found if found['message_type'] else dict(found, message_type='unparsable')


def missing_tools() -> list[str]:
    """The step-ca binary (and openssl) if missing."""
    missing = [] if os.access(STEPCA_BINARY, os.X_OK) else [STEPCA_BINARY]
    return missing + [tool for tool in ('openssl',) if shutil.which(tool) is None]


class StepCaServer:
    """A step-ca with its own configuration and database under ``directory`` and the CA of ``pki``.

    ``start()`` / ``stop()`` or ``with StepCaServer(...) as server:``. Stopping and starting again keeps
    the configuration, the database, the log (and so the counts) and the ports.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        pki: StepCaPki,
        challenge: str | None = None,
        lifetime: datetime.timedelta | None = None,
        include_root: bool = False,
        provisioner: str = PROVISIONER,
        record: bool = False,
        start_timeout: float = START_TIMEOUT,
        stop_timeout: float = STOP_TIMEOUT,
    ) -> None:
        """``challenge``: random (32 letters and digits) unless given; ``lifetime``: step-ca's 24 h unless given;
        ``include_root``: the provisioner's ``includeRoot`` (GetCACert sends the root after the intermediate);
        ``record``: ``url`` goes through a RecordingProxy (a new port at each start), for pki_messages()."""
        self.directory = os.fspath(directory)
        self.pki = pki
        self.challenge = random_pin(32) if challenge is None else challenge
        self.lifetime = lifetime
        self.include_root = include_root
        self.provisioner = provisioner
        self.record = record
        self.proxy: RecordingProxy | None = None
        self._recorded: list[tuple[str, str, bytes]] = []
        self._recorded_lock = threading.Lock()
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.steppath = os.path.join(self.directory, 'step')
        self.config_path = os.path.join(self.steppath, 'config', 'ca.json')
        self.log_path = os.path.join(self.directory, 'stepca.log')
        self.https_port: int | None = None
        self.http_port: int | None = None
        self.process: subprocess.Popen | None = None
        self._log_file: t.BinaryIO | None = None

    # --- the CA's certificates (see StepCaPki) -------------------------------------------------

    @property
    def root_pem_path(self) -> str:
        return self.pki.root_pem_path

    @property
    def intermediate_pem_path(self) -> str:
        return self.pki.intermediate_pem_path

    @property
    def root_certificate(self) -> x509.Certificate:
        return self.pki.root_certificate

    @property
    def intermediate_certificate(self) -> x509.Certificate:
        return self.pki.intermediate_certificate

    @property
    def root_fingerprint(self) -> str:
        return self.pki.root_fingerprint

    @property
    def intermediate_fingerprint(self) -> str:
        return self.pki.intermediate_fingerprint

    # --- configuration -------------------------------------------------------------------------

    def provisioner_config(self) -> dict[str, t.Any]:
        provisioner: dict[str, t.Any] = {
            'type': 'SCEP',
            'name': self.provisioner,
            'challenge': self.challenge,
            'minimumPublicKeyLength': 2048,
        }
        if self.include_root:
            provisioner['includeRoot'] = True
        if self.lifetime is not None:
            provisioner['claims'] = {
                'defaultTLSCertDuration': go_duration(self.lifetime),
                'minTLSCertDuration': go_duration(min(self.lifetime, STEPCA_MIN_LIFETIME)),
                'maxTLSCertDuration': go_duration(max(self.lifetime, STEPCA_MAX_LIFETIME)),
            }
        return provisioner

    def config(self) -> dict[str, t.Any]:
        """The ca.json (with the challenge in it: the file is 0600, in the test's own directory)."""
        return {
            'root': self.pki.root_pem_path,
            'crt': self.pki.intermediate_pem_path,
            'key': self.pki.intermediate_key_path,
            'address': '127.0.0.1:%d' % self.https_port,
            'insecureAddress': '127.0.0.1:%d' % self.http_port,
            'dnsNames': ['127.0.0.1', 'localhost'],
            'logger': {'format': 'json'},
            'db': {'type': 'bbolt', 'dataSource': os.path.join(self.steppath, 'db', 'ca.db')},
            'authority': {'provisioners': [self.provisioner_config()], 'enableAdmin': False},
        }

    def write_config(self) -> None:
        os.makedirs(os.path.join(self.steppath, 'db'), mode=0o700, exist_ok=True)
        _write(self.config_path, (json.dumps(self.config(), indent=2) + '\n').encode('utf-8'), 0o600)

    # --- process -------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The SCEP URL for clients: ``direct_url``, or the recording proxy's while ``record`` is on."""
        if self.proxy is not None:
            return self._scep_url(self.proxy.port)
        return self.direct_url

    @property
    def direct_url(self) -> str:
        """The SCEP URL on step-ca's plain HTTP port: ``http://127.0.0.1:<port>/scep/<provisioner>``."""
        if self.http_port is None:
            raise RuntimeError('step-ca has not been started')
        return self._scep_url(self.http_port)

    def _scep_url(self, port: int) -> str:
        return 'http://127.0.0.1:%d/scep/%s' % (port, urllib.parse.quote(self.provisioner, safe=''))

    @property
    def https_url(self) -> str:
        """The step-ca API (HTTPS, server certificate from the intermediate): ``https://127.0.0.1:<port>``."""
        if self.https_port is None:
            raise RuntimeError('step-ca has not been started')
        return 'https://127.0.0.1:%d' % self.https_port

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def command(self) -> list[str]:
        return [STEPCA_BINARY, '--password-file', self.pki.password_path, self.config_path]

    def start(self) -> StepCaServer:
        """Write ca.json, start step-ca and wait until both ports answer; returns self."""
        if self.running:
            return self
        fixed_ports = self.http_port is not None
        attempts = 1 if fixed_ports else PORT_ATTEMPTS
        for attempt in range(attempts):
            if not fixed_ports:
                self.https_port, self.http_port = free_port(), free_port()
                while self.http_port == self.https_port:
                    self.http_port = free_port()
            self.write_config()
            log_offset = os.path.getsize(self.log_path) if os.path.exists(self.log_path) else 0
            self._spawn()
            failure = self._wait_ready()
            if failure is None:
                if self.record:
                    self.proxy = RecordingProxy(self.http_port, self._recorded, self._recorded_lock)
                return self
            self.stop()
            log = self.log_text()[log_offset:]
            if 'address already in use' in log and attempt + 1 < attempts:
                continue  # another process took a port between free_port() and the bind
            raise RuntimeError('step-ca did not start (%s): %s\n--- %s ---\n%s'
                               % (failure, ' '.join(self.command()), self.log_path, log))
        raise AssertionError('unreachable')  # pragma: no cover

    def _spawn(self) -> None:
        os.makedirs(self.directory, exist_ok=True)
        # one O_APPEND file description for stdout and stderr: every log line is one write()
        self._log_file = open(self.log_path, 'ab')  # pylint: disable=consider-using-with
        # HOME and STEPPATH: step-ca creates $STEPPATH (default ~/.step) and reads contexts from there
        env = dict(PATH=os.environ.get('PATH', '/usr/bin:/bin'), HOME=self.directory, STEPPATH=self.steppath)
        kwargs: dict[str, t.Any] = {}
        if sys.platform.startswith('linux'):
            kwargs['preexec_fn'] = die_with_parent
        self.process = subprocess.Popen(  # pylint: disable=consider-using-with
            self.command(), cwd=self.directory, env=env, stdin=subprocess.DEVNULL, stdout=self._log_file,
            stderr=subprocess.STDOUT, **kwargs)
        _RUNNING.add(self)

    def _wait_ready(self) -> str | None:
        """None once SCEP GetCACaps (HTTP) and /health (HTTPS) answer, else why not (process exited or timeout)."""
        deadline = time.monotonic() + self.start_timeout
        last_error = 'no attempt'
        while True:
            if self.process.poll() is not None:
                return 'exited with status %s' % self.process.returncode
            try:
                caps = self._open(self.direct_url + '?operation=GetCACaps', timeout=1.0)[1]
                health = self.https_get('/health', timeout=1.0)
                if b'POSTPKIOperation' in caps and b'"ok"' in health:
                    return None
                last_error = 'unexpected answers: GetCACaps %r, /health %r' % (caps, health)
            except (OSError, http.client.HTTPException) as exc:  # URLError and ssl.SSLError are OSErrors
                last_error = str(exc)
            if time.monotonic() >= deadline:
                return 'no answer within %.0f s, last error: %s' % (self.start_timeout, last_error)
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop the proxy; terminate step-ca: SIGTERM, then SIGKILL if it has not exited after stop_timeout. Idempotent."""
        process, self.process = self.process, None
        proxy, self.proxy = self.proxy, None
        try:
            if proxy is not None:
                proxy.stop()
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

    def __enter__(self) -> StepCaServer:
        return self.start()

    def __exit__(self, *exc_info: t.Any) -> None:
        self.stop()

    # --- requests ------------------------------------------------------------------------------

    def request(self, operation: str, method: str = 'GET', body: bytes | None = None,
                timeout: float = 5.0) -> tuple[str, bytes]:
        """A plain SCEP request to ``url``; returns (Content-Type, body); raises on HTTP errors."""
        headers = {} if body is None else {'Content-Type': 'application/x-pki-message'}
        return self._open(urllib.request.Request(self.url + '?operation=' + operation, data=body, method=method,
                                                 headers=headers), timeout)

    @staticmethod
    def _open(request: urllib.request.Request | str, timeout: float) -> tuple[str, bytes]:
        with _NO_PROXY.open(request, timeout=timeout) as response:
            return response.headers.get('Content-Type', ''), response.read()

    def get(self, operation: str, timeout: float = 5.0) -> bytes:
        """GET ``url?operation=...`` (GetCACaps, GetCACert): the body."""
        return self.request(operation, timeout=timeout)[1]

    def https_get(self, path: str, timeout: float = 5.0) -> bytes:
        """GET on the HTTPS API, the server certificate verified against the root."""
        context = ssl.create_default_context(cafile=self.pki.root_pem_path)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context))
        with opener.open(self.https_url + path, timeout=timeout) as response:
            return response.read()

    # --- log -----------------------------------------------------------------------------------

    def log_text(self) -> str:
        return log_text(self.log_path)

    def log_records(self) -> list[dict[str, t.Any]]:
        """The JSON lines of the log (see log_records())."""
        return log_records(self.log_path)

    def scep_requests(self, operation: str | None = None) -> list[dict[str, t.Any]]:
        """Log records of requests to the SCEP endpoint, of ``operation`` if given."""
        return scep_requests(self.log_path, operation)

    def pkioperation_count(self) -> int:
        """Every PKIOperation request step-ca has received, whatever its outcome."""
        return len(self.scep_requests('PKIOperation'))

    def issued(self) -> list[IssuedCertificate]:
        """The certificates issued so far, in order."""
        return issued_certificates(self.log_path)

    def issued_count(self) -> int:
        return len(self.issued())

    def pki_messages(self) -> list[dict[str, str]]:
        """The POST PKIOperation requests that went through the recording proxy, in order (see pki_message_attributes())."""
        if not self.record:
            raise RuntimeError('start the server with record=True to see its pkiMessages')
        with self._recorded_lock:
            recorded = list(self._recorded)
        return [pki_message_attributes(body) for method, dummy, body in recorded if method == 'POST']

    def errors(self) -> list[str]:
        """The ``error`` of every request that had one (e.g. ``wrong password provided``)."""
        return [str(record['error']) for record in self.log_records() if record.get('error')]


@pytest.fixture(scope='session')
def stepca_pki(tmp_path_factory) -> StepCaPki:
    """The session's step-ca PKI (RSA root and intermediate, see make_pki())."""
    return make_pki(tmp_path_factory.mktemp('stepca-pki'))


@pytest.fixture
def stepca(tmp_path, stepca_pki) -> t.Iterator[t.Callable[..., StepCaServer]]:  # pylint: disable=redefined-outer-name
    """Factory ``stepca(challenge=None, lifetime=None, include_root=False, provisioner='tokenfleet', record=False)``.

    Returns a started StepCaServer under ``<tmp>/stepca[-N]`` with the session's PKI (``stepca_pki``), a
    random challenge unless given and 24-hour certificates unless ``lifetime`` (a timedelta) is given;
    every server the test started is stopped at teardown, also when the test failed.
    """
    missing = missing_tools()
    if missing:
        pytest.fail('step-ca test tools missing (%s); run "make deps"' % ', '.join(missing))
    servers: list[StepCaServer] = []

    def start(**kwargs: t.Any) -> StepCaServer:
        name = 'stepca' if not servers else 'stepca-%d' % len(servers)
        server = StepCaServer(tmp_path / name, stepca_pki, **kwargs)
        servers.append(server)
        return server.start()

    try:
        yield start
    finally:
        for server in reversed(servers):
            server.stop()
