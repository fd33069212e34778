# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The roles against step-ca: EC keys and the root pinned by file, as a fleet on step-ca would run them."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12

from harness import random_pin
from stepca import verify_chain
from test_roles import changed_tasks, role_task
from test_scep_ec import cert_pubkey, token_pubkey


def test_token_certificate_role_ec_p384_key_with_the_root_pinned_by_file(stepca, token, run_playbook, tmp_path):
    server = stepca()
    certificate_path = tmp_path / 'pki' / 'vpn.pem'
    variables = dict(token_certificate_pkcs11_module=token['hsm'].module, token_certificate_token_label=token['label'],
                     token_certificate_user_pin=token['user'], token_certificate_scep_url=server.url,
                     token_certificate_ca_certificate_path=server.root_pem_path,
                     token_certificate_challenge_password=server.challenge, token_certificate_key_type='ec',
                     token_certificate_key_curve='secp384r1', token_certificate_path=str(certificate_path),
                     token_certificate_common_name='ws-001.example.com')
    first = run_playbook([role_task('role', 'token_certificate', variables)], verbosity=3)
    assert first.rc == 0, first.output()
    assert server.issued_count() == 1
    assert cert_pubkey(certificate_path) == token_pubkey(token['hsm'], token['user'], 'vpn', tmp_path)
    ok, output = verify_chain(server, certificate_path)
    assert ok, output
    first.assert_not_leaked(token['user'], server.challenge)

    second = run_playbook([role_task('role', 'token_certificate', variables)])
    assert second.rc == 0 and changed_tasks(second) == [], second.output()
    assert server.pkioperation_count() == 1


def test_device_certificate_role_ec_key_with_the_root_pinned_by_file(stepca, run_playbook, tmp_path):
    server = stepca()
    passphrase = random_pin(24)
    variables = dict(device_certificate_scep_url=server.url, device_certificate_ca_certificate_path=server.root_pem_path,
                     device_certificate_challenge_password=server.challenge, device_certificate_pkcs12_passphrase=passphrase,
                     device_certificate_dir=str(tmp_path / 'keys'), device_certificate_out_dir=str(tmp_path / 'out'),
                     device_certificate_common_name='192.0.2.15', device_certificate_key_type='ec')
    first = run_playbook([role_task('role', 'device_certificate', variables)], verbosity=3)
    assert first.rc == 0, first.output()
    key, certificate, chain = pkcs12.load_key_and_certificates(
        (tmp_path / 'out' / 'localhost' / 'bundle.p12').read_bytes(), passphrase.encode())
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == 'secp256r1'
    public = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    assert key.public_key().public_bytes(*public) == certificate.public_key().public_bytes(*public)
    assert certificate.issuer == server.intermediate_certificate.subject
    ok, output = verify_chain(server, tmp_path / 'keys' / 'cert.pem')
    assert ok, output
    first.assert_not_leaked(server.challenge, passphrase)

    second = run_playbook([role_task('role', 'device_certificate', variables)])
    assert second.rc == 0 and changed_tasks(second) == [], second.output()
    assert server.pkioperation_count() == 1


@pytest.mark.parametrize('pins', ['neither', 'both'])
def test_roles_want_exactly_one_ca_pin(stepca, token, run_playbook, tmp_path, pins):
    """Neither or both of the fingerprint and the file: the host fails naming both variables, before any change (no
    token key, no device directory) and before any request."""
    server = stepca()
    chosen = {} if pins == 'neither' else dict(ca_fingerprint=server.intermediate_fingerprint,
                                               ca_certificate_path=server.root_pem_path)
    workstation = dict(token_certificate_pkcs11_module=token['hsm'].module, token_certificate_token_label=token['label'],
                       token_certificate_user_pin=token['user'], token_certificate_scep_url=server.url,
                       token_certificate_challenge_password=server.challenge,
                       token_certificate_path=str(tmp_path / 'ws' / 'vpn.pem'),
                       **{'token_certificate_' + name: value for name, value in chosen.items()})
    printer = dict(device_certificate_scep_url=server.url, device_certificate_challenge_password=server.challenge,
                   device_certificate_pkcs12_passphrase=random_pin(24), device_certificate_dir=str(tmp_path / 'keys'),
                   device_certificate_out_dir=str(tmp_path / 'out'), device_certificate_common_name='192.0.2.15',
                   **{'device_certificate_' + name: value for name, value in chosen.items()})
    for role, variables in (('token_certificate', workstation), ('device_certificate', printer)):
        run = run_playbook([role_task('role', role, variables)])
        assert run.rc != 0
        message = 'set one of %s_ca_fingerprint and %s_ca_certificate_path' % (role, role)
        failed = [record for record in run.results if record['status'] == 'failed']
        assert failed and message in failed[-1]['result']['msg'], run.output()
        assert [record['task'] for record in run.results if record['changed']] == []
    assert server.pkioperation_count() == 0
    assert not (tmp_path / 'ws').exists() and not (tmp_path / 'keys').exists()
    listing = token['hsm'].pkcs11_tool('--token-label', token['label'], '--login', '--list-objects', pin=token['user']).stdout
    assert 'vpn' not in listing, listing
