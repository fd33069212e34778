# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""scep_enroll and scep_ca_info against a real micromdm scepserver; certificates checked with openssl."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from harness import FOUR_RUN, assert_four_run, four_run_tasks, module_task, random_pin, token_args


def openssl_verify(ca_path, cert_path):
    completed = subprocess.run(['openssl', 'verify', '-CAfile', str(ca_path), str(cert_path)], capture_output=True,
                               text=True, check=False)
    return completed.returncode == 0 and completed.stdout.strip().endswith(': OK')


def public_pem(key_or_cert):
    return key_or_cert.public_key().public_bytes(serialization.Encoding.PEM,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)


def load_cert(path):
    return x509.load_pem_x509_certificate(path.read_bytes())


def load_key(path):
    return serialization.load_pem_private_key(path.read_bytes(), None)


def digests(*paths):
    return dict((str(path), hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None) for path in paths)


@pytest.fixture
def ca(micromdm):
    challenge = random_pin(32)
    server = micromdm(challenge=challenge, allowrenew=0)
    return dict(server=server, challenge=challenge)


def enroll_args(ca, tmp_path, **options):
    args = dict(url=ca['server'].url, ca_fingerprint=ca['server'].ca_fingerprint_sha256,
                challenge_password=ca['challenge'], private_key_path=str(tmp_path / 'key.pem'),
                certificate_path=str(tmp_path / 'cert.pem'), common_name='mfp01.example.com',
                organization_name='Example AS')
    args.update(options)
    return args


def test_file_key_four_run_and_no_request_when_valid(ca, run_playbook, tmp_path):
    server = ca['server']
    run = run_playbook(four_run_tasks('scep_enroll', enroll_args(ca, tmp_path, chain_path=str(tmp_path / 'chain.pem'))),
                       verbosity=3)
    assert_four_run(run, FOUR_RUN)
    assert server.pkioperation_count() == 1  # check mode sent nothing; the second run sent nothing
    first = run.result('run 1')['result']
    assert first['status'] == 'issued' and first['reason'] == 'there is no certificate'
    assert run.result('check 1')['result']['status'] == 'issued'
    assert run.result('run 2')['result']['status'] == 'unchanged'
    assert 'SCEPStandard' in first['ca_caps']
    cert, key = load_cert(tmp_path / 'cert.pem'), load_key(tmp_path / 'key.pem')
    assert public_pem(cert) == public_pem(key)
    assert oct(os.stat(tmp_path / 'key.pem').st_mode & 0o777) == '0o600'
    assert oct(os.stat(tmp_path / 'cert.pem').st_mode & 0o777) == '0o644'
    assert oct(os.stat(tmp_path / 'cert.pem.scep.json').st_mode & 0o777) == '0o600'
    assert openssl_verify(server.ca_pem_path, tmp_path / 'cert.pem')
    assert (tmp_path / 'chain.pem').read_bytes().strip() == server.ca_pem.strip()
    assert cert.subject.rfc4514_string() == 'CN=mfp01.example.com,O=Example AS'
    assert first['certificate']['serial_number'] == '%x' % cert.serial_number
    assert [entry['serial_number'] for entry in first['history']] == ['%x' % cert.serial_number]
    run.assert_not_leaked(ca['challenge'])


def test_renewal_and_rekey_keep_old_until_new_is_stored(ca, run_playbook, tmp_path):
    server = ca['server']
    args = enroll_args(ca, tmp_path)
    run = run_playbook([
        module_task('scep_enroll', 'enroll', args),
        module_task('scep_enroll', 'renew', dict(args, renew_before=400)),
        module_task('scep_enroll', 'rekey check', dict(args, renew_before=400, rekey=True), check=True),
        module_task('scep_enroll', 'rekey', dict(args, renew_before=400, rekey=True)),
        module_task('scep_enroll', 'rekey remove old', dict(args, renew_before=400, rekey=True, remove_old=True)),
    ])
    assert all(record['status'] == 'ok' and record['changed'] for record in run.results), run.output()
    enrolled, renewed = run.result('enroll')['result'], run.result('renew')['result']
    rekeyed, removed = run.result('rekey')['result'], run.result('rekey remove old')['result']
    assert renewed['status'] == 'renewed' and renewed['reason'].endswith('renew_before is 400')
    assert renewed['certificate']['serial_number'] != enrolled['certificate']['serial_number']
    assert [entry['serial_number'] for entry in removed['history']] == [
        record['certificate']['serial_number'] for record in (enrolled, renewed, rekeyed, removed)]
    assert server.pkioperation_count() == 4
    # After "rekey": the new key and certificate are in place, the previous ones are kept as .old.
    # After "rekey remove old": the .old files are those of the rekey before (nothing new was kept).
    cert, key = load_cert(tmp_path / 'cert.pem'), load_key(tmp_path / 'key.pem')
    assert public_pem(cert) == public_pem(key)
    assert '%x' % cert.serial_number == removed['certificate']['serial_number']
    old_cert, old_key = load_cert(tmp_path / 'cert.pem.old'), load_key(tmp_path / 'key.pem.old')
    assert public_pem(old_cert) == public_pem(old_key)
    assert '%x' % old_cert.serial_number == renewed['certificate']['serial_number']
    assert public_pem(old_key) != public_pem(key)
    assert not (tmp_path / 'key.pem.new').exists()
    assert openssl_verify(server.ca_pem_path, tmp_path / 'cert.pem')


def test_a_key_the_module_makes_is_encrypted_with_the_passphrase(ca, run_playbook, tmp_path):
    """With private_key_passphrase, the generated key and a rekey's new key are written encrypted with it, so the
    next runs can load them; the passphrase never shows in the output."""
    passphrase = random_pin(24)
    args = enroll_args(ca, tmp_path, private_key_passphrase=passphrase)
    run = run_playbook([
        module_task('scep_enroll', 'enroll', args),
        module_task('scep_enroll', 'again', args),
        module_task('scep_enroll', 'rekey', dict(args, renew_before=400, rekey=True)),
        module_task('scep_enroll', 'after rekey', args),
    ], verbosity=3)
    assert [(record['task'], record['status'], record['changed']) for record in run.results] == [
        ('enroll', 'ok', True), ('again', 'ok', False), ('rekey', 'ok', True), ('after rekey', 'ok', False)], run.output()
    for path in (tmp_path / 'key.pem', tmp_path / 'key.pem.old'):
        with pytest.raises(TypeError):  # encrypted: no key without the passphrase
            load_key(path)
        key = serialization.load_pem_private_key(path.read_bytes(), passphrase.encode())
        assert oct(os.stat(path).st_mode & 0o777) == '0o600'
    assert public_pem(key) == public_pem(load_cert(tmp_path / 'cert.pem.old'))
    current = serialization.load_pem_private_key((tmp_path / 'key.pem').read_bytes(), passphrase.encode())
    assert public_pem(current) == public_pem(load_cert(tmp_path / 'cert.pem'))
    assert ca['server'].pkioperation_count() == 2
    run.assert_not_leaked(ca['challenge'], passphrase)


def test_token_key_enrollment_stored_on_token(ca, token, run_playbook, tmp_path):
    args = dict(enroll_args(ca, tmp_path, private_key_path=None, store_on_token=True), **token_args(token))
    del args['private_key_path']
    args['key_label'] = 'vpn'
    run = run_playbook([module_task('token_key', 'key', dict(token_args(token), label='vpn', type='rsa'))]
                       + four_run_tasks('scep_enroll', args), verbosity=3)
    assert_four_run(run, FOUR_RUN)
    key = run.result('key')['result']
    cert = load_cert(tmp_path / 'cert.pem')
    assert public_pem(cert).decode() == key['public_key']
    assert openssl_verify(ca['server'].ca_pem_path, tmp_path / 'cert.pem')
    listing = token['hsm'].pkcs11_tool('--token-label', 'ws-001', '--list-objects', '--type', 'cert').stdout
    assert re.search(r'label:\s+vpn', listing) and re.search(r'ID:\s+%s' % key['id'], listing)
    assert 'mfp01.example.com' in listing
    run.assert_not_leaked(token['user'], token['so'], ca['challenge'])


def test_wrong_challenge_fails_and_host_is_unchanged(ca, run_playbook, tmp_path):
    args = enroll_args(ca, tmp_path)
    run_playbook([module_task('scep_enroll', 'enroll', args)])
    files = [tmp_path / 'key.pem', tmp_path / 'cert.pem', tmp_path / 'cert.pem.scep.json']
    before = digests(*files)
    wrong = random_pin(32)
    run = run_playbook([module_task('scep_enroll', 'renew', dict(args, challenge_password=wrong, force=True))],
                       verbosity=3)
    record = run.result('renew')
    assert record['status'] == 'failed'
    assert record['result']['msg'].startswith('the SCEP server rejected the request: FAILURE 2 (badRequest: ')
    assert digests(*files) == before
    run.assert_not_leaked(wrong, ca['challenge'])


def test_unpinned_or_unreachable_server_fails_before_writing(ca, run_playbook, tmp_path):
    other = '00' * 32
    run = run_playbook([
        module_task('scep_enroll', 'no pin', dict(enroll_args(ca, tmp_path), ca_fingerprint=None)),
        module_task('scep_enroll', 'wrong pin', enroll_args(ca, tmp_path, ca_fingerprint=other)),
        module_task('scep_enroll', 'down', enroll_args(ca, tmp_path, url='http://127.0.0.1:9/scep', timeout=5)),
        module_task('scep_enroll', 'not hex', enroll_args(ca, tmp_path, ca_fingerprint='zz')),
    ])
    assert run.result('no pin')['result']['msg'].startswith('give ca_fingerprint (the SHA-256 fingerprint')
    assert run.result('wrong pin')['result']['msg'] == (
        "the SCEP server's CA certificate (%s) does not match the pinned CA; refusing to talk to it"
        % ca['server'].ca_certificate.subject.rfc4514_string())
    assert run.result('down')['result']['msg'] == ('communication error: connection to 127.0.0.1:9 refused '
                                                   '(is the SCEP server running?)')
    assert run.result('not hex')['result']['msg'].startswith('ca_fingerprint must be the hexadecimal SHA-256')
    assert all(record['status'] == 'failed' for record in run.results)
    assert [name for name in os.listdir(tmp_path) if name.startswith(('key', 'cert'))] == []
    assert ca['server'].pkioperation_count() == 0


def test_scep_ca_info_shows_the_fingerprint_to_pin(ca, run_playbook, tmp_path):
    server = ca['server']
    args = dict(url=server.url, chain_path=str(tmp_path / 'ca.pem'))
    run = run_playbook(four_run_tasks('scep_ca_info', args))
    assert_four_run(run, FOUR_RUN)
    info = run.result('run 1')['result']
    assert [cert['role'] for cert in info['certificates']] == ['ca']
    assert info['certificates'][0]['fingerprint_sha256'] == server.ca_fingerprint_sha256
    assert info['algorithms'] == dict(signature='sha256', encryption='aes128', method='POST')
    assert (tmp_path / 'ca.pem').read_bytes().strip() == server.ca_pem.strip()
    assert server.pkioperation_count() == 0


def test_ec_token_key_request_is_rejected_by_micromdm_and_nothing_changes(ca, token, run_playbook, tmp_path):
    """An EC key is sent (with a throwaway RSA signer, see test_scep_ec.py), but micromdm 2.1.0 cannot issue for EC
    requests: its FAILURE is reported and the host is unchanged."""
    args = dict(enroll_args(ca, tmp_path), **token_args(token))
    del args['private_key_path']
    args['key_label'] = 'ec'
    run = run_playbook([module_task('token_key', 'key', dict(token_args(token), label='ec', type='ec')),
                        module_task('scep_enroll', 'enroll', args)])
    record = run.result('enroll')
    assert record['status'] == 'failed'
    assert record['result']['msg'].startswith('the SCEP server rejected the request: FAILURE 2 (badRequest: ')
    assert not (tmp_path / 'cert.pem').exists()
    assert ca['server'].pkioperation_count() == 1


def test_mode_of_a_valid_certificate_is_applied_without_contacting_the_ca(ca, run_playbook, tmp_path):
    args = enroll_args(ca, tmp_path)
    run_playbook([module_task('scep_enroll', 'enroll', args)])
    run = run_playbook([module_task('scep_enroll', 'mode check', dict(args, mode='0640'), check=True),
                        module_task('scep_enroll', 'mode', dict(args, mode='0640')),
                        module_task('scep_enroll', 'again', dict(args, mode='0640'))])
    assert [record['changed'] for record in run.results] == [True, True, False]
    assert run.result('mode')['result']['status'] == 'unchanged'
    assert oct(os.stat(tmp_path / 'cert.pem').st_mode & 0o777) == '0o640'
    assert ca['server'].pkioperation_count() == 1
