# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""token_key against real SoftHSM tokens, checked independently with OpenSC pkcs11-tool."""

from __future__ import annotations

import re

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from harness import FOUR_RUN, assert_four_run, four_run_tasks, issue_certificate, module_task, random_pin, token_args


def key_task(token, name, check=False, **options):
    return module_task('token_key', name, dict(token_args(token), **options), check)


def private_key_objects(token):
    """pkcs11-tool's view of the private keys on the token: a list of {header, label, id, usage, access}."""
    out = token['hsm'].pkcs11_tool('--token-label', token['label'], '--login', '--list-objects', '--type', 'privkey',
                                   pin=token['user']).stdout
    objects = []
    for block in re.split(r'\n(?=Private Key Object)', out.strip()):
        if not block.startswith('Private Key Object'):
            continue
        fields = dict(re.findall(r'^\s+(\w[\w ]*?):\s+(.*)$', block, re.M))
        objects.append(dict(header=block.splitlines()[0], label=fields.get('label'), id=fields.get('ID'),
                            usage=fields.get('Usage'), access=fields.get('Access')))
    return objects


def write_certificate_with_pkcs11_tool(token, tmp_path, ca, key):
    """Write a certificate for ``key`` (a token_key result) under the key's id and label with an independent tool."""
    public_key = serialization.load_pem_public_key(key['public_key'].encode())
    cert_der = tmp_path / 'cert.der'
    cert_der.write_bytes(issue_certificate(ca, public_key, key['label']).public_bytes(serialization.Encoding.DER))
    token['hsm'].pkcs11_tool('--token-label', token['label'], '--login', '--write-object', str(cert_der), '--type', 'cert',
                             '--id', key['id'], '--label', key['label'], pin=token['user'])


@pytest.mark.parametrize('options, header, size, curve', [
    (dict(type='rsa'), 'Private Key Object; RSA', 2048, None),
    (dict(type='ec', curve='secp256r1'), 'Private Key Object; EC', 256, 'secp256r1'),
    (dict(type='ec', curve='secp384r1'), 'Private Key Object; EC', 384, 'secp384r1'),
    (dict(type='ed25519'), 'Private Key Object; EC_EDWARDS', 256, None),
])
def test_generate_four_run_and_check_with_pkcs11_tool(token, run_playbook, options, header, size, curve):
    run = run_playbook(four_run_tasks('token_key', dict(token_args(token), label='vpn', **options)))
    assert_four_run(run.results, FOUR_RUN)
    generated = run.result('run 1')['result']
    again = run.result('run 2')['result']
    assert generated['label'] == 'vpn'
    assert (generated['type'], generated['size'], generated['curve']) == (options['type'], size, curve)
    assert generated['sensitive'] is True and generated['extractable'] is False
    assert again['public_key'] == generated['public_key']
    assert run.result('check 1')['result']['public_key'] is None

    # The id is the RFC 5280 key identifier of the returned public key.
    public_key = serialization.load_pem_public_key(generated['public_key'].encode())
    assert generated['id'] == x509.SubjectKeyIdentifier.from_public_key(public_key).digest.hex()
    assert generated['uri'].startswith('pkcs11:token=ws-001;serial=%s;id=%%' % token['serial'])

    objects = private_key_objects(token)
    assert len(objects) == 1
    seen = objects[0]
    assert seen['header'].startswith(header)
    assert seen['label'] == 'vpn'
    assert seen['id'] == generated['id']
    assert 'sign' in seen['usage']
    access = seen['access']
    assert 'sensitive' in access and 'never extractable' in access
    assert 'always sensitive' in access
    assert re.search(r'(^|, )extractable', access) is None


def test_given_id_and_usage(token, run_playbook):
    run = run_playbook(four_run_tasks('token_key', dict(token_args(token), label='Podpis2026', id='0A:1b', usage=['sign'],
                                                        label_pattern='^[A-Za-z0-9]{1,20}$')))
    assert_four_run(run.results, FOUR_RUN)
    assert run.result('run 1')['result']['id'] == '0a1b'
    assert run.result('run 1')['result']['usage'] == ['sign']
    seen = private_key_objects(token)[0]
    assert seen['id'] == '0a1b'
    assert seen['usage'] == 'sign'


def test_changing_usage_of_an_existing_key(token, run_playbook):
    run = run_playbook([key_task(token, 'create', label='k', type='rsa', usage=['sign']),
                        key_task(token, 'widen check', True, label='k', type='rsa', usage=['sign', 'decrypt']),
                        key_task(token, 'widen', label='k', type='rsa', usage=['sign', 'decrypt']),
                        key_task(token, 'again', label='k', type='rsa', usage=['sign', 'decrypt'])])
    assert [r['changed'] for r in run.results] == [True, True, True, False]
    assert run.result('widen')['result']['actions'] == ['set usage']
    assert run.result('create')['result']['public_key'] == run.result('again')['result']['public_key']
    assert private_key_objects(token)[0]['usage'] == 'decrypt, sign'


def test_other_type_needs_force_and_force_replaces_key_and_its_certificate(token, run_playbook, tmp_path, test_ca):
    first = run_playbook([key_task(token, 'ec', label='k', type='ec')]).result('ec')['result']
    write_certificate_with_pkcs11_tool(token, tmp_path, test_ca, first)
    run = run_playbook([key_task(token, 'no force', label='k', type='rsa'),
                        key_task(token, 'force check', True, label='k', type='rsa', force=True),
                        key_task(token, 'force', label='k', type='rsa', force=True),
                        key_task(token, 'after', label='k', type='rsa', force=True)])
    refused = run.result('no force')
    assert refused['status'] == 'failed'
    assert refused['result']['msg'] == ("key 'k' already exists on token 'ws-001' but it is a ec key, rsa was requested; "
                                        'set force=true to replace it (this destroys the old key and any certificate '
                                        'with its id)')
    assert run.result('force check')['changed'] and run.result('force check')['result']['actions'] == ['replace']
    replaced = run.result('force')['result']
    assert replaced['type'] == 'rsa' and replaced['public_key'] != first['public_key']
    assert run.result('after')['changed'] is False
    objects = private_key_objects(token)
    assert [(o['label'], o['header'].split(';')[1].strip()) for o in objects] == [('k', 'RSA')]
    certs = token['hsm'].pkcs11_tool('--token-label', 'ws-001', '--list-objects', '--type', 'cert').stdout
    assert 'Certificate Object' not in certs


def test_absent_removes_private_public_and_certificate(token, run_playbook, tmp_path, test_ca):
    created = run_playbook([key_task(token, 'create', label='old', type='ec')]).result('create')['result']
    write_certificate_with_pkcs11_tool(token, tmp_path, test_ca, created)
    run = run_playbook(four_run_tasks('token_key', dict(token_args(token), label='old', state='absent')))
    assert_four_run(run.results, FOUR_RUN)
    assert run.result('check 1')['result']['actions'] == ['delete 3 objects']
    listing = token['hsm'].pkcs11_tool('--token-label', 'ws-001', '--login', '--list-objects', pin=token['user']).stdout
    assert 'Object' not in listing


BAD_INPUT = [
    (dict(label='bad label!'), "label 'bad label!' does not match label_pattern '^[A-Za-z0-9._-]{1,32}$'"),
    (dict(label='TwentyOneCharacters21', label_pattern='^[A-Za-z0-9]{1,20}$'),
     "label 'TwentyOneCharacters21' does not match label_pattern '^[A-Za-z0-9]{1,20}$'"),
    (dict(label='k', id='not-hex'), "id must be a non-empty hexadecimal string such as '01a2' (got 'not-hex')"),
    (dict(label='k', type='ec', size=2048), 'size applies to type=rsa only; use curve for type=ec'),
    (dict(label='k', type='rsa', curve='secp256r1'), 'curve applies to type=ec only, not to type=rsa'),
    (dict(label='k', type='ec', usage=['decrypt']), 'usage decrypt is not possible for type=ec (possible: derive, sign)'),
    (dict(label='k', token_label='nope'), "no initialised token with label 'nope'; tokens present: 'ws-001' (serial {serial})"),
    (dict(label='k', pkcs11_module='/nonexistent/libpkcs11.so'),
     'pkcs11_module /nonexistent/libpkcs11.so does not exist or is not a file'),
    (dict(label='k', size=1024), 'value of size must be one of: 2048, 3072, 4096, got: 1024'),
]


@pytest.mark.parametrize('options, message', BAD_INPUT)
def test_bad_input_is_a_clear_error_and_changes_nothing(token, run_playbook, options, message):
    run = run_playbook([key_task(token, 'bad', **options)])
    record = run.result('bad')
    assert record['status'] == 'failed'
    assert message.replace('{serial}', token['serial']) in record['result']['msg']
    listing = token['hsm'].pkcs11_tool('--token-label', 'ws-001', '--login', '--list-objects', pin=token['user']).stdout
    assert 'Object' not in listing


def test_unsupported_mechanism_is_refused(softhsm, run_playbook):
    softhsm.extra_conf(['slots.mechanisms = -CKM_EC_EDWARDS_KEY_PAIR_GEN'])
    user = random_pin()
    softhsm.init_token('ws-001', random_pin(), user)
    token = dict(hsm=softhsm, label='ws-001', user=user)
    run = run_playbook([key_task(token, 'ed', label='k', type='ed25519'), key_task(token, 'ec', label='k', type='ec')])
    record = run.result('ed')
    assert record['status'] == 'failed'
    assert record['result']['msg'] == "token 'ws-001' cannot generate ed25519 keys (it lacks EC_EDWARDS_KEY_PAIR_GEN)"
    assert run.result('ec')['status'] == 'ok'  # only that one mechanism is missing
    assert [o['label'] for o in private_key_objects(token)] == ['k']


def test_two_tokens_with_one_label_are_refused(softhsm, run_playbook):
    user = random_pin()
    softhsm.init_token('twin', random_pin(), user)
    softhsm.init_token('twin', random_pin(), user)
    token = dict(hsm=softhsm, label='twin', user=user)
    record = run_playbook([key_task(token, 'twin', label='k')]).result('twin')
    assert record['status'] == 'failed'
    assert re.match(r"2 tokens match label 'twin': 'twin' \(serial \w+\), 'twin' \(serial \w+\); select one with "
                    r'token_label or token_serial$', record['result']['msg'])


def test_wrong_pin_is_reported_and_no_key_is_made(token, run_playbook):
    wrong = random_pin()
    run = run_playbook([key_task(token, 'wrong', label='k', user_pin=wrong)], verbosity=3)
    record = run.result('wrong')
    assert record['status'] == 'failed'
    assert record['result']['msg'] == ("the user PIN was rejected by token 'ws-001' (PIN incorrect). It was tried once "
                                       'and is not retried, so that the token does not lock')
    assert wrong not in run.stdout + run.stderr
    assert private_key_objects(token) == []


def test_no_pin_in_verbose_output(token, run_playbook):
    run = run_playbook(four_run_tasks('token_key', dict(token_args(token), label='vpn', type='ec')) + [
        key_task(token, 'remove', label='vpn', state='absent')], verbosity=3)
    assert run.rc == 0
    output = run.stdout + run.stderr
    assert 'AnsiballZ_token_key.py' in output  # -vvv shows the module runs
    assert 'VALUE_SPECIFIED_IN_NO_LOG_PARAMETER' in output  # and their arguments, with the PIN masked
    assert token['user'] not in output
    assert token['so'] not in output
