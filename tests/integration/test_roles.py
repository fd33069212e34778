# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The roles, run twice each: the second run changes nothing and (for SCEP) sends nothing to the CA."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from harness import REPO_ROOT, random_pin

sys.path.insert(0, os.path.join(REPO_ROOT, 'tests', 'fakes'))
from ksef_api import FakeKsef  # noqa: E402  pylint: disable=wrong-import-position,import-error


def role_task(name, role, variables):
    return {'name': name, 'ansible.builtin.include_role': {'name': 'tokenfleet.pki.' + role}, 'vars': variables}


def changed_tasks(run):
    return [record['task'] for record in run.results if record['changed']]


def test_token_certificate_role_enrolls_notifies_and_then_does_nothing(micromdm, token, run_playbook, tmp_path):
    challenge = random_pin(32)
    server = micromdm(challenge=challenge)
    marker = tmp_path / 'notified'
    variables = dict(token_certificate_pkcs11_module=token['hsm'].module, token_certificate_token_label=token['label'],
                     token_certificate_user_pin=token['user'], token_certificate_scep_url=server.url,
                     token_certificate_ca_fingerprint=server.ca_fingerprint_sha256,
                     token_certificate_challenge_password=challenge,
                     token_certificate_path=str(tmp_path / 'pki' / 'vpn.pem'),
                     token_certificate_common_name='ws-001.example.com', token_certificate_notify=['restart vpn'])
    handlers = [{'name': 'restart vpn', 'ansible.builtin.shell': 'echo restarted >> %s' % marker}]
    first = run_playbook([role_task('role', 'token_certificate', variables)], handlers=handlers, verbosity=3)
    assert first.rc == 0, first.output()
    assert marker.read_text() == 'restarted\n'
    assert server.pkioperation_count() == 1
    assert (tmp_path / 'pki' / 'vpn.pem').exists()
    listing = token['hsm'].pkcs11_tool('--token-label', token['label'], '--list-objects', '--type', 'cert').stdout
    assert 'ws-001.example.com' in listing
    first.assert_not_leaked(token['user'], challenge)

    second = run_playbook([role_task('role', 'token_certificate', variables)], handlers=handlers)
    assert second.rc == 0, second.output()
    assert changed_tasks(second) == []
    assert server.pkioperation_count() == 1
    assert marker.read_text() == 'restarted\n'


def test_device_certificate_role_packs_pem_and_pkcs12(micromdm, run_playbook, tmp_path):
    challenge, passphrase = random_pin(32), random_pin(24)
    server = micromdm(challenge=challenge)
    variables = dict(device_certificate_scep_url=server.url, device_certificate_ca_fingerprint=server.ca_fingerprint_sha256,
                     device_certificate_challenge_password=challenge, device_certificate_pkcs12_passphrase=passphrase,
                     device_certificate_dir=str(tmp_path / 'keys'), device_certificate_out_dir=str(tmp_path / 'out'),
                     device_certificate_common_name='192.0.2.15', device_certificate_organization='Example AS')
    first = run_playbook([role_task('role', 'device_certificate', variables)], verbosity=3)
    assert first.rc == 0, first.output()
    out = tmp_path / 'out' / 'localhost'
    assert sorted(os.listdir(out)) == ['bundle.p12', 'cert.pem', 'chain.pem']
    assert oct(os.stat(out / 'bundle.p12').st_mode & 0o777) == '0o600'
    key, certificate, chain = pkcs12.load_key_and_certificates((out / 'bundle.p12').read_bytes(), passphrase.encode())
    assert certificate.subject.rfc4514_string() == 'CN=192.0.2.15,O=Example AS'
    assert key.public_key().public_numbers() == certificate.public_key().public_numbers()
    assert [cert.subject for cert in chain] == [server.ca_certificate.subject]
    verify = subprocess.run(['openssl', 'verify', '-CAfile', str(out / 'chain.pem'), str(out / 'cert.pem')],
                            capture_output=True, text=True, check=False)
    assert verify.returncode == 0, verify.stderr
    first.assert_not_leaked(challenge, passphrase)

    second = run_playbook([role_task('role', 'device_certificate', variables)])
    assert second.rc == 0 and changed_tasks(second) == [], second.output()
    assert server.pkioperation_count() == 1


def test_ksef_tokens_role(run_playbook, tmp_path):
    fake = FakeKsef()
    fake.start()
    try:
        nip = '5265877635'
        fake.grant(nip, ('Nip', nip), ['CredentialsManage', 'InvoiceRead', 'InvoiceWrite'])
        fake.token_sessions_can_generate = True
        dummy, admin = fake.add_token(nip, ('Nip', nip), ['CredentialsManage', 'InvoiceRead', 'InvoiceWrite'], 'Administrator')
        leaving, dummy = fake.add_token(nip, ('Nip', nip), ['InvoiceRead'], 'Accounting - Leaving')
        variables = dict(ksef_tokens_api_url=fake.base_url, ksef_tokens_ca_path=fake.ca_pem_path,
                         ksef_tokens_context={'type': 'nip', 'value': nip}, ksef_tokens_auth_token=admin,
                         ksef_tokens_max_wait=20, ksef_tokens_list=[
                             {'description': 'Accounting - Anna', 'permissions': ['InvoiceRead', 'InvoiceWrite'],
                              'token_path': str(tmp_path / 'anna.token')},
                             {'description': 'ERP integration', 'permissions': ['InvoiceRead'],
                              'token_path': str(tmp_path / 'erp.token')},
                             {'description': 'Accounting - Leaving', 'state': 'absent'}])
        first = run_playbook([role_task('role', 'ksef_tokens', variables)], verbosity=3)
        assert first.rc == 0, first.output()
        for name in ('anna.token', 'erp.token'):
            assert oct(os.stat(tmp_path / name).st_mode & 0o777) == '0o600'
        assert fake.token(leaving)['status'] in ('Revoking', 'Revoked')
        secrets = [(tmp_path / name).read_text().strip() for name in ('anna.token', 'erp.token')]
        first.assert_not_leaked(admin, *secrets)
        second = run_playbook([role_task('role', 'ksef_tokens', variables)])
        assert second.rc == 0 and changed_tasks(second) == [], second.output()
        assert fake.violations() == []
    finally:
        fake.stop()


@pytest.mark.parametrize('role, variables, message', [
    ('token_certificate', dict(token_certificate_scep_ulr='http://127.0.0.1:9/scep', token_certificate_ca_fingerprint='00' * 32),
     'missing required arguments: token_certificate_scep_url'),
    ('token_certificate', dict(token_certificate_scep_url='http://127.0.0.1:9/scep', token_certificate_ca_fingerprint='00' * 32,
                               token_certificate_key_size=1024),
     'value of token_certificate_key_size must be one of: 2048, 3072, 4096, got: 1024'),
    ('ksef_tokens', dict(ksef_tokens_list=[]), 'missing required arguments: ksef_tokens_context'),
    ('device_certificate', dict(device_certificate_scep_ulr='http://127.0.0.1:9/scep'),
     'missing required arguments: device_certificate_scep_url'),
    ('device_certificate', dict(device_certificate_scep_url='http://127.0.0.1:9/scep', device_certificate_key_type='dsa'),
     'value of device_certificate_key_type must be one of: rsa, ec, got: dsa'),
])
def test_role_argument_specs_reject_missing_and_wrong_variables(run_playbook, role, variables, message):
    """A misspelled variable leaves the real one unset, which the role's argument spec reports by name."""
    run = run_playbook([role_task('role', role, variables)])
    failed = [record for record in run.results if record['status'] == 'failed']
    assert len(failed) == 1 and failed[0]['task'].startswith("Validating arguments against arg spec 'main'")
    assert message in failed[0]['result']['msg']
    assert [record['task'] for record in run.results if record['changed']] == []


def test_device_certificate_role_check_mode_delivers_nothing_and_an_empty_passphrase_is_refused(
        micromdm, run_playbook, tmp_path):
    challenge, passphrase = random_pin(32), random_pin(24)
    server = micromdm(challenge=challenge)
    variables = dict(device_certificate_scep_url=server.url, device_certificate_ca_fingerprint=server.ca_fingerprint_sha256,
                     device_certificate_challenge_password=challenge, device_certificate_pkcs12_passphrase=passphrase,
                     device_certificate_dir=str(tmp_path / 'keys'), device_certificate_out_dir=str(tmp_path / 'out'),
                     device_certificate_common_name='192.0.2.15')
    assert run_playbook([role_task('role', 'device_certificate', variables)]).rc == 0
    bundle = tmp_path / 'out' / 'localhost' / 'bundle.p12'
    delivered = bundle.read_bytes()

    due = dict(variables, device_certificate_renew_before=400)
    check = run_playbook([role_task('role', 'device_certificate', due)], check=True)
    assert check.rc == 0, check.output()
    assert changed_tasks(check) == ['Certificate for the device from the SCEP CA (enrolled, renewed or left alone)']
    assert [record['task'] for record in check.results
            if record['status'] != 'skipped' and record['task'].startswith(('Deliver', 'Copy', 'Put', 'PKCS#12'))] == []
    assert bundle.read_bytes() == delivered and server.pkioperation_count() == 1

    empty = run_playbook([role_task('role', 'device_certificate', dict(due, device_certificate_pkcs12_passphrase=''))])
    assert empty.rc != 0
    record = json.loads((tmp_path / 'keys' / 'cert.pem.error.json').read_text())
    assert record['reason'] == 'device_certificate_pkcs12_passphrase (or DEVICE_PKCS12_PASSPHRASE) is empty', record
    assert bundle.read_bytes() == delivered  # nothing packed without a passphrase


def test_device_certificate_role_passes_ra_fingerprint_to_scep_enroll(micromdm, run_playbook, tmp_path):
    """micromdm sends no RA certificate, so a pinned RA is missing and the run stops before any request."""
    challenge = random_pin(32)
    server = micromdm(challenge=challenge)
    variables = dict(device_certificate_scep_url=server.url, device_certificate_ca_fingerprint=server.ca_fingerprint_sha256,
                     device_certificate_challenge_password=challenge, device_certificate_pkcs12_passphrase=random_pin(24),
                     device_certificate_dir=str(tmp_path / 'keys'), device_certificate_out_dir=str(tmp_path / 'out'),
                     device_certificate_common_name='192.0.2.16', device_certificate_ra_fingerprint=['ab' * 32])
    run = run_playbook([role_task('role', 'device_certificate', variables)])
    assert run.rc != 0
    record = json.loads((tmp_path / 'keys' / 'cert.pem.error.json').read_text())
    assert record['reason'].startswith('ra_fingerprint %s matches none of the certificates the SCEP server sent' % ('ab' * 32))
    assert server.pkioperation_count() == 0


def test_device_certificate_role_leaves_exactly_its_files_and_cleans_what_a_killed_run_left(micromdm, run_playbook,
                                                                                            tmp_path):
    """scep_enroll writes the bundle: after a printer run the device directory holds exactly the role's files (no
    bundle.p12.new, no temp file); a temp file and a bundle.p12.new a killed or older run left are gone after the next
    run, nothing due or renewing; the device restarts exactly once per delivered certificate."""
    challenge, passphrase = random_pin(32), random_pin(24)
    server = micromdm(challenge=challenge)
    marker = tmp_path / 'restarted'
    restart = tmp_path / 'restart.yml'
    restart.write_text('- name: Restart\n  ansible.builtin.shell: echo restarted >> %s\n  delegate_to: localhost\n' % marker)
    keys = tmp_path / 'keys'
    variables = dict(device_certificate_scep_url=server.url, device_certificate_ca_fingerprint=server.ca_fingerprint_sha256,
                     device_certificate_challenge_password=challenge, device_certificate_pkcs12_passphrase=passphrase,
                     device_certificate_dir=str(keys), device_certificate_out_dir=str(tmp_path / 'out'),
                     device_certificate_common_name='192.0.2.17', device_certificate_restart_tasks=str(restart))
    expected = ['bundle.p12', 'cert.pem', 'cert.pem.scep.json', 'chain.pem', 'delivered', 'key.pem']
    first = run_playbook([role_task('role', 'device_certificate', variables)])
    assert first.rc == 0, first.output()
    assert sorted(os.listdir(keys)) == expected
    assert oct(os.stat(keys / 'bundle.p12').st_mode & 0o777) == '0o600'
    assert (tmp_path / 'out' / 'localhost' / 'bundle.p12').read_bytes() == (keys / 'bundle.p12').read_bytes()
    assert marker.read_text() == 'restarted\n'

    for case, extra, requests in (('nothing due', {}, 1), ('renewal', dict(device_certificate_renew_before=400), 2)):
        (keys / 'bundle.p12.new').write_bytes((keys / 'bundle.p12').read_bytes())
        (keys / '.tokenfleet-bundle.p12-x7k2m9q_').write_bytes((keys / 'bundle.p12').read_bytes())
        run = run_playbook([role_task('role', 'device_certificate', dict(variables, **extra))])
        assert run.rc == 0, run.output()
        assert sorted(os.listdir(keys)) == expected, case
        assert server.pkioperation_count() == requests, case
        dummy, packed, dummy2 = pkcs12.load_key_and_certificates((keys / 'bundle.p12').read_bytes(), passphrase.encode())
        assert packed.public_bytes(serialization.Encoding.PEM) == (keys / 'cert.pem').read_bytes(), case
    assert changed_tasks(run) == ['Remove the bundle.p12.new an older version of the role left',
                                  'Certificate for the device from the SCEP CA (enrolled, renewed or left alone)',
                                  'Copy the certificate, chain and bundle', 'Remember which certificate the device has',
                                  'Restart']
    assert (tmp_path / 'out' / 'localhost' / 'bundle.p12').read_bytes() == (keys / 'bundle.p12').read_bytes()
    assert marker.read_text() == 'restarted\nrestarted\n'
