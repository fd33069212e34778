# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The step-ca fixture: SCEP answers, loopback only, scepclient and scep_enroll enrollments, lifetimes, exact counts."""

# pylint: disable=redefined-outer-name

from __future__ import annotations

import datetime
import json
import os
import socket
import subprocess
import time
import urllib.error

import pytest
from asn1crypto import cms
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from harness import FOUR_RUN, assert_four_run, four_run_tasks, free_port, module_task, random_pin
from micromdm import run_scepclient
from stepca import BACKDATE, DEFAULT_LIFETIME, StepCaServer, verify_chain

STEPCA_CAPS = ['Renewal', 'SHA-1', 'SHA-256', 'AES', 'DES3', 'SCEPStandard', 'POSTPKIOperation']
"""step-ca 0.19's default capabilities (scep/authority.go defaultCapabilities), in its order."""


def der(certificate):
    return certificate.public_bytes(serialization.Encoding.DER)


def public_der(key_or_certificate):
    return key_or_certificate.public_key().public_bytes(serialization.Encoding.DER,
                                                        serialization.PublicFormat.SubjectPublicKeyInfo)


def openssl(*args):
    completed = subprocess.run(['openssl'] + [str(arg) for arg in args], capture_output=True, text=True, check=False,
                               timeout=30)
    return completed.returncode, completed.stdout + completed.stderr


def listening_sockets(pid):
    """(address, port) of every TCP socket in LISTEN state that process ``pid`` holds, IPv4 and IPv6."""
    inodes = set()
    for fd in os.listdir('/proc/%d/fd' % pid):
        try:
            target = os.readlink('/proc/%d/fd/%s' % (pid, fd))
        except OSError:
            continue
        if target.startswith('socket:['):
            inodes.add(target[len('socket:['):-1])
    found = []
    for table, family in (('tcp', socket.AF_INET), ('tcp6', socket.AF_INET6)):
        with open('/proc/%d/net/%s' % (pid, table), encoding='ascii') as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state != '0A' or inode not in inodes:  # 0A = TCP_LISTEN
                    continue
                address, port = local.split(':')
                raw = bytes.fromhex(address)
                # /proc prints the address as 32-bit words in host byte order (little-endian here)
                raw = b''.join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
                found.append((socket.inet_ntop(family, raw), int(port, 16)))
    return sorted(found)


def lifetime_of(certificate):
    """notAfter - notBefore; step-ca backdates notBefore by BACKDATE, the lifetime counts from the signing time."""
    return certificate.not_valid_after_utc - certificate.not_valid_before_utc - BACKDATE


def test_getcacaps_getcacert_and_the_api(stepca):
    started = time.monotonic()
    server = stepca()
    print('\nstep-ca fixture start (config, process, both ports answering): %.3f s' % (time.monotonic() - started))
    assert server.running
    assert server.url == 'http://127.0.0.1:%d/scep/tokenfleet' % server.http_port
    assert server.get('GetCACaps').decode('ascii').split('\r\n') == STEPCA_CAPS
    content_type, body = server.request('GetCACert')
    assert content_type == 'application/x-x509-ca-cert'
    assert body == der(server.intermediate_certificate)  # the intermediate only, no root
    # the fingerprints the fixture exposes are those openssl computes from the PEM files
    for path, expected in ((server.root_pem_path, server.root_fingerprint),
                           (server.intermediate_pem_path, server.intermediate_fingerprint)):
        rc, output = openssl('x509', '-in', path, '-noout', '-fingerprint', '-sha256')
        assert rc == 0 and output.strip().split('=', 1)[1].lower() == expected, output
    assert server.intermediate_certificate.issuer == server.root_certificate.subject
    # the HTTPS API: its server certificate verifies against our root, and it serves that root
    assert x509.load_pem_x509_certificate(server.https_get('/roots.pem')) == server.root_certificate
    provisioners = json.loads(server.https_get('/provisioners'))['provisioners']
    assert [(p['type'], p['name']) for p in provisioners] == [('SCEP', 'tokenfleet')]  # no JWK, ACME, ...
    assert server.challenge not in json.dumps(provisioners)

    with_root = stepca(include_root=True, provisioner='printers')
    assert with_root.url == 'http://127.0.0.1:%d/scep/printers' % with_root.http_port
    content_type, body = with_root.request('GetCACert')
    assert content_type == 'application/x-x509-ca-ra-cert'
    # a degenerate PKCS#7 (certs-only SignedData); step-ca does not sort the SET, so asn1crypto rather than cryptography
    certificates = [x509.load_der_x509_certificate(c.dump()) for c in cms.ContentInfo.load(body)['content']['certificates']]
    assert certificates == [with_root.intermediate_certificate, with_root.root_certificate]
    assert with_root.challenge != server.challenge and len(with_root.challenge) == 32
    assert server.pkioperation_count() == with_root.pkioperation_count() == 0
    assert server.issued() == with_root.issued() == []


def test_listens_on_loopback_only(stepca):
    server = stepca()
    assert listening_sockets(server.process.pid) == sorted([('127.0.0.1', server.https_port),
                                                            ('127.0.0.1', server.http_port)])


def test_scepclient_enrolls_and_the_chain_verifies(stepca, tmp_path):
    server = stepca()
    client = tmp_path / 'client'
    before = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    run = run_scepclient(server, client, cn='ws01.example.com', challenge=server.challenge,
                         ca_fingerprint=server.pki.intermediate_fingerprint_hex)
    after = datetime.datetime.now(datetime.timezone.utc)
    assert run.returncode == 0, run.output
    assert 'pkiStatus=SUCCESS' in run.output
    ok, output = verify_chain(server, run.certificate_path)
    assert ok, output
    rc, output = openssl('verify', '-CAfile', server.root_pem_path, run.certificate_path)
    assert rc != 0, 'the certificate is issued by the intermediate, not the root: %s' % output
    certificate = x509.load_pem_x509_certificate((client / 'client.pem').read_bytes())
    key = serialization.load_pem_private_key((client / 'key.pem').read_bytes(), None)
    assert public_der(certificate) == public_der(key)
    assert certificate.issuer == server.intermediate_certificate.subject
    assert certificate.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)[0].value == 'ws01.example.com'
    # step-ca's default lifetime: 24 hours from the signing time
    assert lifetime_of(certificate) == DEFAULT_LIFETIME == datetime.timedelta(hours=24)
    assert before <= certificate.not_valid_after_utc - DEFAULT_LIFETIME <= after
    issued = server.issued()
    assert [(entry.serial, entry.subject, entry.provisioner) for entry in issued] == [
        (certificate.serial_number, 'ws01.example.com', 'tokenfleet')]
    assert issued[0].certificate == certificate
    assert server.pkioperation_count() == 1
    assert server.errors() == []
    assert server.challenge not in run.output and server.challenge not in server.log_text()


@pytest.mark.parametrize('lifetime', [datetime.timedelta(hours=2), datetime.timedelta(days=30)], ids=['2h', '30d'])
def test_configured_lifetime(stepca, tmp_path, lifetime):
    server = stepca(lifetime=lifetime)
    run = run_scepclient(server, tmp_path / 'client', cn='ws02.example.com', challenge=server.challenge,
                         ca_fingerprint=server.pki.intermediate_fingerprint_hex)
    assert run.returncode == 0, run.output
    certificate = x509.load_pem_x509_certificate((tmp_path / 'client' / 'client.pem').read_bytes())
    assert lifetime_of(certificate) == lifetime
    assert [entry.serial for entry in server.issued()] == [certificate.serial_number]


def test_wrong_challenge_is_refused_and_counted(stepca, tmp_path):
    server = stepca()
    wrong = random_pin(32)
    run = run_scepclient(server, tmp_path / 'client', cn='intruder.example.com', challenge=wrong,
                         ca_fingerprint=server.pki.intermediate_fingerprint_hex)
    assert run.returncode != 0
    assert 'failInfo: badRequest' in run.output, run.output
    assert not os.path.exists(run.certificate_path)
    assert server.issued() == []
    assert server.pkioperation_count() == 1
    assert server.errors() == ['wrong password provided']
    assert wrong not in server.log_text() and server.challenge not in server.log_text()


def test_pkioperation_count_is_exact(stepca):
    """Known numbers of raw requests: every PKIOperation counts at once, other requests never do."""
    server = stepca()
    for number, body in enumerate([b'garbage', b'', b'\x30\x03\x02\x01\x00'], start=1):
        with pytest.raises(urllib.error.HTTPError) as error:
            server.request('PKIOperation', method='POST', body=body)
        assert error.value.code == 500
        assert server.pkioperation_count() == number, server.log_text()
    # step-ca 0.19 does not implement GET PKIOperation (it does not announce it either): an empty 200 answer
    assert server.request('PKIOperation&message=Z2FyYmFnZQ%3D%3D') == ('text/plain', b'')
    assert server.pkioperation_count() == 4
    for operation in ('GetCACaps', 'GetCACert'):
        server.get(operation)
    server.https_get('/health')
    assert server.pkioperation_count() == 4
    assert server.issued() == []


def test_recording_proxy_tells_renewalreq_from_pkcsreq(stepca, tmp_path):
    """With record=True the SCEP URL goes through the proxy; scepclient 2.1.0 renews with RenewalReq once it has a certificate."""
    server = stepca(record=True)
    assert server.url == 'http://127.0.0.1:%d/scep/tokenfleet' % server.proxy.port != server.direct_url
    serials = []
    for dummy in range(2):
        run = run_scepclient(server, tmp_path / 'client', cn='ws03.example.com', challenge=server.challenge,
                             ca_fingerprint=server.pki.intermediate_fingerprint_hex)
        assert run.returncode == 0, run.output
        serials.append(x509.load_pem_x509_certificate((tmp_path / 'client' / 'client.pem').read_bytes()).serial_number)
    messages = server.pki_messages()
    assert [message['message_type'] for message in messages] == ['PKCSReq (19)', 'RenewalReq (17)']
    assert all(message['transaction_id'] for message in messages)
    assert [entry.serial for entry in server.issued()] == serials and serials[0] != serials[1]
    assert server.pkioperation_count() == 2
    # a request that is no pkiMessage is recorded (and counted by step-ca) as well
    with pytest.raises(urllib.error.HTTPError):
        server.request('PKIOperation', method='POST', body=b'garbage')
    assert server.pki_messages()[2:] == [dict(message_type='unparsable', transaction_id='')]
    assert server.pkioperation_count() == 3
    proxy_port = server.proxy.port
    server.stop()
    with pytest.raises(OSError):
        socket.create_connection(('127.0.0.1', proxy_port), timeout=2).close()
    assert len(server.pki_messages()) == 3  # kept after the stop


def test_scep_enroll_with_a_file_key_pinned_to_the_intermediate(stepca, run_playbook, tmp_path):
    """tokenfleet.pki.scep_enroll as it is today: an RSA key file, ca_certificate_path = the intermediate."""
    server = stepca()
    args = dict(url=server.url, ca_certificate_path=server.intermediate_pem_path, challenge_password=server.challenge,
                private_key_path=str(tmp_path / 'key.pem'), certificate_path=str(tmp_path / 'cert.pem'),
                chain_path=str(tmp_path / 'chain.pem'), common_name='mfp01.example.com', organization_name='Example AS')
    run = run_playbook([module_task('scep_enroll', 'enroll', args)], verbosity=3)
    record = run.result('enroll')
    assert record['status'] == 'ok' and record['changed'], run.output()
    assert record['result']['status'] == 'issued'
    ok, output = verify_chain(server, tmp_path / 'cert.pem')
    assert ok, output
    certificate = x509.load_pem_x509_certificate((tmp_path / 'cert.pem').read_bytes())
    key = serialization.load_pem_private_key((tmp_path / 'key.pem').read_bytes(), None)
    assert public_der(certificate) == public_der(key)
    assert certificate.subject.rfc4514_string() == 'CN=mfp01.example.com,O=Example AS'
    assert lifetime_of(certificate) == DEFAULT_LIFETIME
    assert x509.load_pem_x509_certificates((tmp_path / 'chain.pem').read_bytes()) == [server.intermediate_certificate]
    assert record['result']['certificate']['serial_number'] == '%x' % certificate.serial_number
    assert [entry.serial for entry in server.issued()] == [certificate.serial_number]
    assert server.pkioperation_count() == 1
    run.assert_not_leaked(server.challenge)


def test_scep_enroll_with_an_rsa_token_key_four_run_then_renewalreq(stepca, token, run_playbook, tmp_path):
    """An RSA key on a SoftHSM token, the root pinned by file: the four-run check, then a forced renewal that goes out
    as RenewalReq; request signed and reply decrypted on the token."""
    server = stepca(record=True)
    hsm = token['hsm']
    args = dict(url=server.url, ca_certificate_path=server.root_pem_path, challenge_password=server.challenge,
                pkcs11_module=hsm.module, token_label=token['label'], user_pin=token['user'], key_label='vpn',
                store_on_token=True, certificate_path=str(tmp_path / 'cert.pem'), common_name='ws01.example.com',
                renewal_message='renewalreq')
    key = module_task('token_key', 'key', dict(pkcs11_module=hsm.module, token_label=token['label'],
                                               user_pin=token['user'], label='vpn', type='rsa', size=2048))
    run = run_playbook([key] + four_run_tasks('scep_enroll', args)
                       + [module_task('scep_enroll', 'renew', dict(args, force=True))], verbosity=3)
    assert_four_run(run, FOUR_RUN)
    assert run.result('run 1')['result']['status'] == 'issued'
    assert run.result('renew')['result']['status'] == 'renewed', run.output()
    ok, output = verify_chain(server, tmp_path / 'cert.pem')
    assert ok, output
    hsm.pkcs11_tool('--token-label', token['label'], '--read-object', '--type', 'pubkey', '--label', 'vpn',
                    '--output-file', str(tmp_path / 'vpn.pub.der'))
    token_public = serialization.load_der_public_key((tmp_path / 'vpn.pub.der').read_bytes())
    certificate = x509.load_pem_x509_certificate((tmp_path / 'cert.pem').read_bytes())
    assert public_der(certificate) == token_public.public_bytes(serialization.Encoding.DER,
                                                                serialization.PublicFormat.SubjectPublicKeyInfo)
    hsm.pkcs11_tool('--token-label', token['label'], '--read-object', '--type', 'cert', '--label', 'vpn',
                    '--output-file', str(tmp_path / 'vpn.cert.der'))
    assert x509.load_der_x509_certificate((tmp_path / 'vpn.cert.der').read_bytes()) == certificate
    assert [entry.serial for entry in server.issued()][-1] == certificate.serial_number
    assert server.issued_count() == 2
    assert [message['message_type'] for message in server.pki_messages()] == ['PKCSReq (19)', 'RenewalReq (17)']
    run.assert_not_leaked(server.challenge, token['user'], token['so'])


def test_stop_start_and_context_manager(tmp_path, stepca_pki):
    with StepCaServer(tmp_path / 'stepca', stepca_pki) as server:
        process, ports = server.process, (server.https_port, server.http_port)
        server.get('GetCACaps')
        server.stop()
        assert process.poll() is not None and not server.running
        with pytest.raises(OSError):
            server.get('GetCACaps', timeout=2)
        server.start()  # same configuration, database, log and ports
        assert (server.https_port, server.http_port) == ports and server.running
        with pytest.raises(urllib.error.HTTPError):
            server.request('PKIOperation', method='POST', body=b'x')
        assert server.pkioperation_count() == 1
        second = server.process
    assert second.poll() is not None and server.process is None
    with pytest.raises(ProcessLookupError):
        os.kill(second.pid, 0)


def test_start_failure_reports_the_log_and_leaves_no_process(tmp_path, stepca_pki):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(('127.0.0.1', free_port()))
        busy.listen(1)
        server = StepCaServer(tmp_path / 'stepca', stepca_pki, start_timeout=10)
        server.https_port, server.http_port = busy.getsockname()[1], free_port()
        with pytest.raises(RuntimeError, match='address already in use'):
            server.start()
    assert server.process is None and not server.running
