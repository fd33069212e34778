# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Proof that tests/fakes/printer.py behaves like a printer taking a new TLS certificate, seen in real TLS handshakes.

- a Python ``ssl`` client reads the certificate the printer presents: first the self-signed factory one;
  after a PKCS#12 upload and the restart (connection refused meanwhile, same port afterwards) the
  uploaded one, with its chain: a client trusting only the root verifies it, and so does
  ``openssl s_client -showcerts`` (leaf, intermediate, root in that order);
- a wrong or missing admin password gets 401, a corrupt PKCS#12, a wrong PKCS#12 password or a
  PKCS#12 without a usable key and certificate gets 400 with the reason: the handshake still shows
  the old certificate, and no restart happened;
- restarts are counted; stop() wakes a restart wait and a silent client at once; the CLI works;
- after every test no thread of the fake and no socket of the test process is left.
"""

from __future__ import annotations

import base64
import datetime
import gc
import http.client
import ipaddress
import json
import os
import re
import select
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import typing as t

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

FAKES_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'fakes')
if FAKES_DIR not in sys.path:
    sys.path.insert(0, FAKES_DIR)

import printer as fake_printer  # noqa: E402  pylint: disable=wrong-import-position
from printer import ADMIN_PATH, MAX_BODY, FakePrinter, fingerprint  # noqa: E402  pylint: disable=wrong-import-position

TIMEOUT = 10.0
ADMIN_PASSWORD = 'adm-' + 'Xq7vR2pL9sT4wZ8kM3nB6cF1hJ5'
P12_PASSWORD = 'p12-' + 'Yt6uE3rW8qA1sD5fG9hK2lZ7'
PEM_RE = re.compile(rb'-----BEGIN CERTIFICATE-----\r?\n.+?\r?\n-----END CERTIFICATE-----', re.S)


# --- certificates and PKCS#12 -------------------------------------------------------------------

def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, 'tokenfleet.pki printer test')])


def _certificate(subject: str, key: t.Any, issuer: tuple[t.Any, x509.Certificate] | None, ca: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    issuer_key, issuer_name = (key, _name(subject)) if issuer is None else (issuer[0], issuer[1].subject)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer_name).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=30))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False))
    if ca:
        usage = x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
                              key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False)
        builder = builder.add_extension(usage, critical=True)
    else:
        builder = (builder.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address('127.0.0.1'))]), critical=False)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False))
    return builder.sign(issuer_key, hashes.SHA256())


class Chain(t.NamedTuple):
    root: x509.Certificate
    intermediate: x509.Certificate
    leaf: x509.Certificate
    leaf_key: t.Any


def make_chain(leaf_name: str = '127.0.0.1', leaf_key: t.Any = None) -> Chain:
    """root CA -> intermediate CA -> leaf for 127.0.0.1 (RSA 2048 leaf key, as a printer's form asks, unless given)."""
    root_key, intermediate_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    leaf_key = leaf_key or rsa.generate_private_key(public_exponent=65537, key_size=2048)
    root = _certificate('printer test root CA', root_key, None, ca=True)
    intermediate = _certificate('printer test issuing CA', intermediate_key, (root_key, root), ca=True)
    leaf = _certificate(leaf_name, leaf_key, (intermediate_key, intermediate), ca=False)
    return Chain(root, intermediate, leaf, leaf_key)


def self_signed(common_name: str) -> tuple[t.Any, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    return key, _certificate(common_name, key, None, ca=False)


def make_pkcs12(key: t.Any, cert: x509.Certificate | None, cas: t.Sequence[x509.Certificate] = (), password: str | None = P12_PASSWORD) -> bytes:
    encryption = serialization.BestAvailableEncryption(password.encode('utf-8')) if password else serialization.NoEncryption()
    return pkcs12.serialize_key_and_certificates(b'printer', key, cert, list(cas) or None, encryption)


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode('ascii')


# --- clients ------------------------------------------------------------------------------------

def handshake(port: int, trust: x509.Certificate | None = None) -> x509.Certificate:
    """A real TLS handshake with 127.0.0.1:port; the certificate the server presented.

    With ``trust`` the handshake verifies the chain up to that certificate and the IP address 127.0.0.1.
    """
    context = ssl.create_default_context(cadata=pem(trust) if trust is not None else None)
    if trust is None:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(('127.0.0.1', port), timeout=TIMEOUT) as raw:
        with context.wrap_socket(raw, server_hostname='127.0.0.1') as tls:
            der = tls.getpeercert(binary_form=True)
    assert der, 'the server sent no certificate'
    return x509.load_der_x509_certificate(der)


def openssl_showcerts(port: int, ca_file: str) -> tuple[list[x509.Certificate], str]:
    """``openssl s_client -connect 127.0.0.1:<port> -showcerts``: (certificates sent, in order; its output)."""
    result = subprocess.run(['openssl', 's_client', '-connect', '127.0.0.1:%d' % port, '-showcerts', '-CAfile', ca_file,
                             '-verify_ip', '127.0.0.1', '-verify_return_error'],
                            stdin=subprocess.DEVNULL, capture_output=True, timeout=TIMEOUT * 2, check=False)
    output = result.stdout.decode('utf-8', 'replace')
    assert result.returncode == 0, 'openssl s_client failed (%d): %s %s' % (result.returncode, output, result.stderr.decode('utf-8', 'replace'))
    return [x509.load_pem_x509_certificate(block) for block in PEM_RE.findall(result.stdout)], output


class Answer(t.NamedTuple):
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict[str, t.Any]:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode('utf-8')


def request(port: int, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> Answer:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    connection = http.client.HTTPSConnection('127.0.0.1', port, context=context, timeout=TIMEOUT)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return Answer(response.status, {name.lower(): value for name, value in response.getheaders()}, response.read())
    finally:
        connection.close()


def upload(port: int, p12: bytes, p12_password: str | None = P12_PASSWORD, admin_password: str | None = ADMIN_PASSWORD,
           basic_auth: tuple[str, str] | None = None) -> Answer:
    """The documented upload: POST /admin/certificate, the PKCS#12 as body, passwords in headers."""
    headers = {'Content-Type': 'application/x-pkcs12'}
    if admin_password is not None:
        headers['X-Admin-Password'] = admin_password
    if basic_auth is not None:
        headers['Authorization'] = 'Basic ' + base64.b64encode(('%s:%s' % basic_auth).encode('utf-8')).decode('ascii')
    if p12_password is not None:
        headers['X-PKCS12-Password'] = p12_password
    return request(port, 'POST', ADMIN_PATH, p12, headers)


def connection_refused(port: int) -> bool:
    try:
        with socket.create_connection(('127.0.0.1', port), timeout=TIMEOUT):
            return False
    except ConnectionRefusedError:
        return True


# --- fixtures -----------------------------------------------------------------------------------

def _socket_fds() -> set[str]:
    found = set()
    for fd in os.listdir('/proc/self/fd'):
        try:
            target = os.readlink('/proc/self/fd/' + fd)
        except OSError:
            continue
        if target.startswith('socket:'):
            found.add(fd + ' ' + target)
    return found


def _fake_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name.startswith('fake-printer')]


@pytest.fixture
def printers():
    """Callable printers(**FakePrinter arguments) -> a started FakePrinter (admin password ADMIN_PASSWORD by default).

    At the end every printer is stopped, and the test fails when the fake recorded an error, a printer
    still accepts connections, a thread of the fake is alive or a socket opened during the test is left.
    """
    gc.collect()
    sockets_before = _socket_fds()
    started: list[FakePrinter] = []

    def start(**kwargs: t.Any) -> FakePrinter:
        kwargs.setdefault('admin_password', ADMIN_PASSWORD)
        printer = FakePrinter(**kwargs).start()
        started.append(printer)
        return printer

    yield start
    for printer in started:
        begin = time.monotonic()
        printer.stop()
        assert time.monotonic() - begin < 3, 'stop() took %.1f s' % (time.monotonic() - begin)
    for printer in started:
        assert printer.errors == []
        assert printer.state == 'stopped'
        assert connection_refused(printer.port)
    assert _fake_threads() == []
    gc.collect()
    assert _socket_fds() - sockets_before == set()


# --- tests --------------------------------------------------------------------------------------

def test_factory_certificate_first(printers):
    printer = printers(name='printer-07')
    factory = printer.factory_certificate
    assert printer.url == 'https://127.0.0.1:%d' % printer.port and printer.port > 0
    assert printer.admin_password == ADMIN_PASSWORD

    presented = handshake(printer.port)
    assert presented == factory == printer.current_certificate()
    assert factory.issuer == factory.subject                                   # self-signed
    assert factory.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == 'printer-07'
    assert factory.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == 'factory default'
    assert handshake(printer.port, trust=factory) == factory                  # verifies for 127.0.0.1 when pinned
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(printer.port, trust=make_chain().root)
    assert printer.restarts == 0 and printer.certificates == [factory] and printer.history == []
    assert printer.state == 'serving' and printer.listening

    answer = request(printer.port, 'GET', '/')
    assert (answer.status, answer.text) == (200, 'fake printer printer-07\n')


def test_upload_restarts_and_serves_the_new_certificate_and_chain(printers, tmp_path):
    printer = printers()                                 # the default restart delay: 0.5 s
    port, factory = printer.port, printer.factory_certificate
    chain = make_chain()
    # CA certificates deliberately root first: the printer sends them in issuing order
    p12 = make_pkcs12(chain.leaf_key, chain.leaf, [chain.root, chain.intermediate])

    answer = upload(printer.port, p12)
    accepted_at = time.monotonic()
    assert answer.status == 200, answer.text
    assert answer.headers['content-type'] == 'application/json'
    document = answer.json()
    assert document['status'] == 'accepted' and document['restart_in_seconds'] == 0.5
    assert document['sha256'] == fingerprint(chain.leaf) and document['chain_length'] == 2
    assert document['subject'] == chain.leaf.subject.rfc4514_string()

    # the restart: not listening for restart_delay seconds, then the same port again
    assert printer.wait_down(TIMEOUT)
    assert connection_refused(port)
    assert printer.current_certificate() == factory                          # nothing served yet
    assert printer.wait_restarted(TIMEOUT)
    assert time.monotonic() - accepted_at >= 0.45
    assert printer.port == port and printer.restarts == 1 and printer.state == 'serving'

    presented = handshake(port)
    assert presented == chain.leaf == printer.current_certificate() != factory
    assert printer.current_chain() == (chain.intermediate, chain.root)
    # a client that trusts only the root verifies: the intermediate is sent too
    assert handshake(port, trust=chain.root) == chain.leaf

    ca_file = tmp_path / 'root.pem'
    ca_file.write_text(pem(chain.root))
    sent, output = openssl_showcerts(port, str(ca_file))
    assert sent == [chain.leaf, chain.intermediate, chain.root]
    assert 'Verify return code: 0 (ok)' in output

    assert printer.certificates == [factory, chain.leaf]
    assert [(entry.method, entry.status, entry.reason, entry.sha256) for entry in printer.history] == \
        [('POST', 200, 'accepted', fingerprint(chain.leaf))]
    status = request(port, 'GET', ADMIN_PATH, headers={'X-Admin-Password': ADMIN_PASSWORD})
    assert status.status == 200
    assert status.json()['sha256'] == fingerprint(chain.leaf) and status.json()['restarts'] == 1
    assert x509.load_pem_x509_certificate(status.json()['pem'].encode('ascii')) == chain.leaf


def test_restarts_counted_each_upload_seen_in_a_handshake(printers):
    printer = printers(restart_delay=0.05)
    key_a, cert_a = self_signed('printer-a')
    key_b, cert_b = self_signed('printer-b')
    key_c, cert_c = self_signed('printer-c')
    uploads = [
        (cert_a, lambda: upload(printer.port, make_pkcs12(key_a, cert_a))),
        # HTTP Basic auth as "admin" instead of X-Admin-Password
        (cert_b, lambda: upload(printer.port, make_pkcs12(key_b, cert_b), admin_password=None, basic_auth=('admin', ADMIN_PASSWORD))),
        # a PKCS#12 without a password: no X-PKCS12-Password header
        (cert_c, lambda: upload(printer.port, make_pkcs12(key_c, cert_c, password=None), p12_password=None)),
    ]
    for number, (cert, send) in enumerate(uploads, start=1):
        answer = send()
        assert answer.status == 200, answer.text
        assert printer.wait_restarted(TIMEOUT)
        assert printer.restarts == number
        assert handshake(printer.port) == cert == printer.current_certificate()
    assert printer.certificates == [printer.factory_certificate, cert_a, cert_b, cert_c]
    assert [entry.status for entry in printer.history] == [200, 200, 200]


@pytest.mark.parametrize('credentials', [
    pytest.param(dict(admin_password='wrong-' + ADMIN_PASSWORD), id='wrong-password'),
    pytest.param(dict(admin_password=None), id='no-password'),
    pytest.param(dict(admin_password=ADMIN_PASSWORD[:-1]), id='prefix-of-the-password'),
    pytest.param(dict(admin_password=None, basic_auth=('admin', 'wrong')), id='basic-wrong-password'),
    pytest.param(dict(admin_password=None, basic_auth=('root', ADMIN_PASSWORD)), id='basic-other-user'),
])
def test_wrong_admin_password_401_and_nothing_changes(printers, credentials):
    printer = printers(restart_delay=0.05)
    chain = make_chain()
    answer = upload(printer.port, make_pkcs12(chain.leaf_key, chain.leaf), **credentials)
    assert answer.status == 401
    assert 'admin password' in answer.text
    assert answer.headers['www-authenticate'] == 'Basic realm="printer admin"'

    assert printer.state == 'serving' and printer.listening and printer.restarts == 0
    assert handshake(printer.port) == printer.factory_certificate == printer.current_certificate()
    assert printer.certificates == [printer.factory_certificate]
    entry = printer.history[-1]
    assert (entry.status, entry.sha256, entry.subject) == (401, None, None)     # nothing was read from the PKCS#12
    assert ADMIN_PASSWORD not in repr(printer.history)


def _bad_uploads() -> list[t.Any]:
    chain = make_chain()
    other_key, other_cert = self_signed('someone else')
    good = make_pkcs12(chain.leaf_key, chain.leaf, [chain.intermediate])
    return [
        pytest.param(b'\x30\x82\x01\x00' + os.urandom(256), P12_PASSWORD, 'cannot open the PKCS#12', id='corrupt'),
        pytest.param(good[:len(good) // 2], P12_PASSWORD, 'cannot open the PKCS#12', id='truncated'),
        pytest.param(b'-----BEGIN CERTIFICATE-----\n', P12_PASSWORD, 'cannot open the PKCS#12', id='pem-not-pkcs12'),
        pytest.param(good, 'wrong-' + P12_PASSWORD, 'the X-PKCS12-Password is wrong', id='wrong-p12-password'),
        pytest.param(good, None, 'no X-PKCS12-Password header', id='no-p12-password'),
        pytest.param(b'', P12_PASSWORD, 'the request body is empty', id='empty-body'),
        pytest.param(make_pkcs12(None, chain.leaf, [chain.intermediate]), P12_PASSWORD, 'holds no private key', id='certificates-only'),
        pytest.param(make_pkcs12(chain.leaf_key, None), P12_PASSWORD, 'holds a private key but no certificate', id='key-only'),
        pytest.param(make_pkcs12(chain.leaf_key, None, [other_cert]), P12_PASSWORD,
                     'none of the 1 certificate(s) in the PKCS#12 belongs to its private key', id='key-with-another-certificate'),
        pytest.param(make_pkcs12(other_key, None, [chain.leaf, chain.intermediate]), P12_PASSWORD,
                     'none of the 2 certificate(s) in the PKCS#12 belongs to its private key', id='other-key-with-chain'),
    ]


@pytest.mark.parametrize('body, p12_password, reason', _bad_uploads())
def test_bad_pkcs12_400_and_nothing_changes(printers, body, p12_password, reason):
    printer = printers(restart_delay=0.05)
    answer = upload(printer.port, body, p12_password=p12_password)
    assert answer.status == 400, answer.text
    assert answer.headers['content-type'] == 'text/plain; charset=utf-8'
    assert reason in answer.text
    assert P12_PASSWORD not in answer.text

    assert printer.state == 'serving' and printer.listening and printer.restarts == 0
    assert handshake(printer.port) == printer.factory_certificate == printer.current_certificate()
    assert printer.certificates == [printer.factory_certificate]
    assert [(entry.status, entry.reason) for entry in printer.history] == [(400, answer.text.strip())]


def test_bad_upload_after_a_good_one_keeps_the_uploaded_certificate(printers):
    printer = printers(restart_delay=0.05)
    key, cert = self_signed('printer-good')
    assert upload(printer.port, make_pkcs12(key, cert)).status == 200
    assert printer.wait_restarted(TIMEOUT)
    assert upload(printer.port, make_pkcs12(key, cert), p12_password='wrong').status == 400
    assert upload(printer.port, make_pkcs12(key, cert), admin_password='wrong').status == 401
    assert handshake(printer.port) == cert and printer.restarts == 1
    assert [entry.status for entry in printer.history] == [200, 400, 401]


def test_other_requests(printers):
    printer = printers()
    assert request(printer.port, 'GET', '/nothing-here').status == 404
    assert request(printer.port, 'POST', '/', b'x').status == 405
    assert request(printer.port, 'POST', '/admin/other', b'x', {'X-Admin-Password': ADMIN_PASSWORD}).status == 404
    assert request(printer.port, 'GET', ADMIN_PATH).status == 401
    status = request(printer.port, 'GET', ADMIN_PATH, headers={'X-Admin-Password': ADMIN_PASSWORD})
    assert status.status == 200
    assert status.json()['sha256'] == fingerprint(printer.factory_certificate) and status.json()['restarts'] == 0

    # a declared body over 1 MiB is refused before it is read
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(('127.0.0.1', printer.port), timeout=TIMEOUT) as raw:
        with context.wrap_socket(raw) as tls:
            tls.sendall(b'POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Admin-Password: %s\r\nContent-Length: %d\r\n\r\n'
                        % (ADMIN_PATH.encode(), ADMIN_PASSWORD.encode(), MAX_BODY + 1))
            assert tls.recv(64).startswith(b'HTTP/1.1 413 ')
    form = request(printer.port, 'POST', ADMIN_PATH, b'--x\r\n\r\n--x--\r\n',
                   {'X-Admin-Password': ADMIN_PASSWORD, 'Content-Type': 'multipart/form-data; boundary=x'})
    assert form.status == 400 and 'not a multipart form' in form.text
    assert printer.restarts == 0 and handshake(printer.port) == printer.factory_certificate
    assert [entry.status for entry in printer.history] == [401, 200, 413, 400]


def test_stop_wakes_a_restart_wait_and_a_silent_client(printers):
    printer = printers(restart_delay=60.0, io_timeout=60.0)
    silent = socket.create_connection(('127.0.0.1', printer.port), timeout=TIMEOUT)   # connects, never says hello
    try:
        key, cert = self_signed('never-served')
        answer = upload(printer.port, make_pkcs12(key, cert))
        assert answer.status == 200
        # the restart waits up to 1 s for running requests, then closes the silent connection
        silent.settimeout(TIMEOUT)
        assert silent.recv(1) == b''
        assert printer.wait_down(TIMEOUT) and connection_refused(printer.port)
        begin = time.monotonic()
        printer.stop()                          # during the 60 s restart delay
        assert time.monotonic() - begin < 3
    finally:
        silent.close()
    assert not printer.wait_restarted(TIMEOUT)  # answers at once: stopped
    assert printer.state == 'stopped' and printer.restarts == 0 and printer.current_certificate() == printer.factory_certificate


def test_stop_closes_a_silent_client_at_once(printers):
    printer = printers(io_timeout=60.0)
    with socket.create_connection(('127.0.0.1', printer.port), timeout=TIMEOUT) as silent:
        assert handshake(printer.port) == printer.factory_certificate      # the silent one blocks no one
        time.sleep(0.1)                                                      # its handler waits in the TLS handshake
        begin = time.monotonic()
        printer.stop()
        assert time.monotonic() - begin < 3
        assert silent.recv(1) == b''


def _read_line(process: subprocess.Popen, timeout: float) -> str:
    assert process.stdout is not None
    ready, _unused, _unused = select.select([process.stdout], [], [], timeout)
    assert ready, 'no output from the fake printer within %s s' % timeout
    return process.stdout.readline().decode('utf-8')


def test_cli():
    script = os.path.join(FAKES_DIR, 'printer.py')
    result = subprocess.run([sys.executable, script, '--help'], capture_output=True, timeout=TIMEOUT * 3, check=False)
    assert result.returncode == 0 and b'/admin/certificate' in result.stdout and b'X-PKCS12-Password' in result.stdout

    process = subprocess.Popen([sys.executable, script, '--json', '--count', '2', '--name', 'mfp', '--restart-delay', '0.05',
                                '--max-seconds', '60'],
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env=dict(os.environ, FAKE_PRINTER_ADMIN_PASSWORD=ADMIN_PASSWORD))
    try:
        listing = json.loads(_read_line(process, TIMEOUT * 3))['printers']
        assert [entry['name'] for entry in listing] == ['mfp-01', 'mfp-02']
        for entry in listing:
            presented = handshake(entry['port'])
            assert entry['url'] == 'https://127.0.0.1:%d' % entry['port'] and entry['admin_password'] == ADMIN_PASSWORD
            assert fingerprint(presented) == entry['factory_sha256']
            assert presented.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == entry['name']
        key, cert = self_signed('cli-upload')
        port = listing[1]['port']
        assert upload(port, make_pkcs12(key, cert)).status == 200
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                if handshake(port) == cert:
                    break
            except (ConnectionRefusedError, ssl.SSLError, ConnectionResetError):
                pass
            assert time.monotonic() < deadline, 'the CLI printer did not come back with the new certificate'
            time.sleep(0.05)
        assert fingerprint(handshake(listing[0]['port'])) == listing[0]['factory_sha256']
        process.send_signal(signal.SIGTERM)
        _out, err = process.communicate(timeout=TIMEOUT)
        assert process.returncode == 0
        assert b'mfp-02: POST /admin/certificate -> 200 accepted' in err
        assert b'mfp-02: restarted (1), now serving' in err
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=TIMEOUT)
    for entry in listing:
        assert connection_refused(entry['port'])


def test_module_documents_the_upload():
    doc = fake_printer.__doc__ or ''
    for needle in ('POST /admin/certificate', 'X-Admin-Password', 'X-PKCS12-Password', 'Authorization: Basic', '401', '400'):
        assert needle in doc
