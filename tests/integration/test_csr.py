# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""csr with keys on SoftHSM tokens and in files; requests verified by OpenSSL, read back with cryptography."""

from __future__ import annotations

import ipaddress
import os
import stat
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import AttributeOID, ExtendedKeyUsageOID, NameOID

from harness import FOUR_RUN, assert_four_run, four_run_tasks, module_task, random_pin, token_args

REQUEST = dict(
    common_name='mfp01.example.com',
    organization_name='Example AS',
    country_name='NO',
    subject_alt_name=['DNS:mfp01.example.com', 'IP:192.0.2.15'],
    key_usage=['digitalSignature', 'keyEncipherment'],
    key_usage_critical=True,
    extended_key_usage=['serverAuth', 'ipsecIKE'],
    basic_constraints=['CA:FALSE'],
)


def openssl_verify(path):
    completed = subprocess.run(['openssl', 'req', '-in', str(path), '-noout', '-verify'], capture_output=True, text=True,
                               check=False)
    return completed.returncode == 0 and 'verify OK' in completed.stdout + completed.stderr


def read_request(path):
    return x509.load_pem_x509_csr(path.read_bytes())


def assert_request_content(csr, challenge):
    assert csr.subject == x509.Name([
        x509.NameAttribute(NameOID.COUNTRY_NAME, 'NO'),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, 'Example AS'),
        x509.NameAttribute(NameOID.COMMON_NAME, 'mfp01.example.com'),
    ])
    extensions = dict((type(ext.value), ext) for ext in csr.extensions)
    assert len(extensions) == 4
    san = extensions[x509.SubjectAlternativeName]
    assert list(san.value) == [x509.DNSName('mfp01.example.com'), x509.IPAddress(ipaddress.ip_address('192.0.2.15'))]
    assert not san.critical
    usage = extensions[x509.KeyUsage]
    assert usage.critical and usage.value.digital_signature and usage.value.key_encipherment
    assert not (usage.value.content_commitment or usage.value.data_encipherment or usage.value.key_cert_sign)
    assert list(extensions[x509.ExtendedKeyUsage].value) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.IPSEC_IKE]
    assert extensions[x509.BasicConstraints].value == x509.BasicConstraints(ca=False, path_length=None)
    assert csr.attributes.get_attribute_for_oid(AttributeOID.CHALLENGE_PASSWORD).value == challenge.encode()


def public_pem(csr):
    return csr.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode()


@pytest.mark.parametrize('key_options, digest', [
    (dict(type='rsa', size=2048), 'sha256'),
    (dict(type='ec', curve='secp256r1'), 'sha256'),
    (dict(type='ec', curve='secp384r1'), 'sha384'),
])
def test_request_for_token_key(token, run_playbook, tmp_path, key_options, digest):
    challenge = random_pin(30)
    path = tmp_path / 'request.csr'
    args = dict(token_args(token), key_label='mfp01', path=str(path), challenge_password=challenge, **REQUEST)
    run = run_playbook([module_task('token_key', 'key', dict(token_args(token), label='mfp01', **key_options))]
                       + four_run_tasks('csr', args), verbosity=3)
    assert_four_run(run, FOUR_RUN)
    key = run.result('key')['result']
    made = run.result('run 1')['result']
    assert made['reasons'] == ['the file does not exist']
    assert made['public_key_fingerprint'] == key['public_key_fingerprint']
    assert made['challenge_password_set'] is True
    assert made['subject'] == 'CN=mfp01.example.com,O=Example AS,C=NO'
    assert run.result('run 2')['result']['reasons'] == []

    assert openssl_verify(path)
    csr = read_request(path)
    assert csr.is_signature_valid
    assert public_pem(csr) == key['public_key']  # the request is for the key token_key made
    assert csr.signature_hash_algorithm.name == digest
    assert_request_content(csr, challenge)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600  # it carries the challenge password
    run.assert_not_leaked(token['user'], token['so'], challenge)


@pytest.fixture
def key_file(tmp_path):
    passphrase = random_pin(32)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp_path / 'integration.key'
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.BestAvailableEncryption(passphrase.encode())))
    return dict(path=str(path), passphrase=passphrase, key=key)


def test_request_for_key_file_and_regeneration_on_change(softhsm, run_playbook, tmp_path, key_file):
    path = tmp_path / 'integration.csr'
    args = dict(private_key_path=key_file['path'], private_key_passphrase=key_file['passphrase'], path=str(path),
                common_name='integration.example.gov.pl', organization_name='Example Office', country_name='PL')
    run = run_playbook(four_run_tasks('csr', args) + [
        module_task('csr', 'new subject', dict(args, organization_name='Other Office')),
        module_task('csr', 'new san check', dict(args, organization_name='Other Office',
                                                 subject_alt_name=['DNS:epuap.example.gov.pl']), check=True),
        module_task('csr', 'new san', dict(args, organization_name='Other Office',
                                           subject_alt_name=['DNS:epuap.example.gov.pl'])),
        module_task('csr', 'same again', dict(args, organization_name='Other Office',
                                              subject_alt_name=['DNS:epuap.example.gov.pl'])),
        module_task('csr', 'content', dict(args, organization_name='Other Office',
                                           subject_alt_name=['DNS:epuap.example.gov.pl'], return_content=True)),
    ], verbosity=3)
    assert_four_run(run, FOUR_RUN)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert run.result('new subject')['changed'] and run.result('new subject')['result']['reasons'] == ['the subject differs']
    new_san_check = run.result('new san check')['result']
    assert new_san_check['reasons'] == ['the SubjectAlternativeName extension differs']
    assert new_san_check['diff']['before']['subject_alt_name'] == ['DNS:integration.example.gov.pl']
    assert new_san_check['diff']['after']['subject_alt_name'] == ['DNS:epuap.example.gov.pl']
    assert run.result('new san')['changed'] and not run.result('same again')['changed']
    assert openssl_verify(path)
    csr = read_request(path)
    assert csr.subject.rfc4514_string() == 'CN=integration.example.gov.pl,O=Other Office,C=PL'
    assert [n.value for n in csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value] == [
        'epuap.example.gov.pl']
    assert public_pem(csr) == public_pem(x509.load_pem_x509_csr(
        run.result('content')['result']['csr'].encode()))
    assert csr.public_key().public_numbers() == key_file['key'].public_key().public_numbers()
    run.assert_not_leaked(key_file['passphrase'])


def test_rsa_pss_and_absent(token, run_playbook, tmp_path):
    path = tmp_path / 'pss.csr'
    args = dict(token_args(token), key_label='pss', path=str(path), common_name='ws-001.example.com',
                rsa_padding='pss', digest='sha512')
    run = run_playbook([module_task('token_key', 'key', dict(token_args(token), label='pss'))]
                       + four_run_tasks('csr', args))
    assert_four_run(run, FOUR_RUN)
    assert openssl_verify(path)
    csr = read_request(path)
    assert isinstance(csr.signature_algorithm_parameters, padding.PSS)
    assert csr.signature_hash_algorithm.name == 'sha512'
    absent = run_playbook(four_run_tasks('csr', dict(path=str(path), state='absent')))
    assert_four_run(absent, FOUR_RUN)
    assert not path.exists()


def test_ed25519_token_key(token, run_playbook, tmp_path):
    path = tmp_path / 'ed.csr'
    run = run_playbook([module_task('token_key', 'key', dict(token_args(token), label='ed', type='ed25519')),
                        module_task('csr', 'csr', dict(token_args(token), key_label='ed', path=str(path),
                                                       common_name='ed.example.com'))])
    assert run.result('csr')['changed'], run.output()
    assert openssl_verify(path)
    assert public_pem(read_request(path)) == run.result('key')['result']['public_key']


BAD_INPUT = [
    (dict(), 'no key given: set private_key_path for a key file, or key_label and/or key_id'),
    (dict(key_label='missing'), "no private key with label 'missing' on token 'ws-001'"),
    (dict(key_label='k', private_key_path='/tmp/x.key'), 'parameters are mutually exclusive: private_key_path|key_label'),
    (dict(key_label='k', subject_alt_name=['DNS:192.0.2.7']),
     "subject_alt_name entry 'DNS:192.0.2.7' is an IP address used as a DNS name; write IP:192.0.2.7"),
    (dict(key_label='k', subject_alt_name=['IP:300.1.1.1']), "subject_alt_name entry 'IP:300.1.1.1' is not a valid IPv4 or IPv6 address"),
    (dict(key_label='k', subject_alt_name=['mfp01']), "subject_alt_name entry 'mfp01' must look like DNS:name, IP:address"),
    (dict(key_label='k', extended_key_usage=['1.3.6.x']), "extended_key_usage: '1.3.6.x' is neither a known name nor a dotted OID"),
    (dict(key_label='k', key_usage=['signEverything']), "key_usage: unknown key usage 'signEverything'"),
    (dict(key_label='k', country_name='NOR'), "country_name must be a two-letter country code such as PL or NO (got 'NOR')"),
    (dict(key_label='k', rsa_padding='pss'), 'rsa_padding applies to RSA keys only, not to EC keys'),
    (dict(key_label='k', so_pin='12345678'), "so_pin is not accepted: signing with a key is the user's act"),
    (dict(key_label='k', path='/nonexistent-dir/x.csr'), 'the directory of path (/nonexistent-dir) does not exist'),
    (dict(key_label='k', user_pin='{wrong}'), "the user PIN was rejected by token 'ws-001' (PIN incorrect)"),
    (dict(key_label='k', challenge_password='{challenge}', return_content=True),
     'return_content cannot be used with challenge_password: the request carries the password in clear, so returning '
     'it would return the password; read the file instead'),
]


@pytest.mark.parametrize('options, message', BAD_INPUT)
def test_bad_input_is_a_clear_error_and_writes_nothing(token, run_playbook, tmp_path, options, message):
    path = tmp_path / 'bad.csr'
    wrong = random_pin()
    args = dict(token_args(token), path=str(path), common_name='mfp01.example.com')
    args.update(options)
    if args.get('user_pin') == '{wrong}':
        args['user_pin'] = wrong
    if args.get('challenge_password') == '{challenge}':
        args['challenge_password'] = challenge = random_pin(24)
    else:
        challenge = wrong
    run = run_playbook([module_task('token_key', 'key', dict(token_args(token), label='k', type='ec')),
                        module_task('csr', 'bad', args)], verbosity=3)
    record = run.result('bad')
    assert record['status'] == 'failed'
    assert message in record['result']['msg']
    assert not path.exists()
    run.assert_not_leaked(token['user'], wrong, challenge)


def test_digest_is_refused_for_ed25519_and_wrong_passphrase_for_file(token, run_playbook, tmp_path, key_file):
    wrong = random_pin()
    run = run_playbook([
        module_task('token_key', 'key', dict(token_args(token), label='ed', type='ed25519')),
        module_task('csr', 'ed digest', dict(token_args(token), key_label='ed', path=str(tmp_path / 'a.csr'),
                                             common_name='x.example.com', digest='sha256')),
        module_task('csr', 'wrong passphrase', dict(private_key_path=key_file['path'], private_key_passphrase=wrong,
                                                    path=str(tmp_path / 'b.csr'), common_name='x.example.com')),
        module_task('csr', 'no passphrase', dict(private_key_path=key_file['path'], path=str(tmp_path / 'c.csr'),
                                                 common_name='x.example.com')),
    ], verbosity=3)
    assert run.result('ed digest')['result']['msg'] == 'digest does not apply to Ed25519 keys, which hash internally; omit it'
    assert run.result('wrong passphrase')['result']['msg'] == (
        'private_key_passphrase does not decrypt private_key_path %s (wrong passphrase, or not a private key)'
        % key_file['path'])
    assert run.result('no passphrase')['result']['msg'] == (
        'private_key_path %s is encrypted: give private_key_passphrase' % key_file['path'])
    assert not any((tmp_path / name).exists() for name in ('a.csr', 'b.csr', 'c.csr'))
    run.assert_not_leaked(wrong, key_file['passphrase'], token['user'])


@pytest.mark.parametrize('rsa_padding', ['pkcs1v15', 'pss'])
def test_rsa_token_without_hash_and_sign_mechanisms_signs_a_host_made_digest(softhsm, run_playbook, tmp_path, rsa_padding):
    """Tokens that only offer raw RSA_PKCS / RSA_PKCS_PSS still sign: the digest (and DigestInfo) is made on the host."""
    softhsm.extra_conf(['slots.mechanisms = -CKM_SHA256_RSA_PKCS,CKM_SHA256_RSA_PKCS_PSS'])
    user = random_pin()
    softhsm.init_token('ws-001', random_pin(), user)
    mechanisms = softhsm.pkcs11_tool('--token-label', 'ws-001', '--list-mechanisms').stdout
    assert 'SHA256-RSA-PKCS' not in mechanisms and 'RSA-PKCS-PSS' in mechanisms
    token = dict(hsm=softhsm, label='ws-001', user=user)
    path = tmp_path / 'raw.csr'
    run = run_playbook([module_task('token_key', 'key', dict(token_args(token), label='k')),
                        module_task('csr', 'csr', dict(token_args(token), key_label='k', path=str(path),
                                                       common_name='raw.example.com', rsa_padding=rsa_padding))])
    assert run.result('csr')['changed'], run.output()
    assert openssl_verify(path)
    csr = read_request(path)
    assert csr.signature_hash_algorithm.name == 'sha256'
    assert isinstance(csr.signature_algorithm_parameters, padding.PSS) == (rsa_padding == 'pss')


@pytest.mark.parametrize('state', ['present', 'absent'])
def test_path_that_is_a_directory_names_the_option(token, run_playbook, tmp_path, state):
    directory = tmp_path / 'requests'
    directory.mkdir()
    (directory / 'keep').write_text('kept')
    args = dict(token_args(token), key_label='k', path=str(directory), common_name='mfp01.example.com', state=state)
    run = run_playbook([module_task('token_key', 'key', dict(token_args(token), label='k', type='ec')),
                        module_task('csr', 'directory', args),
                        module_task('csr', 'directory, check mode', args, check=True)], verbosity=3)
    for name in ('directory', 'directory, check mode'):
        record = run.result(name)
        assert record['status'] == 'failed'
        assert record['result']['msg'] == 'path %s is a directory, not a file' % directory
    assert sorted(os.listdir(directory)) == ['keep'] and (directory / 'keep').read_text() == 'kept'
    run.assert_not_leaked(token['user'])
