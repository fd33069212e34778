# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""token_cert after a kill -9: every intermediate state a write can leave is repaired by the next run.

A write takes a few milliseconds (one C_CreateObject per object): a watcher that sent SIGKILL to the
playbook's process group as soon as SoftHSM started a new object file landed after the whole import
in most tries. So each state a kill can leave is made directly with pkcs11-tool,
then one run must leave exactly one key pair and one certificate for the label and id, and the run
after it must change nothing. The token is checked independently with pkcs11-tool.
"""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization

from harness import issue_certificate, module_task, random_pin, token_args
from test_token_cert import (
    certificate_objects,
    der,
    make_key,
    make_p12,
    private_key_objects,
    public_key_objects,
    read_certificate,
    ski,
)


def write_object(token, tmp_path, object_type, data, label, object_id, *extra):
    path = tmp_path / ('%s-%s-%s.der' % (object_type, label, len(list(tmp_path.iterdir()))))
    path.write_bytes(data)
    token['hsm'].pkcs11_tool('--token-label', token['label'], '--login', '--write-object', str(path), '--type', object_type,
                             '--label', label, '--id', object_id, *extra, pin=token['user'], check=True)


def pairs(objects):
    return [(o['label'], o['ID']) for o in objects]


def run_twice(run_playbook, task_args):
    run = run_playbook([module_task('token_cert', 'repair', task_args), module_task('token_cert', 'again', task_args)],
                       verbosity=3)
    repair, again = run.result('repair'), run.result('again')
    assert repair['status'] == 'ok', run.output()
    assert (again['status'], again['changed'], again['result']['actions']) == ('ok', False, [])
    return run, repair


@pytest.mark.parametrize('left', ['public key only', 'private key only'])
@pytest.mark.parametrize('key_type', ['rsa', 'ec'])
def test_interrupted_pkcs12_import_is_completed_by_the_next_run(token, run_playbook, tmp_path, test_ca, key_type, left):
    """A kill during the import of a .p12 leaves part of the key; the next run completes it without duplicates."""
    passphrase = random_pin(32)
    p12 = tmp_path / 'epuap.p12'
    key, cert = make_p12(p12, test_ca, passphrase, key_type)
    object_id = ski(cert.public_key())
    if left == 'public key only':
        spki = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        write_object(token, tmp_path, 'pubkey', spki, 'epuap', object_id)
    else:
        pkcs8 = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        write_object(token, tmp_path, 'privkey', pkcs8, 'epuap', object_id, '--usage-sign', '--sensitive')

    run, repair = run_twice(run_playbook, dict(token_args(token), pkcs12_path=str(p12), pkcs12_passphrase=passphrase,
                                               label='epuap'))
    assert repair['changed'] is True
    completed = 'import private key' if left == 'public key only' else 'import public key'
    assert repair['result']['actions'] == [completed, 'write certificate']
    assert pairs(private_key_objects(token)) == [('epuap', object_id)]
    assert pairs(public_key_objects(token)) == [('epuap', object_id)]
    assert pairs(certificate_objects(token)) == [('epuap', object_id)]
    assert read_certificate(token, tmp_path, object_id) == der(cert)
    run.assert_not_leaked(passphrase, token['user'])


def test_certificate_of_a_removed_old_key_next_to_the_new_one_leaves_one(token, run_playbook, tmp_path, test_ca):
    """A rekey killed after the new certificate was written, before the old one went: both carry the label and id."""
    facts, public_key = make_key(token, run_playbook)
    old_key, dummy = make_key(token, run_playbook, label='old')
    old_public = serialization.load_pem_public_key(old_key['public_key'].encode())
    old_cert = issue_certificate(test_ca, old_public, 'ws-001.example.org')
    new_cert = issue_certificate(test_ca, public_key, 'ws-001.example.org')
    token['hsm'].pkcs11_tool('--token-label', 'ws-001', '--login', '--delete-object', '--type', 'privkey', '--label', 'old',
                             pin=token['user'], check=True)
    token['hsm'].pkcs11_tool('--token-label', 'ws-001', '--login', '--delete-object', '--type', 'pubkey', '--label', 'old',
                             pin=token['user'], check=True)
    write_object(token, tmp_path, 'cert', der(old_cert), 'vpn', facts['id'])
    write_object(token, tmp_path, 'cert', der(new_cert), 'vpn', facts['id'])
    write_object(token, tmp_path, 'cert', der(new_cert), 'vpn', facts['id'])

    run, repair = run_twice(run_playbook, dict(token_args(token), certificate_content=new_cert.public_bytes(
        serialization.Encoding.PEM).decode()))
    assert repair['changed'] is True
    assert repair['result']['actions'] == ['delete 2 old certificates']
    assert pairs(certificate_objects(token)) == [('vpn', facts['id'])]
    assert read_certificate(token, tmp_path, facts['id']) == der(new_cert)
    assert pairs(private_key_objects(token)) == [('vpn', facts['id'])]
