# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""scep_enroll against our SCEP responder (tests/fakes) for what micromdm cannot do: PENDING, every failInfo,
bad signatures and nonces, RA certificates, capability sets and transport faults."""

from __future__ import annotations

import functools
import hashlib
import os

import pytest
from cryptography import x509

from fixtures_scep import approving_when_pending, fake_scep, scep_ca  # noqa: F401  pylint: disable=unused-import
from harness import FOUR_RUN, assert_four_run, four_run_tasks, module_task, random_pin


CERTREP, PKCSREQ, CERTPOLL = 3, 19, 20


@pytest.fixture
def fake(fake_scep):
    return functools.partial(fake_scep, challenge='fake-challenge', ca=None)  # a CA of its own, named as the tests expect


def args_for(server, tmp_path, **options):
    args = dict(url=server.url, ca_fingerprint=server.ca_fingerprint, challenge_password=server.challenge,
                private_key_path=str(tmp_path / 'key.pem'), certificate_path=str(tmp_path / 'cert.pem'),
                common_name='mfp02.example.com', timeout=5)
    args.update(options)
    return args


def host_files(tmp_path):
    """SHA-256 of every file the module may write (None for a missing one)."""
    names = ['key.pem', 'cert.pem', 'cert.pem.scep.json', 'key.pem.new', 'key.pem.old', 'cert.pem.old']
    return dict((name, hashlib.sha256((tmp_path / name).read_bytes()).hexdigest() if (tmp_path / name).exists() else None)
                for name in names)


def test_pending_is_saved_and_the_next_run_polls_the_same_transaction(fake, run_playbook, tmp_path):
    server = fake(pending=True)
    args = args_for(server, tmp_path)
    first = run_playbook([module_task('scep_enroll', 'request', args),
                          module_task('scep_enroll', 'still pending check', args, check=True),
                          module_task('scep_enroll', 'still pending', args)])
    request = first.result('request')['result']
    assert request['status'] == 'pending' and first.result('request')['changed']
    transaction_id = request['transaction_id']
    assert first.result('still pending check')['result']['status'] == 'pending'
    assert first.result('still pending')['result']['status'] == 'pending'
    assert first.result('still pending')['result']['transaction_id'] == transaction_id
    assert not (tmp_path / 'cert.pem').exists()
    assert oct(os.stat(tmp_path / 'key.pem').st_mode & 0o777) == '0o600'  # the pending request's key is kept
    assert oct(os.stat(tmp_path / 'cert.pem.scep.json').st_mode & 0o777) == '0o600'
    polls = [message for message in server.pki_messages if message.message_type == CERTPOLL]
    assert [message.transaction_id for message in polls] == [transaction_id]

    server.approve(transaction_id)
    after = run_playbook([module_task('scep_enroll', 'issued', args), module_task('scep_enroll', 'again', args)])
    issued = after.result('issued')['result']
    assert issued['status'] == 'issued' and issued['transaction_id'] == transaction_id
    assert after.result('again')['changed'] is False
    assert [m.transaction_id for m in server.pki_messages if m.message_type == CERTPOLL] == [transaction_id] * 2
    cert = x509.load_pem_x509_certificate((tmp_path / 'cert.pem').read_bytes())
    assert cert in server.issued
    assert [entry['serial_number'] for entry in issued['history']] == ['%x' % cert.serial_number]


def test_poll_attempts_wait_for_approval_within_one_run(fake, run_playbook, tmp_path):
    server = fake(pending=True)
    with approving_when_pending(server):
        run = run_playbook([module_task('scep_enroll', 'wait', args_for(server, tmp_path, poll_attempts=20, poll_interval=1))])
    result = run.result('wait')['result']
    assert result['status'] == 'issued', run.output()
    assert 1 <= server.pki_operation_count(CERTPOLL) <= 20


@pytest.mark.parametrize('fail_info, name', [(0, 'badAlg'), (1, 'badMessageCheck'), (2, 'badRequest'), (3, 'badTime'),
                                             (4, 'badCertId')])
def test_each_fail_info_is_named_and_the_host_is_unchanged(fake, run_playbook, tmp_path, fail_info, name):
    server = fake()
    args = args_for(server, tmp_path)
    assert run_playbook([module_task('scep_enroll', 'enroll', args)]).result('enroll')['result']['status'] == 'issued'
    before = host_files(tmp_path)
    server.configure(fail_info=fail_info, fail_info_text='policy says no')
    record = run_playbook([module_task('scep_enroll', 'renew', dict(args, force=True))]).result('renew')
    assert record['status'] == 'failed'
    assert record['result']['msg'].startswith('the SCEP server rejected the request: FAILURE %d (%s: ' % (fail_info, name))
    assert record['result']['msg'].endswith('; the server says: policy says no')
    assert host_files(tmp_path) == before


FAULTS = [
    (dict(sign_with_unpinned_key=True), 'the SCEP reply is not signed by the pinned CA or an RA certificate it issued'),
    (dict(wrong_recipient_nonce=True), 'the SCEP reply\'s recipient nonce does not match this request\'s nonce'),
    (dict(wrong_transaction_id=True), 'the SCEP reply is for transaction '),
    (dict(http_status=500), 'answered PKIOperation with HTTP status 500'),
    (dict(garbage_body=True), 'the SCEP reply is not a valid SCEP message'),
    (dict(truncated_body=True), 'the SCEP reply is not a valid SCEP message'),
    (dict(hang=True), 'communication error: no complete answer from 127.0.0.1:'),
]


@pytest.mark.parametrize('settings, message', FAULTS)
def test_faults_and_bad_replies_fail_with_the_cause_and_change_nothing(fake, run_playbook, tmp_path, settings, message):
    server = fake(hang_seconds=20)
    args = args_for(server, tmp_path, timeout=3)
    run_playbook([module_task('scep_enroll', 'enroll', args)])
    before = host_files(tmp_path)
    server.configure(**settings)
    record = run_playbook([module_task('scep_enroll', 'renew', dict(args, force=True))]).result('renew')
    assert record['status'] == 'failed'
    assert message in record['result']['msg']
    assert host_files(tmp_path) == before


def test_server_down_is_a_communication_error(run_playbook, tmp_path):
    record = run_playbook([module_task('scep_enroll', 'down', dict(
        url='http://127.0.0.1:9/scep', ca_fingerprint='00' * 32, private_key_path=str(tmp_path / 'key.pem'),
        certificate_path=str(tmp_path / 'cert.pem'), common_name='x.example.com'))]).result('down')
    assert record['result']['msg'] == 'communication error: connection to 127.0.0.1:9 refused (is the SCEP server running?)'
    assert os.listdir(tmp_path) == [name for name in os.listdir(tmp_path) if not name.startswith(('key', 'cert'))]


def test_ra_certificates_encrypt_and_sign(fake, run_playbook, tmp_path):
    server = fake(ra_mode=True)
    run = run_playbook(four_run_tasks('scep_enroll', args_for(server, tmp_path))
                       + [module_task('scep_ca_info', 'info', dict(url=server.url, ca_fingerprint=server.ca_fingerprint))])
    assert_four_run(run, FOUR_RUN)
    request = [message for message in server.pki_messages if message.message_type == PKCSREQ][0]
    assert 'RA encryption' in request.recipient
    roles = dict((cert['subject'], cert['role']) for cert in run.result('info')['result']['certificates'])
    assert roles == {'CN=tokenfleet fake SCEP CA,O=tokenfleet tests': 'ca',
                     'CN=tokenfleet fake SCEP RA signing,O=tokenfleet tests': 'ra-signing',
                     'CN=tokenfleet fake SCEP RA encryption,O=tokenfleet tests': 'ra-encryption'}


@pytest.mark.parametrize('caps, digest, cipher, method', [
    (['AES', 'SHA-256', 'POSTPKIOperation'], 'sha256', 'aes128', 'POST'),
    (['DES3', 'SHA-1'], 'sha1', '3des', 'GET'),
])
def test_algorithms_follow_the_capabilities(fake, run_playbook, tmp_path, caps, digest, cipher, method):
    server = fake(caps=caps)
    record = run_playbook([module_task('scep_enroll', 'enroll', args_for(server, tmp_path))]).result('enroll')
    assert record['result']['status'] == 'issued', record['result'].get('msg')
    request = server.pki_messages[0]
    assert (request.digest, request.content_cipher, request.method) == (digest, cipher, method)


def test_legacy_algorithms_need_consent_and_replies_in_des_are_read(fake, run_playbook, tmp_path):
    server = fake(reply_cipher='des', digest='sha1')
    run = run_playbook([
        module_task('scep_enroll', 'des refused', args_for(server, tmp_path, encryption_algorithm='des')),
        module_task('scep_enroll', 'des allowed',
                    args_for(server, tmp_path, encryption_algorithm='des', allow_legacy_algorithms=True)),
    ])
    assert run.result('des refused')['result']['msg'].startswith('encryption_algorithm des (single DES) is broken')
    assert run.result('des allowed')['result']['status'] == 'issued'
    assert server.pki_messages[0].content_cipher == 'des'


def test_no_secret_in_verbose_output(fake, run_playbook, tmp_path):
    challenge = random_pin(32)
    server = fake(challenge=challenge)
    run = run_playbook([module_task('scep_enroll', 'enroll', args_for(server, tmp_path))], verbosity=3)
    assert run.result('enroll')['result']['status'] == 'issued'
    run.assert_not_leaked(challenge)


def test_token_key_failure_leaves_token_and_files_unchanged(fake, token, run_playbook, tmp_path):
    server = fake()
    args = dict(args_for(server, tmp_path), pkcs11_module=token['hsm'].module, token_label=token['label'],
                user_pin=token['user'], key_label='vpn', store_on_token=True, rekey=True)
    del args['private_key_path']
    run = run_playbook([module_task('token_key', 'key', dict(pkcs11_module=token['hsm'].module, token_label=token['label'],
                                                             user_pin=token['user'], label='vpn')),
                        module_task('scep_enroll', 'enroll', args)])
    assert run.result('enroll')['result']['status'] == 'issued', run.output()

    def token_objects():
        return token['hsm'].pkcs11_tool('--token-label', token['label'], '--login', '--list-objects', pin=token['user']).stdout

    before_objects, before_files = token_objects(), host_files(tmp_path)
    server.configure(fail_info=2)
    record = run_playbook([module_task('scep_enroll', 'rekey', dict(args, force=True))], verbosity=3).result('rekey')
    assert record['status'] == 'failed' and 'FAILURE 2 (badRequest' in record['result']['msg']
    assert host_files(tmp_path) == before_files
    assert token_objects() == before_objects  # the rekey's new key was removed again
