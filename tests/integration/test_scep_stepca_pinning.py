# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""scep_enroll and scep_ca_info against a real step-ca: the root pinned (by file, by fingerprint), the renewal window
of 24-hour certificates, renewal as RenewalReq. Certificates checked with openssl, requests counted in step-ca's log."""

# pylint: disable=redefined-outer-name

from __future__ import annotations

import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from harness import module_task, random_pin
from stepca import make_pki


def openssl_verify(root_path, untrusted_path, cert_path):
    completed = subprocess.run(['openssl', 'verify', '-CAfile', str(root_path), '-untrusted', str(untrusted_path),
                                str(cert_path)], capture_output=True, text=True, check=False)
    return completed.returncode == 0 and completed.stdout.strip().endswith(': OK')


def public_der(key_or_certificate):
    return key_or_certificate.public_key().public_bytes(serialization.Encoding.DER,
                                                        serialization.PublicFormat.SubjectPublicKeyInfo)


def enroll_args(server, tmp_path, **options):
    args = dict(url=server.url, challenge_password=server.challenge, private_key_path=str(tmp_path / 'key.pem'),
                certificate_path=str(tmp_path / 'cert.pem'), chain_path=str(tmp_path / 'chain.pem'),
                common_name='mfp01.example.com', organization_name='Example AS')
    args.update(options)
    return args


ROLE_ENROLL_TASK = 'Certificate for the device from the SCEP CA (enrolled, renewed or left alone)'


def role_task(name, role, variables):
    return {'name': name, 'ansible.builtin.include_role': {'name': 'tokenfleet.pki.' + role}, 'vars': variables}


def changed_tasks(run):
    return [record['task'] for record in run.results if record['changed']]


def by_subject(info):
    return dict((cert['subject'], cert) for cert in info['certificates'])


def assert_issued_under_root(server, tmp_path, issued_count):
    """The certificate on disk is step-ca's latest, for the key on disk, issued by the intermediate, chaining to the root."""
    cert = x509.load_pem_x509_certificate((tmp_path / 'cert.pem').read_bytes())
    key = serialization.load_pem_private_key((tmp_path / 'key.pem').read_bytes(), None)
    issued = server.issued()
    assert len(issued) == issued_count
    assert issued[-1].certificate == cert
    assert public_der(cert) == public_der(key)
    assert cert.issuer == server.intermediate_certificate.subject
    assert openssl_verify(server.root_pem_path, tmp_path / 'chain.pem', tmp_path / 'cert.pem')
    assert server.intermediate_certificate in x509.load_pem_x509_certificates((tmp_path / 'chain.pem').read_bytes())


def test_root_pinned_by_file_when_step_ca_sends_only_its_intermediate(stepca, run_playbook, tmp_path):
    """Default step-ca: GetCACert holds the intermediate only; the root file anchors it, requests go to the intermediate."""
    server = stepca()
    run = run_playbook([
        module_task('scep_ca_info', 'info', dict(url=server.url, ca_certificate_path=server.root_pem_path)),
        module_task('scep_enroll', 'check', enroll_args(server, tmp_path, ca_certificate_path=server.root_pem_path), check=True),
        module_task('scep_enroll', 'enroll', enroll_args(server, tmp_path, ca_certificate_path=server.root_pem_path)),
    ], verbosity=3)
    enroll = run.result('enroll')['result']
    assert enroll.get('status') == 'issued' and enroll['changed'] is True, enroll.get('msg')
    info = run.result('info')['result']
    assert info['pinned'] is True
    assert [(cert['subject'], cert['role'], cert['matches_pin'], cert['issuing']) for cert in info['certificates']] == [
        (server.intermediate_certificate.subject.rfc4514_string(), 'ca', False, True)]
    assert run.result('check')['result']['status'] == 'issued'
    assert_issued_under_root(server, tmp_path, 1)
    assert server.pkioperation_count() == 1 and server.errors() == []
    run.assert_not_leaked(server.challenge)


def test_root_pinned_by_fingerprint_with_include_root_and_an_unrelated_pin_refused(stepca, run_playbook, tmp_path):
    """includeRoot: GetCACert holds intermediate and root; the root's fingerprint anchors the chain, the request is
    encrypted to the intermediate (step-ca cannot decrypt one to its root); an unrelated root or fingerprint is refused."""
    server = stepca(include_root=True)
    other = make_pki(tmp_path / 'other-pki', name='unrelated')
    root_pin = server.root_fingerprint.upper()
    run = run_playbook([
        module_task('scep_ca_info', 'info', dict(url=server.url, ca_fingerprint=root_pin)),
        module_task('scep_enroll', 'unrelated fingerprint',
                    enroll_args(server, tmp_path, ca_fingerprint=other.root_fingerprint)),
        module_task('scep_enroll', 'unrelated root file',
                    enroll_args(server, tmp_path, ca_certificate_path=other.root_pem_path)),
        module_task('scep_enroll', 'enroll', enroll_args(server, tmp_path, ca_fingerprint=root_pin)),
    ], verbosity=3)
    enroll = run.result('enroll')['result']
    assert enroll.get('status') == 'issued', enroll.get('msg')
    certificates = by_subject(run.result('info')['result'])
    intermediate = certificates[server.intermediate_certificate.subject.rfc4514_string()]
    root = certificates[server.root_certificate.subject.rfc4514_string()]
    assert (intermediate['role'], intermediate['matches_pin'], intermediate['issuing']) == ('ca', False, True)
    assert (root['role'], root['matches_pin'], root['issuing']) == ('ca', True, False)
    assert root['fingerprint_sha256'] == server.root_fingerprint
    refused = "the SCEP server's CA certificate (%s, %s) does not match the pinned CA; refusing to talk to it" % (
        server.intermediate_certificate.subject.rfc4514_string(), server.root_certificate.subject.rfc4514_string())
    for name in ('unrelated fingerprint', 'unrelated root file'):
        assert run.result(name)['status'] == 'failed'
        assert run.result(name)['result']['msg'] == refused
    assert_issued_under_root(server, tmp_path, 1)
    assert server.pkioperation_count() == 1 and server.errors() == []  # the refused runs sent no request
    run.assert_not_leaked(server.challenge)


@pytest.mark.parametrize('pin', ['file', 'fingerprint'])
def test_24_hour_certificates_are_not_due_after_issue_and_renew_as_renewalreq(stepca, run_playbook, tmp_path, pin):
    """Default window (30 days, at most a third of the lifetime): a second run and check mode send nothing; a share
    of the lifetime (100%) makes it due, and the renewal goes as a RenewalReq signed with the current certificate."""
    server = stepca(include_root=pin == 'fingerprint', record=True)
    pinning = (dict(ca_certificate_path=server.root_pem_path) if pin == 'file'
               else dict(ca_fingerprint=server.root_fingerprint))
    args = enroll_args(server, tmp_path, renewal_message='renewalreq', **pinning)
    run = run_playbook([
        module_task('scep_enroll', 'bad window', dict(args, renew_before='a third')),
        module_task('scep_enroll', 'enroll', args),
        module_task('scep_enroll', 'check again', args, check=True),
        module_task('scep_enroll', 'again', args),
        module_task('scep_enroll', 'whole lifetime', dict(args, renew_before='100%')),
        module_task('scep_enroll', 'after renewal', args),
    ], verbosity=3)
    assert run.result('bad window')['status'] == 'failed'
    assert run.result('bad window')['result']['msg'] == ('renew_before must be a number of days (for example 30) or a share of '
                                                         'the lifetime (for example "33%"), not \'a third\'')
    assert run.result('enroll')['result'].get('status') == 'issued', run.result('enroll')['result'].get('msg')
    for name in ('check again', 'again', 'after renewal'):
        result = run.result(name)['result']
        assert (run.result(name)['status'], result['changed'], result.get('status')) == ('ok', False, 'unchanged'), (
            name, result.get('reason'), result.get('msg'))
        assert result['reason'].endswith('renew_before is the default: 30 days, at most a third of the lifetime (8.0 h)')
    renewal = run.result('whole lifetime')['result']
    assert (renewal['changed'], renewal.get('status')) == (True, 'renewed'), renewal.get('msg')
    assert 'renew_before is 100% of the lifetime' in renewal['reason']
    assert [message['message_type'] for message in server.pki_messages()] == ['PKCSReq (19)', 'RenewalReq (17)']
    assert server.pkioperation_count() == 2
    assert_issued_under_root(server, tmp_path, 2)
    run.assert_not_leaked(server.challenge)


def test_device_certificate_role_keeps_a_fresh_24_hour_certificate_and_renews_by_share(stepca, run_playbook, tmp_path):
    """The role's default window is scep_enroll's: a second run sends nothing; "100%" (check mode first) renews."""
    server = stepca(include_root=True)
    passphrase = random_pin(24)
    variables = dict(device_certificate_scep_url=server.url, device_certificate_ca_fingerprint=server.root_fingerprint,
                     device_certificate_challenge_password=server.challenge, device_certificate_pkcs12_passphrase=passphrase,
                     device_certificate_dir=str(tmp_path / 'keys'), device_certificate_out_dir=str(tmp_path / 'out'),
                     device_certificate_common_name='192.0.2.15')
    first = run_playbook([role_task('role', 'device_certificate', variables)], verbosity=3)
    assert first.rc == 0, first.output()
    second = run_playbook([role_task('role', 'device_certificate', variables)], verbosity=3)
    assert second.rc == 0 and changed_tasks(second) == [], changed_tasks(second)
    assert server.pkioperation_count() == 1
    due = dict(variables, device_certificate_renew_before='100%')
    check = run_playbook([role_task('role', 'device_certificate', due)], check=True)
    assert check.rc == 0 and ROLE_ENROLL_TASK in changed_tasks(check), check.output()
    assert server.pkioperation_count() == 1  # check mode asks nobody
    renewal = run_playbook([role_task('role', 'device_certificate', due)])
    assert renewal.rc == 0 and ROLE_ENROLL_TASK in changed_tasks(renewal), renewal.output()
    assert server.issued_count() == 2
    for run in (first, second):
        run.assert_not_leaked(server.challenge, passphrase)
