# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Proof that tests/fakes/scep_responder.py speaks real SCEP: certmonger (an independent client) talks to it.

- certmonger's helper ``scep-submit`` reads its GetCACaps and GetCACert answers (CA only and RA mode);
- the certmonger daemon (session build, private socket, temporary HOME) enrolls against it with its own
  PKCSReq (AES-256 or 3DES requests, SHA-256 signatures) and decrypts the CertRep (AES-128/192/256,
  3DES; SHA-256, SHA-512 and SHA-1 signatures), in CA and RA mode, with a challenge password, and
  through PENDING -> approve() -> SUCCESS;
- certmonger's own PKCSReq and GetCertInitial (CertPoll) messages, captured once, are replayed with
  ``scep-submit`` to check FAILURE with each failInfo, PENDING, CertPoll, and that certmonger rejects
  the fake's corrupted replies (unpinned signer, wrong nonce, wrong transaction id) and faults;
- OpenSSL (``openssl cms`` / ``openssl pkcs7``) verifies and decrypts replies independently, for every
  content cipher including single DES (which certmonger on OpenSSL 3 cannot decrypt: no legacy provider);
- micromdm's scepclient (Go, a second independent client) covers what certmonger never sends: POST,
  DES-encrypted SHA-1-signed requests, RenewalReq (17) signed by the issued certificate, and several
  recipient infos in RA mode.
"""

from __future__ import annotations

import base64
import dataclasses
import http.client
import os
import re
import select
import signal
import subprocess
import sys
import time
import urllib.parse

import pytest
from asn1crypto import cms
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from fixtures_scep import (  # pylint: disable=unused-import
    FAKES_DIR, SCEP_SUBMIT, Certmonger, certmonger, fake_scep, missing_certmonger, scep_ca, wait_for, write_pem,
)
from scep_responder import CAPS_PRESETS, CERT_POLL, FAILURE, PENDING, PKCS_REQ, RENEWAL_REQ, SUCCESS, FakeScepServer

FAKE_SCRIPT = os.path.join(FAKES_DIR, 'scep_responder.py')
TIMEOUT = 60

# what scep-submit prints for each failInfo (certmonger 0.79: badCertId has no text of its own)
FAIL_INFO_MESSAGES = {
    0: 'Unrecognized or unsupported algorithm identifier',
    1: 'Integrity check of client request failed',
    2: 'Transaction either is not permitted or is not supported',
    3: 'Clock skew too great',
    4: 'Server returned failure code "4"',
}
# scep-submit exit codes (man scep-submit)
ISSUED, WAIT, REJECTED, UNREACHABLE = 0, 1, 2, 3


def run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault('timeout', TIMEOUT)
    return subprocess.run(argv, capture_output=True, check=False, stdin=subprocess.DEVNULL, **kwargs)


def openssl(*args: str, legacy: bool = False) -> bytes:
    providers = ['-provider', 'legacy', '-provider', 'default'] if legacy else []
    result = run(['openssl', args[0]] + providers + list(args[1:]))
    assert result.returncode == 0, 'openssl %s: %s' % (' '.join(args), result.stderr.decode('utf-8', 'replace'))
    return result.stdout


def scep_submit(server: FakeScepServer, *args: str, ca_file: str | None = None, ra_file: str | None = None) -> subprocess.CompletedProcess:
    """scep-submit -u <fake> [-N ca] [-r ra (default: the CA)] args... (text output).

    certmonger 0.79 trusts only the -N certificate (CERTMONGER_SCEP_CA_CERTIFICATE for the daemon) as root
    when it verifies a CertRep; -r is the certificate PKIOperation requests were encrypted to.
    """
    ra_file = ra_file or ca_file
    argv = [SCEP_SUBMIT, '-u', server.url]
    if ca_file:
        argv += ['-N', ca_file]
    if ra_file:
        argv += ['-r', ra_file]
    return run(argv + list(args), text=True)


def pem_certificates(text: str) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(text.encode('ascii')) if 'BEGIN CERTIFICATE' in text else []


def http_request(server: FakeScepServer, method: str, query: str, body: bytes | None = None) -> tuple[int, str, bytes]:
    connection = http.client.HTTPConnection('127.0.0.1', server.port, timeout=TIMEOUT)
    try:
        headers = {'Content-Type': 'application/x-pki-message'} if body is not None else {}
        connection.request(method, server.path + '?' + query, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.getheader('Content-Type', ''), response.read()
    finally:
        connection.close()


def public_der(key_or_cert) -> bytes:
    return key_or_cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_key(path: str):
    with open(path, 'rb') as handle:
        return serialization.load_pem_private_key(handle.read(), password=None)


def load_cert(path: str) -> x509.Certificate:
    with open(path, 'rb') as handle:
        return x509.load_pem_x509_certificate(handle.read())


def signed_attributes_by_openssl(der_path: str) -> dict[str, str]:
    """{attribute OID or name: value text} of a CMS signerInfo, read with `openssl asn1parse` (OCTET STRINGs as hex)."""
    lines = openssl('asn1parse', '-inform', 'DER', '-in', der_path).decode('utf-8', 'replace').splitlines()
    values: dict[str, str] = {}
    for index, line in enumerate(lines):
        if 'prim: OBJECT' not in line or index + 2 >= len(lines) or 'cons: SET' not in lines[index + 1]:
            continue
        name = line.split(':', 3)[-1].strip()
        value = lines[index + 2].split('prim: ', 1)[-1]
        values[name] = value.split('[HEX DUMP]:', 1)[1].lower() if '[HEX DUMP]:' in value else value.split(':', 1)[-1]
    return values


def assert_issued_by(cert_path: str, ca_file: str) -> None:
    result = run(['openssl', 'verify', '-CAfile', ca_file, cert_path], text=True)
    assert result.returncode == 0 and result.stdout.strip().endswith(': OK'), result.stdout + result.stderr


# --- GetCACaps / GetCACert read by scep-submit -------------------------------------------------

@pytest.fixture(autouse=True)
def _need_certmonger():
    missing = missing_certmonger()
    if missing:
        pytest.fail('certmonger not installed (%s); run "make deps"' % ', '.join(missing))


@pytest.mark.parametrize('preset', sorted(CAPS_PRESETS))
def test_get_ca_caps_read_by_scep_submit(fake_scep, preset):
    server = fake_scep(caps=CAPS_PRESETS[preset])
    result = scep_submit(server, '-c')
    if CAPS_PRESETS[preset]:
        assert result.returncode == ISSUED, result.stdout + result.stderr
        assert result.stdout.split() == CAPS_PRESETS[preset]
    else:
        # an empty list is an empty body (RFC 8894 §3.5.2: no capabilities); certmonger calls that "no response"
        assert result.returncode == REJECTED and 'no response' in result.stdout
        assert http_request(server, 'GET', 'operation=GetCACaps')[::2] == (200, b'')
    assert [entry.operation for entry in server.request_log] == ['GetCACaps'] * (1 if CAPS_PRESETS[preset] else 2)


def test_get_ca_cert_single_certificate(fake_scep, scep_ca):
    server = fake_scep()
    result = scep_submit(server, '-C')
    assert result.returncode == ISSUED, result.stdout + result.stderr
    assert pem_certificates(result.stdout) == [scep_ca[1]]
    # certmonger sends its default CA identifier "0", then walks "1" (Dogtag style) and stops at a duplicate
    assert server.ca_identifiers[:2] == ['0', '1']
    status, content_type, body = http_request(server, 'GET', 'operation=GetCACert')
    assert (status, content_type) == (200, 'application/x-x509-ca-cert')
    assert x509.load_der_x509_certificate(body) == scep_ca[1]


def test_get_ca_cert_ra_mode(fake_scep, tmp_path):
    server = fake_scep(ra_mode=True)
    result = scep_submit(server, '-C')
    assert result.returncode == ISSUED, result.stdout + result.stderr
    printed = pem_certificates(result.stdout)
    # scep-submit prints the RA certificate it will encrypt to (keyEncipherment preferred), the CA, then the rest
    assert printed == [server.ra_enc_cert, server.ca_cert, server.ra_sign_cert]
    assert server.ra_enc_cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_encipherment
    assert not server.ra_enc_cert.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature
    assert server.ra_sign_cert.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature
    assert not server.ra_sign_cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_encipherment
    # the raw answer is a degenerate certs-only PKCS#7 that OpenSSL reads too
    status, content_type, body = http_request(server, 'GET', 'operation=GetCACert')
    assert (status, content_type) == (200, 'application/x-x509-ca-ra-cert')
    (tmp_path / 'ca-ra.p7').write_bytes(body)
    text = openssl('pkcs7', '-inform', 'DER', '-in', str(tmp_path / 'ca-ra.p7'), '-print_certs').decode('ascii')
    assert set(pem_certificates(text)) == {server.ca_cert, server.ra_sign_cert, server.ra_enc_cert}
    write_pem(str(tmp_path / 'ca.pem'), server.ca_cert)
    for ra_cert in (server.ra_sign_cert, server.ra_enc_cert):
        assert_issued_by(write_pem(str(tmp_path / 'ra.pem'), ra_cert), str(tmp_path / 'ca.pem'))


# --- full enrollments by the certmonger daemon -------------------------------------------------

def enroll(certmonger: Certmonger, server: FakeScepServer, tmp_path, request_id: str, cn: str, *extra: str,
           ra_mode: bool = False, register: bool = True) -> tuple[str, str, str, object]:
    """Register the fake as SCEP CA 'fake' (pinning its CA with -N unless RA mode) and run getcert request."""
    ca_file = write_pem(str(tmp_path / 'ca.pem'), server.ca_cert)
    if register:
        # in RA mode certmonger learns the CA (its trust root) from GetCACert; with a lone CA certificate
        # it does not treat it as a root, so it must be given (-N, like pinning a fingerprint)
        certmonger.add_scep_ca('fake', server, None if ra_mode else ca_file)
    key_file, cert_file = str(tmp_path / (request_id + '.key')), str(tmp_path / (request_id + '.crt'))
    result = certmonger.request('fake', request_id, key_file, cert_file, 'CN=%s,O=tokenfleet tests' % cn, '-D', cn, *extra)
    return ca_file, key_file, cert_file, result


def assert_enrolled(certmonger: Certmonger, server: FakeScepServer, request_id: str, ca_file: str, key_file: str, cert_file: str,
                    cn: str) -> x509.Certificate:
    # end states only: SUBMITTING, GENERATING_SCEP_DATA, SAVING_CERT and CA_WORKING (pending) are waited out
    fields = certmonger.wait_status(request_id, ['MONITORING', 'CA_UNREACHABLE', 'CA_REJECTED', 'NEED_GUIDANCE', 'CA_UNCONFIGURED'])
    assert fields['status'] == 'MONITORING', '%s\n%s' % (fields, certmonger.log()[-4000:])
    assert_issued_by(cert_file, ca_file)
    cert = load_cert(cert_file)
    assert public_der(cert) == public_der(load_key(key_file))
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == cn
    assert cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName) == [cn]
    assert cert in server.issued
    return cert


@pytest.mark.parametrize('caps, reply_cipher, digest, request_cipher', [
    ('aes-only', 'aes128', 'sha256', 'aes256'),
    ('default', 'aes192', 'sha512', 'aes256'),
    ('default', 'aes256', 'sha256', 'aes256'),
    ('3des-only', '3des', 'sha1', '3des'),
])
def test_certmonger_enrolls(certmonger, fake_scep, tmp_path, caps, reply_cipher, digest, request_cipher):
    server = fake_scep(caps=CAPS_PRESETS[caps], reply_cipher=reply_cipher, digest=digest)
    ca_file, key_file, cert_file, _result = enroll(certmonger, server, tmp_path, 'first', 'ws01.example.com')
    assert_enrolled(certmonger, server, 'first', ca_file, key_file, cert_file, 'ws01.example.com')
    assert server.pki_operation_count() == 1
    (info,) = server.pki_messages
    state = certmonger.request_state('first')
    assert (info.message_type, info.transaction_id, info.pki_status) == (PKCS_REQ, state['scep_tx'], SUCCESS)
    assert (info.content_cipher, info.key_transport, info.digest, info.method) == (request_cipher, 'rsaes_pkcs1v15', 'sha256', 'GET')
    assert info.recipient == server.ca_cert.subject.rfc4514_string()
    # certmonger signs its PKCSReq with a self-signed certificate of the new key (RFC 8894 §2.3)
    assert public_der(info.signer_certificate) == public_der(load_key(key_file))
    assert info.signer_certificate.issuer == info.signer_certificate.subject


def test_certmonger_enrolls_with_ra_certificates(certmonger, fake_scep, tmp_path):
    server = fake_scep(ra_mode=True, caps=CAPS_PRESETS['aes-only'])
    ca_file, key_file, cert_file, _result = enroll(certmonger, server, tmp_path, 'first', 'ra.example.com', ra_mode=True)
    assert_enrolled(certmonger, server, 'first', ca_file, key_file, cert_file, 'ra.example.com')
    (info,) = server.pki_messages
    # encrypted to the encryption RA; the CertRep was signed by the signing RA and certmonger accepted it
    assert info.recipient == server.ra_enc_cert.subject.rfc4514_string()
    assert info.pki_status == SUCCESS


def test_certmonger_challenge_password(certmonger, fake_scep, tmp_path):
    server = fake_scep(challenge='Kx7-right-challenge-9q')
    ca_file, key_file, cert_file, _result = enroll(certmonger, server, tmp_path, 'first', 'wrong.example.com', '-L', 'not-the-challenge')
    fields = certmonger.wait_status('first', ['CA_REJECTED', 'MONITORING', 'CA_UNREACHABLE'])
    assert fields['status'] == 'CA_REJECTED' and 'not permitted' in fields.get('ca-error', ''), fields
    assert not os.path.exists(cert_file)
    assert (server.pki_messages[-1].pki_status, server.pki_messages[-1].fail_info) == (FAILURE, 2)
    assert server.pki_messages[-1].challenge_password == 'not-the-challenge'

    _ca, key_file, cert_file, _result = enroll(
        certmonger, server, tmp_path, 'second', 'right.example.com', '-L', 'Kx7-right-challenge-9q', register=False)
    assert_enrolled(certmonger, server, 'second', ca_file, key_file, cert_file, 'right.example.com')
    assert server.pki_messages[-1].challenge_password == 'Kx7-right-challenge-9q'
    assert len(server.issued) == 1


def test_certmonger_pending_then_approved(certmonger, fake_scep, tmp_path):
    server = fake_scep()
    server.pending = True
    ca_file, key_file, cert_file, _result = enroll(certmonger, server, tmp_path, 'first', 'pending.example.com')
    fields = certmonger.wait_status('first', ['CA_WORKING', 'MONITORING', 'CA_UNREACHABLE', 'CA_REJECTED'])
    assert fields['status'] == 'CA_WORKING', fields  # certmonger: "waiting for the CA"
    transaction_id = certmonger.request_state('first')['scep_tx']
    assert list(server.pending_transactions) == [transaction_id]
    assert not os.path.exists(cert_file) and server.issued == []

    # polling before the approval stays pending
    certmonger.getcert('refresh', '-i', 'first')
    wait_for(lambda: server.pki_operation_count() == 2, 30, 'the second PKIOperation')
    # the refresh moved the request to SUBMITTING; CA_WORKING again means the PENDING reply was read
    assert certmonger.wait_status('first', ['CA_WORKING', 'MONITORING', 'CA_UNREACHABLE'])['status'] == 'CA_WORKING'
    assert server.pki_messages[-1].pki_status == PENDING

    assert server.approve() == [transaction_id]
    certmonger.getcert('refresh', '-i', 'first')
    assert_enrolled(certmonger, server, 'first', ca_file, key_file, cert_file, 'pending.example.com')
    # certmonger 0.79 polls by re-sending its PKCSReq with the same transaction id (RFC 8894 §5.2 allows it)
    assert [(entry.message_type, entry.transaction_id) for entry in server.request_log if entry.operation == 'PKIOperation'] == [
        (PKCS_REQ, transaction_id)] * 3
    assert [info.pki_status for info in server.pki_messages] == [PENDING, PENDING, SUCCESS]
    assert server.pending_transactions == {}


# --- certmonger's own messages, replayed with scep-submit --------------------------------------

@dataclasses.dataclass
class CapturedMessages:
    """certmonger's PKCSReq (DER, as the fake received it) and GetCertInitial (PEM, from its state), with the key."""
    directory: str
    pkcs_req: str
    get_cert_initial: str
    key_file: str
    ca_file: str
    transaction_id: str
    sender_nonce: bytes


@pytest.fixture(scope='module')
def certmonger_messages(tmp_path_factory, scep_ca) -> CapturedMessages:
    missing = missing_certmonger()
    if missing:
        pytest.fail('certmonger not installed (%s); run "make deps"' % ', '.join(missing))
    directory = str(tmp_path_factory.mktemp('certmonger-messages'))
    server = FakeScepServer(ca=scep_ca).start()
    daemon = Certmonger(os.path.join(directory, 'certmonger'))
    try:
        server.pending = True
        daemon.start()
        ca_file = write_pem(os.path.join(directory, 'ca.pem'), scep_ca[1])
        daemon.add_scep_ca('fake', server, ca_file)
        key_file = os.path.join(directory, 'replay.key')
        daemon.request('fake', 'replay', key_file, os.path.join(directory, 'replay.crt'), 'CN=replay.example.com', '-D', 'replay.example.com')
        daemon.wait_status('replay', ['CA_WORKING'])
        state = daemon.request_state('replay')
        (info,) = server.pki_messages
        pkcs_req = os.path.join(directory, 'pkcsreq.p7')
        with open(pkcs_req, 'w', encoding='ascii') as handle:
            handle.write('-----BEGIN PKCS7-----\n%s\n-----END PKCS7-----\n' % base64.encodebytes(info.der).decode('ascii').strip())
        get_cert_initial = os.path.join(directory, 'getcertinitial.p7')
        with open(get_cert_initial, 'w', encoding='ascii') as handle:
            handle.write(state['scep_gic'] + '\n')
        return CapturedMessages(directory, pkcs_req, get_cert_initial, key_file, ca_file, state['scep_tx'], info.sender_nonce)
    finally:
        daemon.stop()
        server.stop()


def read_pkcs_req(messages: CapturedMessages) -> bytes:
    with open(messages.pkcs_req, 'rb') as handle:
        return base64.b64decode(b''.join(line for line in handle.read().splitlines() if not line.startswith(b'-----')))


def decrypt_envelope(envelope_pem: str, key_file: str, directory, legacy: bool = False) -> list[x509.Certificate]:
    """Decrypt the pkcsPKIEnvelope scep-submit printed with OpenSSL; return the certificates of the degenerate PKCS#7 inside."""
    envelope = directory / 'envelope.pem'
    envelope.write_text(envelope_pem.replace('PKCS7-----', 'CMS-----'))
    inner = directory / 'inner.p7'
    openssl('cms', '-decrypt', '-inform', 'PEM', '-in', str(envelope), '-inkey', key_file, '-binary', '-out', str(inner), legacy=legacy)
    return pem_certificates(openssl('pkcs7', '-inform', 'DER', '-in', str(inner), '-print_certs').decode('ascii'))


def test_replayed_pkcsreq_success(fake_scep, certmonger_messages, tmp_path):
    server = fake_scep()
    result = scep_submit(server, '-p', certmonger_messages.pkcs_req, ca_file=certmonger_messages.ca_file)
    assert result.returncode == ISSUED, result.stdout + result.stderr
    (cert,) = decrypt_envelope(result.stdout, certmonger_messages.key_file, tmp_path)
    assert server.issued == [cert]
    assert public_der(cert) == public_der(load_key(certmonger_messages.key_file))
    assert server.pki_messages[0].transaction_id == certmonger_messages.transaction_id


@pytest.mark.parametrize('fail_info', sorted(FAIL_INFO_MESSAGES))
def test_failure_with_each_fail_info(fake_scep, certmonger_messages, fail_info):
    server = fake_scep()
    server.fail_info, server.fail_info_text = fail_info, 'configured by the test'
    result = scep_submit(server, '-p', certmonger_messages.pkcs_req, ca_file=certmonger_messages.ca_file)
    assert result.returncode == REJECTED, result.stdout + result.stderr
    assert FAIL_INFO_MESSAGES[fail_info] in result.stdout
    assert (server.pki_messages[0].pki_status, server.pki_messages[0].fail_info) == (FAILURE, fail_info)
    assert server.issued == []


def test_failure_without_econtent_verified_by_openssl(fake_scep, certmonger_messages, tmp_path):
    """RFC 8894 §3.3.2.2 omits the envelope on FAILURE; certmonger cannot read that ("no content"), OpenSSL can."""
    server = fake_scep()
    server.fail_info, server.empty_content = 3, False
    result = scep_submit(server, '-p', certmonger_messages.pkcs_req, ca_file=certmonger_messages.ca_file)
    assert result.returncode == UNREACHABLE and 'no content' in result.stdout, result.stdout
    status, content_type, body = http_request(server, 'POST', 'operation=PKIOperation', read_pkcs_req(certmonger_messages))
    assert (status, content_type) == (200, 'application/x-pki-message')
    (tmp_path / 'reply.p7').write_bytes(body)
    (tmp_path / 'empty').write_bytes(b'')
    openssl('cms', '-verify', '-inform', 'DER', '-in', str(tmp_path / 'reply.p7'), '-content', str(tmp_path / 'empty'),
            '-CAfile', certmonger_messages.ca_file, '-binary', '-out', os.devnull)
    printed = openssl('cms', '-cmsout', '-print', '-inform', 'DER', '-in', str(tmp_path / 'reply.p7')).decode('utf-8', 'replace')
    assert 'eContent: <ABSENT>' in printed
    attributes = signed_attributes_by_openssl(str(tmp_path / 'reply.p7'))
    assert (attributes['2.16.840.1.113733.1.9.3'], attributes['2.16.840.1.113733.1.9.4']) == ('2', '3')  # FAILURE, badTime
    assert attributes['1.3.6.1.5.5.7.24.1'] == 'configured failure'  # failInfoText


@pytest.mark.parametrize('part', ['signature', 'encrypted content'])
def test_tampered_request_is_bad_message_check(fake_scep, certmonger_messages, tmp_path, part):
    """The fake checks the request signature and messageDigest: one flipped bit gives FAILURE badMessageCheck."""
    server = fake_scep()
    der = bytearray(read_pkcs_req(certmonger_messages))
    signed_data = cms.ContentInfo.load(bytes(der))['content']
    if part == 'signature':
        target = signed_data['signer_infos'][0]['signature'].native
    else:
        target = bytes(signed_data['encap_content_info']['content'])[-64:]
    offset = bytes(der).rfind(target)
    assert offset > 0
    der[offset + len(target) // 2] ^= 0x01
    status, _content_type, body = http_request(server, 'POST', 'operation=PKIOperation', bytes(der))
    assert status == 200
    (tmp_path / 'reply.p7').write_bytes(body)
    attributes = signed_attributes_by_openssl(str(tmp_path / 'reply.p7'))
    assert (attributes['2.16.840.1.113733.1.9.3'], attributes['2.16.840.1.113733.1.9.4']) == ('2', '1')
    assert attributes['2.16.840.1.113733.1.9.6'] == certmonger_messages.sender_nonce.hex()
    assert server.issued == []
    assert ('signature' if part == 'signature' else 'messageDigest') in server.pki_messages[0].error


def test_pending_and_certpoll_with_certmongers_getcertinitial(fake_scep, certmonger_messages, tmp_path):
    server = fake_scep()
    server.pending = True
    result = scep_submit(server, '-p', certmonger_messages.pkcs_req, ca_file=certmonger_messages.ca_file)
    assert result.returncode == WAIT, result.stdout + result.stderr
    assert list(server.pending_transactions) == [certmonger_messages.transaction_id]

    result = scep_submit(server, '-g', certmonger_messages.get_cert_initial, ca_file=certmonger_messages.ca_file)
    assert result.returncode == WAIT, result.stdout + result.stderr
    server.approve(certmonger_messages.transaction_id)
    result = scep_submit(server, '-g', certmonger_messages.get_cert_initial, ca_file=certmonger_messages.ca_file)
    assert result.returncode == ISSUED, result.stdout + result.stderr
    (cert,) = decrypt_envelope(result.stdout, certmonger_messages.key_file, tmp_path)
    assert server.issued == [cert]
    assert [(entry.message_type, entry.transaction_id) for entry in server.request_log if entry.operation == 'PKIOperation'] == [
        (PKCS_REQ, certmonger_messages.transaction_id), (CERT_POLL, certmonger_messages.transaction_id),
        (CERT_POLL, certmonger_messages.transaction_id)]
    assert [info.pki_status for info in server.pki_messages] == [PENDING, PENDING, SUCCESS]


def test_rejected_pending_request(fake_scep, certmonger_messages):
    server = fake_scep()
    server.pending = True
    assert scep_submit(server, '-p', certmonger_messages.pkcs_req, ca_file=certmonger_messages.ca_file).returncode == WAIT
    assert server.reject() == [certmonger_messages.transaction_id]
    result = scep_submit(server, '-g', certmonger_messages.get_cert_initial, ca_file=certmonger_messages.ca_file)
    assert result.returncode == REJECTED and FAIL_INFO_MESSAGES[2] in result.stdout, result.stdout + result.stderr
    assert server.pending_transactions == {} and server.issued == []


def test_certpoll_for_unknown_transaction_is_bad_cert_id(fake_scep, certmonger_messages):
    server = fake_scep()
    result = scep_submit(server, '-g', certmonger_messages.get_cert_initial, ca_file=certmonger_messages.ca_file)
    assert result.returncode == REJECTED and FAIL_INFO_MESSAGES[4] in result.stdout, result.stdout + result.stderr
    assert (server.pki_messages[0].message_type, server.pki_messages[0].fail_info) == (CERT_POLL, 4)


@pytest.mark.parametrize('corruption, message', [
    ('sign_with_unpinned_key', 'failed to verify signature'),
    ('wrong_recipient_nonce', "nonce doesn't match"),
    ('wrong_transaction_id', 'different transactionId'),
])
def test_certmonger_rejects_corrupted_replies(fake_scep, certmonger_messages, corruption, message):
    server = fake_scep()
    setattr(server, corruption, True)
    result = scep_submit(server, '-p', certmonger_messages.pkcs_req, ca_file=certmonger_messages.ca_file)
    assert result.returncode == UNREACHABLE and message in result.stdout, result.stdout + result.stderr
    assert server.pki_operation_count() == 1


@pytest.mark.parametrize('fault, value', [('http_status', 500), ('garbage_body', True), ('truncated_body', True), ('truncated_body', 'close')])
def test_certmonger_survives_faults(fake_scep, certmonger_messages, fault, value):
    server = fake_scep()
    setattr(server, fault, value)
    result = scep_submit(server, '-p', certmonger_messages.pkcs_req, ca_file=certmonger_messages.ca_file)
    assert result.returncode == UNREACHABLE, result.stdout + result.stderr
    assert server.pki_operation_count() == 1
    assert [entry.operation for entry in server.request_log] == ['GetCACaps', 'PKIOperation']


@pytest.mark.parametrize('operation, option, fault, value', [
    ('GetCACaps', '-c', 'http_status', 500), ('GetCACert', '-C', 'http_status', 503),
    ('GetCACert', '-C', 'garbage_body', True), ('GetCACert', '-C', 'truncated_body', True),
])
def test_faults_on_get_operations(fake_scep, operation, option, fault, value):
    server = fake_scep()
    server.fault_operations = {operation}
    setattr(server, fault, value)
    result = scep_submit(server, option)
    if fault == 'http_status':
        assert result.returncode in (REJECTED, UNREACHABLE) and 'response code %d' % value in result.stdout, result.stdout + result.stderr
    # certmonger finds no certificate in a garbage or truncated GetCACert body (and says so with an empty list, exit 0)
    assert 'BEGIN CERTIFICATE' not in result.stdout
    assert server.request_log[0].operation == operation


def test_hang_ends_when_the_server_stops(fake_scep, certmonger_messages):
    server = fake_scep(hang_seconds=120)
    server.hang = True
    process = subprocess.Popen(  # pylint: disable=consider-using-with
        [SCEP_SUBMIT, '-u', server.url, '-N', certmonger_messages.ca_file, '-r', certmonger_messages.ca_file, '-p', certmonger_messages.pkcs_req],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: server.pki_operation_count() == 1, 30, 'the hanging PKIOperation')
        time.sleep(0.5)
        assert process.poll() is None, 'scep-submit got an answer from a hanging server'
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < 10
        stdout, _stderr = process.communicate(timeout=30)
        assert process.returncode == UNREACHABLE, stdout
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    assert not server.running


@pytest.mark.parametrize('reply_cipher, oid', [
    ('aes128', '2.16.840.1.101.3.4.1.2'), ('aes192', '2.16.840.1.101.3.4.1.22'), ('aes256', '2.16.840.1.101.3.4.1.42'),
    ('3des', '1.2.840.113549.3.7'), ('des', '1.3.14.3.2.7'),
])
def test_reply_ciphers_decrypted_by_openssl(fake_scep, certmonger_messages, tmp_path, reply_cipher, oid):
    server = fake_scep(reply_cipher=reply_cipher, digest='sha1' if reply_cipher == 'des' else 'sha256')
    result = scep_submit(server, '-p', certmonger_messages.pkcs_req, ca_file=certmonger_messages.ca_file)
    assert result.returncode == ISSUED, result.stdout + result.stderr
    envelope = tmp_path / 'check.pem'
    envelope.write_text(result.stdout.replace('PKCS7-----', 'CMS-----'))
    printed = openssl('cms', '-cmsout', '-print', '-inform', 'PEM', '-in', str(envelope)).decode('utf-8', 'replace')
    assert re.search(r'contentEncryptionAlgorithm:\s*\n\s*algorithm: \S+ \(%s\)' % re.escape(oid), printed), printed
    (cert,) = decrypt_envelope(result.stdout, certmonger_messages.key_file, tmp_path, legacy=reply_cipher == 'des')
    assert server.issued == [cert]


def test_ra_mode_refuses_requests_encrypted_to_the_ca(fake_scep, certmonger_messages):
    """In RA mode only the encryption RA key decrypts (like NDES); certmonger's replayed request was encrypted to the CA."""
    server = fake_scep(ra_mode=True)
    result = scep_submit(server, '-p', certmonger_messages.pkcs_req, ca_file=certmonger_messages.ca_file)
    assert result.returncode == REJECTED and FAIL_INFO_MESSAGES[1] in result.stdout, result.stdout + result.stderr
    assert 'not encrypted to' in server.pki_messages[0].error


@pytest.mark.parametrize('method', ['POST', 'GET-escaped', 'GET-raw'])
def test_pkioperation_transports_checked_by_openssl(fake_scep, certmonger_messages, tmp_path, method):
    """POST (raw DER) and GET (standard base64, percent-encoded or not); the CertRep verified and read with openssl cms."""
    server = fake_scep()
    der = read_pkcs_req(certmonger_messages)
    if method == 'POST':
        status, content_type, body = http_request(server, 'POST', 'operation=PKIOperation', der)
    else:
        message = base64.b64encode(der).decode('ascii')
        assert '+' in message or '/' in message  # the escaping matters for this message
        query = urllib.parse.quote(message, safe='') if method == 'GET-escaped' else message
        status, content_type, body = http_request(server, 'GET', 'operation=PKIOperation&message=' + query)
    assert (status, content_type) == (200, 'application/x-pki-message'), body
    assert server.request_log[-1][::3] == ('PKIOperation', method.split('-')[0])

    (tmp_path / 'reply.p7').write_bytes(body)
    envelope = tmp_path / 'envelope.der'
    openssl('cms', '-verify', '-inform', 'DER', '-in', str(tmp_path / 'reply.p7'), '-CAfile', certmonger_messages.ca_file,
            '-binary', '-out', str(envelope))
    attributes = signed_attributes_by_openssl(str(tmp_path / 'reply.p7'))
    assert attributes['2.16.840.1.113733.1.9.2'] == '3'  # messageType CertRep
    assert attributes['2.16.840.1.113733.1.9.3'] == '0'  # pkiStatus SUCCESS
    assert attributes['2.16.840.1.113733.1.9.7'] == certmonger_messages.transaction_id
    assert attributes['2.16.840.1.113733.1.9.6'] == certmonger_messages.sender_nonce.hex()  # recipientNonce
    assert len(attributes['2.16.840.1.113733.1.9.5']) == 32 and attributes['2.16.840.1.113733.1.9.5'] != attributes['2.16.840.1.113733.1.9.6']
    assert 'signingTime' in attributes and 'messageDigest' in attributes and 'contentType' in attributes
    inner = tmp_path / 'inner.p7'
    openssl('cms', '-decrypt', '-inform', 'DER', '-in', str(envelope), '-inkey', certmonger_messages.key_file, '-binary', '-out', str(inner))
    (cert,) = pem_certificates(openssl('pkcs7', '-inform', 'DER', '-in', str(inner), '-print_certs').decode('ascii'))
    assert server.issued == [cert]


def test_get_with_base64url_is_refused(fake_scep, certmonger_messages):
    """RFC 8894 §4.1: standard base64, not base64url (micromdm's scepclient 2.1.0 sends base64url without POSTPKIOperation)."""
    server = fake_scep()
    message = base64.urlsafe_b64encode(read_pkcs_req(certmonger_messages)).decode('ascii')
    assert '-' in message or '_' in message
    status, _content_type, body = http_request(server, 'GET', 'operation=PKIOperation&message=' + message)
    assert status == 400 and b'base64' in body
    assert server.issued == [] and server.request_log[-1] == ('PKIOperation', None, None, 'GET')


# --- a second independent client: micromdm's scepclient (Go) -----------------------------------

SCEPCLIENT = '/usr/bin/scepclient'


def scepclient(server: FakeScepServer, directory, *extra: str) -> subprocess.CompletedProcess:
    """micromdm scepclient 2.1.0: DES-CBC requests signed with SHA-1, POST when POSTPKIOperation is offered;
    RenewalReq (17) signed by <directory>/client.pem when that file exists."""
    if not os.path.exists(SCEPCLIENT):
        pytest.fail('%s not installed (Debian package scep); run "make deps"' % SCEPCLIENT)
    return run([SCEPCLIENT, '-server-url', server.url, '-private-key', str(directory / 'key.pem'), '-certificate',
                str(directory / 'client.pem'), '-cn', 'scepclient.example.com', '-challenge', 'Go-challenge-42'] + list(extra), text=True)


@pytest.mark.parametrize('reply_cipher', ['aes128', 'aes256', '3des', 'des'])
def test_scepclient_enrolls_and_renews(fake_scep, tmp_path, reply_cipher):
    """scepclient cannot decrypt AES-192 replies (its pkcs7 library has no AES-192)."""
    server = fake_scep(challenge='Go-challenge-42', reply_cipher=reply_cipher, digest='sha1' if reply_cipher == 'des' else 'sha256')
    write_pem(str(tmp_path / 'ca.pem'), server.ca_cert)
    result = scepclient(server, tmp_path, '-ca-fingerprint', server.ca_fingerprint)
    assert result.returncode == 0, result.stdout + result.stderr
    assert_issued_by(str(tmp_path / 'client.pem'), str(tmp_path / 'ca.pem'))
    first = load_cert(str(tmp_path / 'client.pem'))
    assert public_der(first) == public_der(load_key(str(tmp_path / 'key.pem')))
    (request,) = server.pki_messages
    assert (request.message_type, request.method, request.content_cipher, request.digest) == (PKCS_REQ, 'POST', 'des', 'sha1')
    assert request.challenge_password == 'Go-challenge-42'

    # a second run with the certificate in place is a RenewalReq signed by it (the fake checks it was issued by the CA)
    result = scepclient(server, tmp_path, '-ca-fingerprint', server.ca_fingerprint)
    assert result.returncode == 0, result.stdout + result.stderr
    renewal = server.pki_messages[-1]
    assert (renewal.message_type, renewal.pki_status, renewal.signer_certificate) == (RENEWAL_REQ, SUCCESS, first)
    second = load_cert(str(tmp_path / 'client.pem'))
    assert second != first and server.issued == [first, second]


def test_scepclient_with_ra_certificates(fake_scep, tmp_path):
    server = fake_scep(challenge='Go-challenge-42', ra_mode=True)
    result = scepclient(server, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    write_pem(str(tmp_path / 'ca.pem'), server.ca_cert)
    assert_issued_by(str(tmp_path / 'client.pem'), str(tmp_path / 'ca.pem'))
    # scepclient 2.1.0 encrypts to every certificate GetCACert returned; the fake picks its encryption RA
    assert server.pki_messages[0].recipient == server.ra_enc_cert.subject.rfc4514_string()


# --- the command line ------------------------------------------------------------------------

def test_cli_serves_and_is_controlled_at_runtime(tmp_path):
    help_text = run([sys.executable, FAKE_SCRIPT, '--help'], text=True)
    assert help_text.returncode == 0 and '--pending' in help_text.stdout and '--ra' in help_text.stdout

    ca_out = tmp_path / 'ca.pem'
    process = subprocess.Popen(  # pylint: disable=consider-using-with
        [sys.executable, FAKE_SCRIPT, '--caps', '3des-only', '--ca-out', str(ca_out), '--max-seconds', '120'],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = None
        deadline = time.monotonic() + 30
        while url is None and time.monotonic() < deadline:
            ready, _w, _x = select.select([process.stdout], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            line = process.stdout.readline()
            if not line:
                break
            if 'responder at ' in line:
                url = line.split('responder at ', 1)[1].strip()
        assert url and url.startswith('http://127.0.0.1:'), 'no URL printed'
        caps = run([SCEP_SUBMIT, '-u', url, '-c'], text=True)
        assert caps.returncode == 0 and caps.stdout.split() == CAPS_PRESETS['3des-only']
        certs = run([SCEP_SUBMIT, '-u', url, '-C'], text=True)
        assert pem_certificates(certs.stdout) == [load_cert(str(ca_out))]

        parts = urllib.parse.urlsplit(url)
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=TIMEOUT)
        try:
            connection.request('POST', parts.path + '/_control', body=b'{"pending": true, "fail_info": 4}')
            response = connection.getresponse()
            state = response.read().decode('utf-8')
        finally:
            connection.close()
        assert response.status == 200 and '"pending": true' in state and '"fail_info": 4' in state
        assert '"GetCACaps"' in state
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        process.stdout.close()
    assert process.returncode == 0
