# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""scep_enroll's state file: no secret at rest while PENDING, the lock against a second run, a corrupted file,
a stale key.pem.new, a certificate object missing from the token. Real parts: micromdm, our SCEP responder,
our delaying proxy, SoftHSM with pkcs11-tool."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import sys
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from fixtures_scep import fake_scep, scep_ca  # noqa: F401  pylint: disable=unused-import
from harness import REPO_ROOT, module_task, random_pin, token_args

sys.path.insert(0, os.path.join(REPO_ROOT, 'tests', 'fakes'))
from delay_proxy import DelayProxy  # noqa: E402  pylint: disable=wrong-import-position,import-error

PKCSREQ = 19


@pytest.fixture
def fake(fake_scep):
    """A fake SCEP server with its own CA; the challenge must be given."""
    return lambda challenge, **settings: fake_scep(challenge=challenge, ca=None, **settings)


def public_pem(obj):
    return obj.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def all_files(*directories):
    """Every file below the directories (temp files and leftovers included): path -> bytes."""
    found = {}
    for directory in directories:
        for root, dummy, names in os.walk(directory):
            for name in names:
                path = os.path.join(root, name)
                with open(path, 'rb') as handle:
                    found[path] = handle.read()
    return found


def encodings(secret):
    """The forms a secret could take at rest: raw, hexadecimal (both cases), base64, and its SHA-256."""
    forms = {'raw': secret, 'hex': secret.hex().encode(), 'HEX': secret.hex().upper().encode(),
             'base64': base64.b64encode(secret), 'sha256': hashlib.sha256(secret).hexdigest().encode()}
    return forms


def digests(directory):
    return dict((path, hashlib.sha256(data).hexdigest()) for path, data in all_files(directory).items())


@pytest.mark.parametrize('rekey', [False, True], ids=['enroll', 'rekey'])
def test_pending_state_holds_no_challenge_and_the_poll_completes(fake, run_playbook, tmp_path, rekey):
    challenge = random_pin(40)
    server = fake(challenge=challenge)
    host = tmp_path / 'host'
    host.mkdir()
    args = dict(url=server.url, ca_fingerprint=server.ca_fingerprint, challenge_password=challenge,
                private_key_path=str(host / 'key.pem'), certificate_path=str(host / 'cert.pem'),
                common_name='mfp03.example.com', timeout=10)
    if rekey:
        first = run_playbook([module_task('scep_enroll', 'enroll', args)])
        assert first.result('enroll')['result']['status'] == 'issued', first.output()
        args.update(rekey=True, force=True)
    server.configure(pending=True)
    run = run_playbook([module_task('scep_enroll', 'request', args)], verbosity=3)
    assert run.result('request')['result']['status'] == 'pending', run.output()
    run.assert_not_leaked(challenge)
    requests = [message for message in server.pki_messages if message.csr is not None]
    assert requests and requests[-1].challenge_password == challenge  # the request did carry the challenge
    csr_der = requests[-1].csr.public_bytes(serialization.Encoding.DER)
    secrets = dict(('challenge ' + name, value) for name, value in encodings(challenge.encode()).items())
    secrets.update(('request ' + name, value) for name, value in encodings(csr_der).items())
    files = all_files(host)
    assert str(host / 'cert.pem.scep.json') in files
    assert (host / 'key.pem.new').exists() is rekey  # a pending rekey keeps its new key
    for path, data in files.items():
        for name, value in secrets.items():
            assert value not in data, '%s found in %s' % (name, path)
    state = json.loads((host / 'cert.pem.scep.json').read_text())
    assert state['pending']['transaction_id'] == run.result('request')['result']['transaction_id']

    server.approve()
    done = run_playbook([module_task('scep_enroll', 'poll', dict(args, force=False)),
                         module_task('scep_enroll', 'again', dict(args, force=False))], verbosity=3)
    poll = done.result('poll')['result']
    assert poll['status'] == ('renewed' if rekey else 'issued'), done.output()
    assert done.result('again')['changed'] is False
    cert = x509.load_pem_x509_certificate((host / 'cert.pem').read_bytes())
    key = serialization.load_pem_private_key((host / 'key.pem').read_bytes(), None)
    assert public_pem(cert) == public_pem(key)
    assert not (host / 'key.pem.new').exists()
    assert [name for name in os.listdir(host) if name.startswith('.tokenfleet-')] == []
    done.assert_not_leaked(challenge)


def enrolled_file_host(micromdm, run_playbook, tmp_path, common_name):
    """A host directory whose key file got a certificate from micromdm: (server, host, scep_enroll args)."""
    challenge = random_pin(32)
    server = micromdm(challenge=challenge, allowrenew=0)
    host = tmp_path / 'host'
    host.mkdir()
    args = dict(url=server.url, ca_fingerprint=server.ca_fingerprint_sha256, challenge_password=challenge,
                private_key_path=str(host / 'key.pem'), certificate_path=str(host / 'cert.pem'),
                common_name=common_name)
    first = run_playbook([module_task('scep_enroll', 'enroll', args)])
    assert first.result('enroll')['result']['status'] == 'issued', first.output()
    return server, host, args


def test_a_stale_key_new_is_not_used_by_a_rekey(micromdm, run_playbook, tmp_path):
    dummy, host, args = enrolled_file_host(micromdm, run_playbook, tmp_path, 'mfp04.example.com')
    stale = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (host / 'key.pem.new').write_bytes(stale.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                           serialization.NoEncryption()))
    (host / '.tokenfleet-key.pem-abcd1234').write_bytes(b'a temp file a killed run left')
    run = run_playbook([module_task('scep_enroll', 'rekey', dict(args, rekey=True, force=True))])
    assert run.result('rekey')['result']['status'] == 'renewed', run.output()
    cert = x509.load_pem_x509_certificate((host / 'cert.pem').read_bytes())
    key = serialization.load_pem_private_key((host / 'key.pem').read_bytes(), None)
    assert public_pem(cert) == public_pem(key)
    assert public_pem(key) != public_pem(stale)
    assert sorted(name for name in os.listdir(host) if name.endswith('.new') or name.startswith('.tokenfleet-')) == []


def test_two_runs_on_one_state_file_enroll_once(micromdm, run_playbook, tmp_path):
    """Run A's reply is held by the proxy; B with a short timeout fails naming the state file, C waits for A and
    finds the certificate valid."""
    challenge = random_pin(32)
    server = micromdm(challenge=challenge, allowrenew=0)
    host = tmp_path / 'host'
    host.mkdir()
    with DelayProxy(server.port, hold=8.0) as proxy:
        args = dict(url=proxy.url, ca_fingerprint=server.ca_fingerprint_sha256, challenge_password=challenge,
                    private_key_path=str(host / 'key.pem'), certificate_path=str(host / 'cert.pem'),
                    common_name='mfp05.example.com', timeout=60)
        first = {}
        runner = threading.Thread(target=lambda: first.update(run=run_playbook([module_task('scep_enroll', 'A', args)])))
        runner.start()
        try:
            assert proxy.next_reply(90) is not None, 'run A sent no request'
            second = run_playbook([module_task('scep_enroll', 'B', dict(args, timeout=1)),
                                   module_task('scep_enroll', 'C', args)])
        finally:
            runner.join(120)
    assert first['run'].result('A')['result']['status'] == 'issued', first['run'].output()
    b, c = second.result('B'), second.result('C')
    assert b['status'] == 'failed'
    state_path = str(host / 'cert.pem.scep.json')
    assert b['result']['msg'] == ('another run is working on state_path %s (it holds %s.lock) and did not finish within '
                                  '1 seconds (timeout); nothing was changed, run again later' % (state_path, state_path))
    assert c['status'] == 'ok' and c['changed'] is False and c['result']['status'] == 'unchanged', second.output()
    assert server.pkioperation_count() == 1
    assert len(server.issued()) == 1
    assert not (host / 'cert.pem.scep.json.lock').exists()


@pytest.mark.parametrize('content, reason', [
    (b'{"version": 2, "pending": {"transaction_id": "AB", "message_type": "PKCSReq", "request": "zz-not-hex"}}',
     'a field holds a value of the wrong form'),
    (b'\x00\x01 definitely not json', 'not JSON'),
    (b'[1, 2, 3]', 'the top level is not an object'),
    (b'{"version": 2, "pending": null, "history": "x"}', 'history is not a list of objects'),
], ids=['bad-hex', 'binary', 'list', 'history'])
def test_a_corrupted_state_file_is_named_with_the_remedy(micromdm, run_playbook, tmp_path, content, reason):
    server, host, args = enrolled_file_host(micromdm, run_playbook, tmp_path, 'mfp06.example.com')
    state_path = host / 'cert.pem.scep.json'
    state_path.write_bytes(content)
    before = digests(host)
    run = run_playbook([module_task('scep_enroll', 'renew', dict(args, force=True))])
    record = run.result('renew')
    assert record['status'] == 'failed'
    assert record['result']['msg'] == (
        'state_path %s is not a valid scep_enroll state file (%s). Nothing was changed. Move it away (for example to '
        '%s.broken) and run again: the next run then starts from the certificate and key files alone, and what the '
        'file recorded is lost: the history of issued certificates, and a pending request (it is sent again as a new '
        'one)' % (state_path, reason, state_path))
    assert digests(host) == before
    assert server.pkioperation_count() == 1


def test_a_missing_certificate_object_is_written_again(micromdm, token, run_playbook, tmp_path):
    challenge = random_pin(32)
    server = micromdm(challenge=challenge, allowrenew=0)
    hsm = token['hsm']
    args = dict(url=server.url, ca_fingerprint=server.ca_fingerprint_sha256, challenge_password=challenge,
                certificate_path=str(tmp_path / 'cert.pem'), common_name='ws02.example.com', key_label='vpn',
                store_on_token=True, **token_args(token))
    run = run_playbook([module_task('token_key', 'key', dict(token_args(token), label='vpn', type='rsa')),
                        module_task('scep_enroll', 'enroll', args)])
    key_id = run.result('key')['result']['id']
    assert run.result('enroll')['result']['status'] == 'issued', run.output()
    hsm.pkcs11_tool('--token-label', 'ws-001', '--login', '--delete-object', '--type', 'cert', '--id', key_id,
                    pin=token['user'])
    listing = hsm.pkcs11_tool('--token-label', 'ws-001', '--list-objects', '--type', 'cert').stdout
    assert 'Certificate Object' not in listing
    again = run_playbook([module_task('scep_enroll', 'restore', args), module_task('scep_enroll', 'again', args)])
    restore = again.result('restore')
    assert restore['changed'] is True and restore['result']['status'] == 'unchanged', again.output()
    assert 'written again' in restore['result']['reason']
    assert again.result('again')['changed'] is False
    hsm.pkcs11_tool('--token-label', 'ws-001', '--read-object', '--type', 'cert', '--id', key_id,
                    '--output-file', str(tmp_path / 'object.der'))
    on_token = x509.load_der_x509_certificate((tmp_path / 'object.der').read_bytes())
    assert on_token == x509.load_pem_x509_certificate((tmp_path / 'cert.pem').read_bytes())
    listing = hsm.pkcs11_tool('--token-label', 'ws-001', '--list-objects', '--type', 'cert').stdout
    assert len(re.findall(r'Certificate Object', listing)) == 1
    assert server.pkioperation_count() == 1


def test_a_version_1_state_file_loses_its_request_and_the_poll_goes_on(fake, run_playbook, tmp_path):
    """Version 1 kept the pending request in hex, challenge included: the first run rewrites the file without it."""
    challenge = random_pin(40)
    server = fake(challenge=challenge, pending=True)
    host = tmp_path / 'host'
    host.mkdir()
    args = dict(url=server.url, ca_fingerprint=server.ca_fingerprint, challenge_password=challenge,
                private_key_path=str(host / 'key.pem'), certificate_path=str(host / 'cert.pem'),
                common_name='mfp07.example.com', timeout=10)
    first = run_playbook([module_task('scep_enroll', 'request', args)])
    transaction_id = first.result('request')['result']['transaction_id']
    state_path = host / 'cert.pem.scep.json'
    state = json.loads(state_path.read_text())
    request = [message for message in server.pki_messages if message.csr is not None][-1].csr
    request_der = request.public_bytes(serialization.Encoding.DER)
    for field in ('subject', 'public_key'):
        state['pending'].pop(field, None)
    state['pending']['request'] = request_der.hex()
    state['version'] = 1
    state_path.write_text(json.dumps(state))
    run = run_playbook([module_task('scep_enroll', 'still pending', args)])
    assert run.result('still pending')['result']['status'] == 'pending', run.output()
    assert run.result('still pending')['result']['transaction_id'] == transaction_id
    data = state_path.read_bytes()
    for value in list(encodings(challenge.encode()).values()) + list(encodings(request_der).values()):
        assert value not in data
    server.approve()
    done = run_playbook([module_task('scep_enroll', 'issued', args)])
    assert done.result('issued')['result']['status'] == 'issued', done.output()
    assert done.result('issued')['result']['transaction_id'] == transaction_id


def test_a_pending_token_rekey_uses_its_new_key_only_if_it_is_the_requested_one(fake, token, run_playbook, tmp_path):
    challenge = random_pin(40)
    server = fake(challenge=challenge)
    hsm = token['hsm']
    args = dict(url=server.url, ca_fingerprint=server.ca_fingerprint, challenge_password=challenge,
                certificate_path=str(tmp_path / 'cert.pem'), common_name='ws03.example.com', key_label='vpn',
                store_on_token=True, timeout=10, **token_args(token))
    first = run_playbook([module_task('token_key', 'key', dict(token_args(token), label='vpn', type='rsa')),
                          module_task('scep_enroll', 'enroll', args)])
    assert first.result('enroll')['result']['status'] == 'issued', first.output()
    before = (tmp_path / 'cert.pem').read_bytes()
    server.configure(pending=True)
    rekey = dict(args, rekey=True, force=True)
    run = run_playbook([module_task('scep_enroll', 'rekey', rekey)])
    assert run.result('rekey')['result']['status'] == 'pending', run.output()
    listing = hsm.pkcs11_tool('--token-label', 'ws-001', '--login', '--list-objects', '--type', 'privkey',
                              pin=token['user']).stdout
    assert re.search(r'label:\s+vpn\.new', listing)  # the pending request's new key waits on the token
    hsm.pkcs11_tool('--token-label', 'ws-001', '--login', '--delete-object', '--type', 'privkey', '--label', 'vpn.new',
                    pin=token['user'])
    hsm.pkcs11_tool('--token-label', 'ws-001', '--login', '--keypairgen', '--key-type', 'rsa:2048', '--label', 'vpn.new',
                    '--id', '0b', pin=token['user'])
    server.approve()
    after = run_playbook([module_task('scep_enroll', 'poll', rekey)])
    record = after.result('poll')
    assert record['status'] == 'failed'
    assert record['result']['msg'] == ('the new key of the pending rekey request is gone or is another key; the pending '
                                       'request was forgotten, the next run sends a new one')
    listing = hsm.pkcs11_tool('--token-label', 'ws-001', '--login', '--list-objects', pin=token['user']).stdout
    assert 'vpn.new' not in listing
    assert (tmp_path / 'cert.pem').read_bytes() == before
    assert json.loads((tmp_path / 'cert.pem.scep.json').read_text())['pending'] is None


def test_a_pending_request_is_kept_when_a_poll_runs_out_of_time(fake, run_playbook, tmp_path):
    """PENDING, then the polls use up ``timeout``: the request (and its generated key) stays for the next run."""
    challenge = random_pin(40)
    server = fake(challenge=challenge, pending=True)
    host = tmp_path / 'host'
    host.mkdir()
    args = dict(ca_fingerprint=server.ca_fingerprint, challenge_password=challenge,
                private_key_path=str(host / 'key.pem'), certificate_path=str(host / 'cert.pem'),
                common_name='mfp07.example.com', poll_attempts=3, poll_interval=0)
    with DelayProxy(server.port, hold=1.5) as proxy:  # each PKIOperation answer takes 1.5 s: the second one is too late
        run = run_playbook([module_task('scep_enroll', 'request', dict(args, url=proxy.url, timeout=2))], verbosity=3)
    record = run.result('request')
    assert record['status'] == 'failed', run.output()
    assert 'within the timeout of 2 seconds' in record['result']['msg'], run.output()
    assert proxy.pki_operations == 2  # the request and one poll
    state = json.loads((host / 'cert.pem.scep.json').read_text())
    assert state['pending'] is not None, 'the PENDING request was lost with the timed-out poll'
    transaction_id = state['pending']['transaction_id']
    assert (host / 'key.pem').exists()  # the key the request was made for
    run.assert_not_leaked(challenge)

    server.approve()
    done = run_playbook([module_task('scep_enroll', 'poll', dict(args, url=server.url, timeout=10))])
    poll = done.result('poll')['result']
    assert poll['status'] == 'issued' and poll['transaction_id'] == transaction_id, done.output()
    cert = x509.load_pem_x509_certificate((host / 'cert.pem').read_bytes())
    key = serialization.load_pem_private_key((host / 'key.pem').read_bytes(), None)
    assert public_pem(cert) == public_pem(key)
    assert json.loads((host / 'cert.pem.scep.json').read_text())['pending'] is None


@pytest.mark.parametrize('option', ['state_path', 'chain_path', 'certificate_path', 'private_key_path'])
def test_a_directory_where_a_file_belongs_names_the_option(fake, run_playbook, tmp_path, option):
    server = fake(challenge='x' * 20)
    host = tmp_path / 'host'
    (host / 'a-directory').mkdir(parents=True)
    args = dict(url=server.url, ca_fingerprint=server.ca_fingerprint, challenge_password='x' * 20,
                private_key_path=str(host / 'key.pem'), certificate_path=str(host / 'cert.pem'),
                chain_path=str(host / 'chain.pem'), common_name='mfp08.example.com')
    args[option] = str(host / 'a-directory')
    for check in (True, False):
        run = run_playbook([module_task('scep_enroll', 'enroll', args, check=check)])
        record = run.result('enroll')
        assert record['status'] == 'failed', run.output()
        assert record['result']['msg'] == '%s %s is a directory, not a file' % (option, host / 'a-directory')
    assert server.pki_messages == []
    assert sorted(os.listdir(host)) == ['a-directory']


def test_a_malformed_ra_fingerprint_is_refused_in_check_mode_too(fake, run_playbook, tmp_path):
    server = fake(challenge='x' * 20)
    args = dict(url=server.url, ca_fingerprint=server.ca_fingerprint, challenge_password='x' * 20,
                private_key_path=str(tmp_path / 'key.pem'), certificate_path=str(tmp_path / 'cert.pem'),
                common_name='mfp09.example.com', ra_fingerprint='not-a-fingerprint')
    run = run_playbook([module_task('scep_enroll', 'check', args, check=True)])
    record = run.result('check')
    assert record['status'] == 'failed', run.output()
    assert record['result']['msg'].startswith('ra_fingerprint must list SHA-256 fingerprints'), run.output()


def test_unnamed_temp_files_of_an_older_version_are_removed(fake, run_playbook, tmp_path):
    """Versions before named temp files left ``.tokenfleet-<8 characters>`` (a key or certificate) that no run removed."""
    server = fake(challenge='x' * 20)
    host = tmp_path / 'host'
    host.mkdir()
    legacy = host / '.tokenfleet-k3y_9abc'
    legacy.write_text('-----BEGIN PRIVATE KEY-----\n')
    unrelated = host / '.tokenfleet-notes.txt'
    unrelated.write_text('not a temp file of ours\n')
    args = dict(url=server.url, ca_fingerprint=server.ca_fingerprint, challenge_password='x' * 20,
                private_key_path=str(host / 'key.pem'), certificate_path=str(host / 'cert.pem'),
                common_name='mfp10.example.com')
    run = run_playbook([module_task('scep_enroll', 'enroll', args)])
    assert run.result('enroll')['result']['status'] == 'issued', run.output()
    assert not legacy.exists()
    assert unrelated.exists()
