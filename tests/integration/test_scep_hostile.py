# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""scep_enroll and scep_ca_info against hostile SCEP servers on 127.0.0.1 (our responder in tests/fakes).

- RA rule: a device certificate the CA issued (clientAuth, keyEncipherment) in GetCACert never receives
  the request, and a CertRep it signs is refused with its subject named; real RA certificates (no EKU,
  NDES's Certificate Request Agent EKU, anyExtendedKeyUsage, or pinned by ra_fingerprint) still work.
- Deadline: ``timeout`` bounds the whole run, also against a server that drips its answer.
- Size: answers over the cap end with a message naming the limit.
- No silent downgrade: a failing GetCACaps stops the run unless both algorithms are set.
- Server text (failInfoText, HTTP bodies) reaches messages cut and stripped of control characters.
"""

from __future__ import annotations

import functools
import http.server
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import pytest
from asn1crypto import cms
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from fixtures_scep import fake_scep, scep_ca, wait_for  # noqa: F401  pylint: disable=unused-import
from harness import REPO_ROOT, module_task, random_pin

sys.path.insert(0, os.path.join(REPO_ROOT, 'tests', 'fakes'))
from scep_responder import degenerate_signed_data, issue_certificate  # noqa: E402  pylint: disable=wrong-import-position,import-error

PKCSREQ = 19
CLIENT_AUTH = ExtendedKeyUsageOID.CLIENT_AUTH.dotted_string
SERVER_AUTH = ExtendedKeyUsageOID.SERVER_AUTH.dotted_string
CERTIFICATE_REQUEST_AGENT = '1.3.6.1.4.1.311.20.2.1'
ANY_EKU = '2.5.29.37.0'
ROGUE_CN = 'mfp99.example.com rogue device'


@pytest.fixture
def fake(fake_scep):
    return functools.partial(fake_scep, challenge=random_pin(32))


@pytest.fixture
def rogue(scep_ca):
    """A device certificate the CA issued (clientAuth only, keyEncipherment + digitalSignature), and its key."""
    key, cert = issue_certificate(scep_ca[0], scep_ca[1], ROGUE_CN, eku=[CLIENT_AUTH])
    return key, cert


def args_for(server, tmp_path, **options):
    args = dict(url=server.url, ca_fingerprint=server.ca_fingerprint, challenge_password=server.challenge,
                private_key_path=str(tmp_path / 'key.pem'), certificate_path=str(tmp_path / 'cert.pem'),
                common_name='mfp02.example.com', timeout=10)
    args.update(options)
    return args


def written(tmp_path):
    """The files scep_enroll may write into tmp_path (the runner's own files left aside)."""
    return sorted(name for name in os.listdir(tmp_path) if name.startswith(('key.pem', 'cert.pem')))


def recipients(server):
    """Serial numbers of the recipients of every PKCSReq's envelope, as the server read them."""
    return [[serial for dummy, serial in message.recipients] for message in server.pki_messages
            if message.message_type == PKCSREQ]


def roles_by_subject(info):
    """{subject: role} of a scep_ca_info result (a PKCS#7 holds its certificates in DER order, not as sent)."""
    return dict((cert['subject'], cert['role']) for cert in info['certificates'])


def fingerprint(cert):
    return cert.fingerprint(hashes.SHA256()).hex()


# --- RA rule -----------------------------------------------------------------------------------

def test_a_device_certificate_in_get_ca_cert_never_receives_the_request(fake, rogue, run_playbook, tmp_path):
    server = fake(extra_ca_certs=[rogue[1]], extra_decryption_keys=[rogue])  # the rogue could read a request to it
    run = run_playbook([module_task('scep_enroll', 'enroll', args_for(server, tmp_path)),
                        module_task('scep_ca_info', 'info', dict(url=server.url, ca_fingerprint=server.ca_fingerprint))],
                       verbosity=3)
    record = run.result('enroll')
    assert record['status'] == 'ok' and record['result']['status'] == 'issued', run.output()
    assert recipients(server) == [[server.ca_cert.serial_number]]
    info = dict((cert['subject'], cert) for cert in run.result('info')['result']['certificates'])
    device = info[rogue[1].subject.rfc4514_string()]
    assert device['role'] == 'not-ra'
    assert device['extended_key_usage'] == ['clientAuth']
    assert device['not_ra_reason'].startswith('its extended key usage (clientAuth) limits it to other uses than an RA')
    run.assert_not_leaked(server.challenge)


@pytest.mark.parametrize('behaviour', [dict(pending=True), dict(fail_info=2, fail_info_text='keep trying'), {}])
def test_a_reply_signed_by_a_device_certificate_is_refused_and_nothing_is_written(fake, rogue, run_playbook, tmp_path, behaviour):
    server = fake(extra_ca_certs=[rogue[1]], reply_signer=rogue, extra_decryption_keys=[rogue], **behaviour)
    record = run_playbook([module_task('scep_enroll', 'enroll', args_for(server, tmp_path))]).result('enroll')
    assert record['status'] == 'failed'
    message = record['result']['msg']
    assert message.startswith('the SCEP reply is not signed by the pinned CA or an RA certificate it issued: its signer '
                              '%s is not an RA for signing (its extended key usage (clientAuth) limits it to other uses '
                              'than an RA\'s' % rogue[1].subject.rfc4514_string()), message
    assert 'an RA certificate must be issued by the pinned CA' in message
    assert written(tmp_path) == []
    assert server.pki_operation_count(PKCSREQ) == 1


@pytest.mark.parametrize('ra_eku', [None, [CERTIFICATE_REQUEST_AGENT], [ANY_EKU]], ids=['no-eku', 'cra-eku', 'any-eku'])
def test_real_ra_certificates_work_beside_a_device_certificate(fake, rogue, run_playbook, tmp_path, ra_eku):
    server = fake(ra_mode=True, ra_eku=ra_eku, extra_ca_certs=[rogue[1]])
    run = run_playbook([module_task('scep_enroll', 'enroll', args_for(server, tmp_path)),
                        module_task('scep_ca_info', 'info', dict(url=server.url, ca_fingerprint=server.ca_fingerprint))])
    record = run.result('enroll')
    assert record['result']['status'] == 'issued', run.output()
    assert recipients(server) == [[server.ra_enc_cert.serial_number]]
    assert roles_by_subject(run.result('info')['result']) == {
        server.ca_cert.subject.rfc4514_string(): 'ca', rogue[1].subject.rfc4514_string(): 'not-ra',
        server.ra_sign_cert.subject.rfc4514_string(): 'ra-signing', server.ra_enc_cert.subject.rfc4514_string(): 'ra-encryption'}


def test_ra_fingerprint_pins_ra_certificates_and_nothing_else(fake, rogue, run_playbook, tmp_path):
    """RA certificates from a TLS template (serverAuth EKU) are no RAs by the EKU rule, but can be pinned."""
    server = fake(ra_mode=True, ra_eku=[SERVER_AUTH])
    pins = [fingerprint(server.ra_sign_cert), ':'.join('%02X' % byte for byte in server.ra_enc_cert.fingerprint(hashes.SHA256()))]
    info_args = dict(url=server.url, ca_fingerprint=server.ca_fingerprint)
    run = run_playbook([
        module_task('scep_ca_info', 'unpinned', info_args),
        module_task('scep_ca_info', 'pinned', dict(info_args, ra_fingerprint=pins)),
        module_task('scep_enroll', 'missing pin', args_for(server, tmp_path, ra_fingerprint=['ab' * 32])),
        module_task('scep_enroll', 'bad pin', args_for(server, tmp_path, ra_fingerprint='zz')),
        module_task('scep_enroll', 'enroll', args_for(server, tmp_path, ra_fingerprint=pins)),
    ])
    unpinned = run.result('unpinned')['result']['certificates']
    assert sorted(cert['role'] for cert in unpinned) == ['ca', 'not-ra', 'not-ra']
    assert all(cert['not_ra_reason'].startswith('its extended key usage (serverAuth)') for cert in unpinned if cert['role'] != 'ca')
    assert roles_by_subject(run.result('pinned')['result']) == {
        server.ca_cert.subject.rfc4514_string(): 'ca', server.ra_sign_cert.subject.rfc4514_string(): 'ra-signing',
        server.ra_enc_cert.subject.rfc4514_string(): 'ra-encryption'}
    assert run.result('missing pin')['result']['msg'].startswith(
        'ra_fingerprint %s matches none of the certificates the SCEP server sent (' % ('ab' * 32))
    assert run.result('bad pin')['result']['msg'].startswith('ra_fingerprint must list SHA-256 fingerprints')
    assert run.result('enroll')['result']['status'] == 'issued', run.output()
    assert recipients(server) == [[server.ra_enc_cert.serial_number]]
    assert server.pki_operation_count() == 1  # the failing tasks sent nothing


def test_with_ra_fingerprint_an_unpinned_ra_is_not_trusted(fake, run_playbook, tmp_path):
    """Only the signing RA is pinned: the encryption RA (no EKU, an RA by the EKU rule) is not used, the run stops."""
    server = fake(ra_mode=True)
    run = run_playbook([module_task('scep_enroll', 'enroll',
                                    args_for(server, tmp_path, ra_fingerprint=[fingerprint(server.ra_sign_cert)])),
                        module_task('scep_ca_info', 'info', dict(url=server.url, ca_fingerprint=server.ca_fingerprint,
                                                                 ra_fingerprint=[fingerprint(server.ra_sign_cert)]))])
    certificates = dict((cert['subject'], (cert['role'], cert.get('not_ra_reason')))
                        for cert in run.result('info')['result']['certificates'])
    assert certificates == {server.ca_cert.subject.rfc4514_string(): ('ca', None),
                            server.ra_sign_cert.subject.rfc4514_string(): ('ra-signing', None),
                            server.ra_enc_cert.subject.rfc4514_string(): ('not-ra', 'not pinned by ra_fingerprint')}
    # encrypted to the pinned CA instead, which this server (NDES-like) cannot decrypt: it says so, nothing is written
    assert recipients(server) == [[server.ca_cert.serial_number]]
    assert run.result('enroll')['result']['msg'].startswith('the SCEP server rejected the request: FAILURE 1 (badMessageCheck')
    assert written(tmp_path) == []


class RogueProxy:
    """In front of a real micromdm scepserver on 127.0.0.1: GetCACert answers [CA, rogue certificate], the rest is
    passed through; records the recipients (serial numbers) of every PKIOperation envelope it forwards."""

    def __init__(self, upstream, rogue_certificate):
        self.upstream = upstream
        self.ca_ra = degenerate_signed_data([upstream.ca_certificate, rogue_certificate])
        self.recipients = []
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            timeout = 30

            def log_message(self, *args):  # pylint: disable=arguments-differ
                pass

            def do_GET(self):  # pylint: disable=invalid-name
                self.forward(None)

            def do_POST(self):  # pylint: disable=invalid-name
                self.forward(self.rfile.read(int(self.headers.get('Content-Length') or 0)))

            def forward(self, body):
                if 'operation=GetCACert' in self.path:
                    self.answer(200, 'application/x-x509-ca-ra-cert', proxy.ca_ra)
                    return
                if body is not None and 'operation=PKIOperation' in self.path:
                    proxy.record(body)
                request = urllib.request.Request('http://127.0.0.1:%d%s' % (upstream.port, self.path), data=body,
                                                 method=self.command, headers={'Content-Type': 'application/x-pki-message'})
                try:
                    with proxy.opener.open(request, timeout=20) as response:
                        self.answer(response.status, response.headers.get('Content-Type', ''), response.read())
                except urllib.error.HTTPError as exc:
                    self.answer(exc.code, 'text/plain', exc.read())

            def answer(self, status, content_type, data):
                self.send_response(status)
                self.send_header('Content-Type', content_type)
                self.send_header('Content-Length', str(len(data)))
                self.send_header('Connection', 'close')
                self.end_headers()
                self.wfile.write(data)

        self.httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={'poll_interval': 0.1}, daemon=True)

    def record(self, body):
        enveloped = cms.ContentInfo.load(cms.ContentInfo.load(body)['content']['encap_content_info']['content'].native)
        self.recipients.append([info.chosen['rid'].chosen['serial_number'].native
                                for info in enveloped['content']['recipient_infos']])

    @property
    def url(self):
        return 'http://127.0.0.1:%d/scep' % self.httpd.server_address[1]

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc_info):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(10)


def test_micromdm_a_device_certificate_in_get_ca_cert_never_receives_the_request(micromdm, run_playbook, tmp_path):
    """A real CA: micromdm decrypts only what is encrypted to its CA; the device certificate is one its CA issued."""
    challenge = random_pin(32)
    server = micromdm(challenge=challenge, allowrenew=0)
    # scepserver 2.1.0 writes its CA key 3DES-encrypted with an empty password, which only openssl reads
    plain = subprocess.run(['openssl', 'rsa', '-in', os.path.join(server.depot, 'ca.key'), '-passin', 'pass:'],
                           capture_output=True, check=True, timeout=30).stdout
    ca_key = serialization.load_pem_private_key(plain, None)
    dummy, device = issue_certificate(ca_key, server.ca_certificate, ROGUE_CN, eku=[CLIENT_AUTH])
    with RogueProxy(server, device) as proxy:
        args = dict(url=proxy.url, ca_fingerprint=server.ca_fingerprint_sha256, challenge_password=challenge,
                    private_key_path=str(tmp_path / 'key.pem'), certificate_path=str(tmp_path / 'cert.pem'),
                    common_name='mfp03.example.com', timeout=20)
        run = run_playbook([module_task('scep_enroll', 'enroll', args),
                            module_task('scep_ca_info', 'info', dict(url=proxy.url, ca_fingerprint=server.ca_fingerprint_sha256))])
    assert run.result('enroll')['result']['status'] == 'issued', run.output()
    assert proxy.recipients == [[server.ca_certificate.serial_number]]
    assert roles_by_subject(run.result('info')['result']) == {server.ca_certificate.subject.rfc4514_string(): 'ca',
                                                              device.subject.rfc4514_string(): 'not-ra'}
    verified = subprocess.run(['openssl', 'verify', '-CAfile', server.ca_pem_path, str(tmp_path / 'cert.pem')],
                              capture_output=True, text=True, check=False)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    issued = x509.load_pem_x509_certificate((tmp_path / 'cert.pem').read_bytes())
    assert issued.subject.rfc4514_string() == 'CN=mfp03.example.com'


# --- deadline and size -------------------------------------------------------------------------

@pytest.mark.parametrize('operation', ['GetCACert', 'PKIOperation'])
def test_a_dripping_server_cannot_hold_the_run_past_the_timeout(fake, run_playbook, tmp_path, operation):
    server = fake(drip_interval=0.5, fault_operations={operation}, hang_seconds=60)
    record = run_playbook([module_task('scep_enroll', 'enroll', args_for(server, tmp_path, timeout=5))]).result('enroll')
    assert record['status'] == 'failed'
    assert record['result']['msg'] == ('communication error: no complete answer from 127.0.0.1:%d within the timeout of '
                                       '5 seconds (%s)' % (server.port, operation))
    [(started, ended)] = wait_for(lambda: list(server.drips), 10, 'the dripping answer to end')
    assert ended - started < 5 + 3  # the client hung up within the timeout (the drip notices it a write or two later)
    assert written(tmp_path) == []


@pytest.mark.parametrize('huge, message', [
    ('announce', 'the SCEP server at 127.0.0.1:%d answering GetCACert: the answer announces 6291456 bytes, more than the '
                 'limit of 4194304 bytes'),
    ('stream', 'the SCEP server at 127.0.0.1:%d answering GetCACert: the answer is longer than the limit of 4194304 bytes'),
])
def test_a_huge_answer_is_refused_with_the_limit(fake, run_playbook, tmp_path, huge, message):
    server = fake(huge_body=huge, fault_operations={'GetCACert'}, hang_seconds=60)
    record = run_playbook([module_task('scep_enroll', 'enroll', args_for(server, tmp_path, timeout=20))]).result('enroll')
    assert record['status'] == 'failed'
    assert record['result']['msg'] == message % server.port
    assert server.pki_operation_count() == 0 and written(tmp_path) == []


# --- no silent downgrade -----------------------------------------------------------------------

CAPS_FAULTS = [
    (dict(http_status=500, fault_operations={'GetCACaps'}), 'answered GetCACaps with HTTP status 500'),
    (dict(http_status=404, fault_operations={'GetCACaps'}), 'answered GetCACaps with HTTP status 404'),
    (dict(garbage_body=True, fault_operations={'GetCACaps'}), 'the GetCACaps answer '),
    (dict(caps=[]), 'the GetCACaps answer is empty'),
    (dict(caps=['<html><body>Welcome', 'to', 'IIS</body></html>']), 'the GetCACaps answer is not a list of capabilities: '),
]


@pytest.mark.parametrize('settings, cause', CAPS_FAULTS, ids=['http-500', 'http-404', 'garbage', 'empty', 'html'])
def test_a_failing_get_ca_caps_stops_the_run(fake, run_playbook, tmp_path, settings, cause):
    server = fake(**settings)
    run = run_playbook([module_task('scep_enroll', 'auto', args_for(server, tmp_path)),
                        module_task('scep_enroll', 'one set', args_for(server, tmp_path, signature_algorithm='sha256'))])
    for name in ('auto', 'one set'):
        message = run.result(name)['result']['msg']
        assert cause in message, message
        assert message.endswith('without the server\'s capabilities SCEP falls back to SHA-1, 3DES and GET, so the run '
                                'stops here: repair GetCACaps on the server, or set signature_algorithm and '
                                'encryption_algorithm (requests then go by GET)')
    assert server.pki_operation_count() == 0 and written(tmp_path) == []


@pytest.mark.parametrize('settings, cause', CAPS_FAULTS, ids=['http-500', 'http-404', 'garbage', 'empty', 'html'])
def test_explicit_algorithms_go_on_by_get_without_caps(fake, run_playbook, tmp_path, settings, cause):
    server = fake(**settings)
    run = run_playbook([
        module_task('scep_enroll', 'enroll', args_for(server, tmp_path, signature_algorithm='sha512', encryption_algorithm='aes256')),
        module_task('scep_ca_info', 'info', dict(url=server.url)),
    ])
    result = run.result('enroll')['result']
    assert result['status'] == 'issued', run.output()
    assert result['ca_caps'] is None
    [request] = server.pki_messages
    assert (request.method, request.digest, request.content_cipher) == ('GET', 'sha512', 'aes256')
    info = run.result('info')['result']
    assert info['caps'] is None and info['algorithms'] is None and cause in info['caps_error']


# --- server text in messages -------------------------------------------------------------------

HOSTILE_TEXT = '\x1b[2J\x1b[31mDENIED\x1b[0m\r\nSet-Cookie: x\n' + ('\x07\x1b]0;owned\x07' + 'A' * 50) * 90


def _assert_clean(text):
    assert not any(ord(char) < 32 or 127 <= ord(char) < 160 for char in text), repr(text[:300])
    assert '[31m' not in text and 'owned' not in text


def test_fail_info_text_is_cut_and_cleaned(fake, run_playbook, tmp_path):
    assert len(HOSTILE_TEXT) > 5000
    server = fake(fail_info=2, fail_info_text=HOSTILE_TEXT)
    message = run_playbook([module_task('scep_enroll', 'enroll', args_for(server, tmp_path))]).result('enroll')['result']['msg']
    prefix = 'the SCEP server rejected the request: FAILURE 2 (badRequest: '
    assert message.startswith(prefix)
    said = message.split('; the server says: ', 1)[1]
    assert said.startswith('DENIED Set-Cookie: x AAAA') and said.endswith('...') and len(said) <= 203
    _assert_clean(message)
    assert written(tmp_path) == []


@pytest.mark.parametrize('operation', ['GetCACert', 'PKIOperation'])
def test_http_error_bodies_are_cut_and_cleaned(fake, run_playbook, tmp_path, operation):
    server = fake(http_status=503, http_body=HOSTILE_TEXT, fault_operations={operation})
    message = run_playbook([module_task('scep_enroll', 'enroll', args_for(server, tmp_path))]).result('enroll')['result']['msg']
    head = 'the SCEP server at 127.0.0.1:%d answered %s with HTTP status 503 Service Unavailable: ' % (server.port, operation)
    assert message.startswith(head)
    said = message[len(head):]
    assert said.startswith('DENIED Set-Cookie: x AAAA') and said.endswith('...') and len(said) <= 203
    _assert_clean(message)
    assert written(tmp_path) == []
