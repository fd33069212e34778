# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The micromdm fixture against micromdm's own scepclient: enrollment, wrong challenge, exact request counts."""

# pylint: disable=redefined-outer-name

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import urllib.error

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from harness import free_port, random_pin
from micromdm import MicromdmScepServer, micromdm, run_scepclient  # noqa: F401  pylint: disable=unused-import

ENROLLMENTS_TIMED = 5


def write_rsa_key(path, bits=2048):
    """A PKCS#1 PEM RSA key, the format scepclient 2.1.0 reads and writes."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                       serialization.NoEncryption()))
    os.chmod(path, 0o600)
    return key


def public_der(public_key):
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def openssl_verify(ca_path, cert_path):
    completed = subprocess.run(['openssl', 'verify', '-CAfile', str(ca_path), str(cert_path)], capture_output=True,
                               text=True, check=False, timeout=30)
    return completed.returncode == 0 and completed.stdout.strip().endswith(': OK'), completed.stdout + completed.stderr


def counts(server):
    return dict(PKIOperation=server.pkioperation_count(), GetCACert=server.operation_count('GetCACert'),
                GetCACaps=server.operation_count('GetCACaps'))


def test_server_basics(micromdm):
    challenge = random_pin()
    server = micromdm(challenge=challenge)
    assert server.running
    assert server.url == 'http://127.0.0.1:%d/scep' % server.port
    assert b'POSTPKIOperation' in server.get('GetCACaps')
    assert server.get('GetCACert') == server.ca_certificate.public_bytes(serialization.Encoding.DER)
    assert server.ca_pem.startswith(b'-----BEGIN CERTIFICATE-----')
    assert len(server.ca_fingerprint_sha256_hex) == 64
    assert server.ca_fingerprint_sha256 == ':'.join(
        server.ca_fingerprint_sha256_hex[i:i + 2] for i in range(0, 64, 2))
    assert server.ca_certificate.public_key().key_size == 2048
    assert server.issued() == []
    assert server.pkioperation_count() == 0
    assert challenge not in ' '.join(server._redacted_command())  # pylint: disable=protected-access


def test_enroll_with_scepclient(micromdm, tmp_path):
    challenge = random_pin()
    server = micromdm(challenge=challenge)
    client = tmp_path / 'client'
    client.mkdir()
    key = write_rsa_key(client / 'key.pem')
    before = counts(server)
    messages_before = len(server.pki_messages())

    run = run_scepclient(server, client, cn='host1.example.com', challenge=challenge, private_key=client / 'key.pem')

    assert run.returncode == 0, run.output
    print('\nscepclient enrollment (RSA-2048 key given, 2048-bit CA): %.3f s' % run.seconds)
    cert_path = client / 'client.pem'
    ok, output = openssl_verify(server.ca_pem_path, cert_path)
    assert ok, output
    issued = server.issued()
    assert len(issued) == 1
    entry = issued[0]
    certificate = entry.certificate
    assert entry.status == 'V' and entry.subject.endswith('/CN=host1.example.com')
    assert entry.pem.strip() == cert_path.read_bytes().strip()
    assert certificate.serial_number == entry.serial
    assert certificate.issuer == server.ca_certificate.subject
    assert public_der(certificate.public_key()) == public_der(key.public_key())
    # scepclient 2.1.0: GetCACert (fingerprint check), GetCACaps, then one PKIOperation (PKCSReq)
    assert counts(server) == dict(PKIOperation=before['PKIOperation'] + 1, GetCACert=before['GetCACert'] + 1,
                                  GetCACaps=before['GetCACaps'] + 1)
    assert [m['message_type'] for m in server.pki_messages()[messages_before:]] == ['PKCSReq (19)']
    assert challenge not in run.output


def test_repeated_enrollments_and_timing(micromdm, tmp_path):
    """N enrollments make exactly N PKIOperation requests; prints the time per scepclient enrollment."""
    challenge = random_pin()
    server = micromdm(challenge=challenge)
    seconds = []
    for number in range(ENROLLMENTS_TIMED + 1):
        client = tmp_path / ('client-%d' % number)
        client.mkdir()
        cn = 'ws-%03d.example.com' % number
        # the last run lets scepclient generate its RSA-2048 key itself (timed separately)
        key_path = client / 'key.pem'
        if number < ENROLLMENTS_TIMED:
            write_rsa_key(key_path)
        before = server.pkioperation_count()
        run = run_scepclient(server, client, cn=cn, challenge=challenge, private_key=key_path)
        assert run.returncode == 0, run.output
        assert server.pkioperation_count() == before + 1
        ok, output = openssl_verify(server.ca_pem_path, run.certificate_path)
        assert ok, output
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        entries = [entry for entry in server.issued() if entry.subject.endswith('/CN=' + cn)]
        assert len(entries) == 1
        assert public_der(entries[0].certificate.public_key()) == public_der(key.public_key())
        seconds.append(run.seconds)
    assert server.pkioperation_count() == ENROLLMENTS_TIMED + 1
    assert len(server.issued()) == ENROLLMENTS_TIMED + 1
    timed = seconds[:ENROLLMENTS_TIMED]
    print('\nscepclient enrollment, RSA-2048 key given: median %.3f s, min %.3f s, max %.3f s (n=%d); '
          'with scepclient generating the key: %.3f s' % (statistics.median(timed), min(timed), max(timed), len(timed), seconds[-1]))


def test_wrong_challenge_is_refused(micromdm, tmp_path):
    challenge = random_pin()
    server = micromdm(challenge=challenge)
    client = tmp_path / 'client'
    before = server.pkioperation_count()
    issued_before, files_before = server.issued(), server.issued_files()

    run = run_scepclient(server, client, cn='intruder.example.com', challenge=random_pin())

    assert run.returncode != 0
    assert 'failInfo: badRequest' in run.output, run.output
    assert not os.path.exists(run.certificate_path)
    assert server.issued() == issued_before == []
    assert server.issued_files() == files_before == []
    assert server.pkioperation_count() == before + 1
    assert 'failed to sign CSR: invalid challenge' in server.errors()


def test_pkioperation_count_is_exact(micromdm):
    """Known numbers of raw requests: every PKIOperation counts at once, other operations never do."""
    server = micromdm()
    expected = server.pkioperation_count()
    pki_requests = [
        ('POST', b'garbage'),
        ('POST', b''),
        ('POST', b'\x30\x03\x02\x01\x00'),
        ('GET', 'Z2FyYmFnZQ=='),  # base64 of "garbage": reaches the endpoint, fails to parse
        ('GET', '!!!not-base64'),  # never reaches the endpoint: counted from the HTTP error line
        ('GET', '%25zz'),  # message "%zz": url.PathUnescape fails
        ('GET', None),  # no message at all
    ]
    for method, message in pki_requests:
        with pytest.raises(urllib.error.HTTPError) as error:
            if method == 'POST':
                server.post('PKIOperation', message)
            else:
                server.get('PKIOperation', message)
        assert error.value.code == 500
        expected += 1
        assert server.pkioperation_count() == expected, (method, message, server.log_text())
    for operation in ('GetCACaps', 'GetCACert', 'GetCACaps'):
        server.get(operation)
    with pytest.raises(urllib.error.HTTPError):
        server.get('GetNextCACert')
    assert server.pkioperation_count() == expected == len(pki_requests)


def test_stop_start_and_context_manager(tmp_path):
    with MicromdmScepServer(tmp_path / 'scep') as server:
        process, port = server.process, server.port
        assert server.running
        server.get('GetCACaps')
        server.stop()
        assert process.poll() is not None and not server.running
        with pytest.raises(OSError):
            server.get('GetCACaps', timeout=2)
        server.start()  # same depot, log and port
        assert server.port == port and server.running
        with pytest.raises(urllib.error.HTTPError):
            server.post('PKIOperation', b'x')
        assert server.pkioperation_count() == 1
        second = server.process
    assert second.poll() is not None and server.process is None
    with pytest.raises(ProcessLookupError):
        os.kill(second.pid, 0)


def test_start_failure_reports_the_log_and_leaves_no_process(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(('', free_port()))
        busy.listen(1)
        server = MicromdmScepServer(tmp_path / 'scep', start_timeout=5)
        server.port = busy.getsockname()[1]
        with pytest.raises(RuntimeError, match='address already in use'):
            server.start()
    assert server.process is None and not server.running
