# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""token_cert against real SoftHSM tokens, checked independently with OpenSC pkcs11-tool."""

from __future__ import annotations

import re

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import pkcs12

from harness import FOUR_RUN, assert_four_run, four_run_tasks, issue_certificate, module_task, random_pin, token_args


def pem(cert):
    return cert.public_bytes(serialization.Encoding.PEM).decode('ascii')


def der(cert):
    return cert.public_bytes(serialization.Encoding.DER)


def fingerprint(cert):
    return ':'.join('%02x' % b for b in cert.fingerprint(hashes.SHA256()))


def ski(public_key):
    return x509.SubjectKeyIdentifier.from_public_key(public_key).digest.hex()


def cert_task(token, name, check=False, **options):
    return module_task('token_cert', name, dict(token_args(token), **options), check)


def make_key(token, run_playbook, label='vpn', **options):
    """Generate a key with token_key; return (result, cryptography public key)."""
    options.setdefault('type', 'ec')
    result = run_playbook([module_task('token_key', 'key', dict(token_args(token), label=label, **options))]).result('key')
    assert result['status'] == 'ok', result
    facts = result['result']
    return facts, serialization.load_pem_public_key(facts['public_key'].encode())


def _objects(token, object_type, header):
    """pkcs11-tool's view of the objects of one type: a list of dicts of its fields plus 'header'."""
    out = token['hsm'].pkcs11_tool('--token-label', token['label'], '--login', '--list-objects', '--type', object_type,
                                   pin=token['user'], check=True).stdout
    objects = []
    for block in re.split(r'\n(?=\S)', out.strip()):
        if not block.startswith(header):
            continue
        fields = dict(re.findall(r'^\s+(\w[\w ]*?):\s+(.*)$', block, re.M))
        fields['header'] = block.splitlines()[0]
        objects.append(fields)
    return objects


def certificate_objects(token):
    """[{label, ID, subject, serial, header}] as pkcs11-tool lists the certificates."""
    return _objects(token, 'cert', 'Certificate Object')


def private_key_objects(token):
    return _objects(token, 'privkey', 'Private Key Object')


def public_key_objects(token):
    return _objects(token, 'pubkey', 'Public Key Object')


def all_objects_text(token):
    return token['hsm'].pkcs11_tool('--token-label', token['label'], '--login', '--list-objects',
                                    pin=token['user'], check=True).stdout


def read_certificate(token, tmp_path, object_id):
    """The DER certificate with this id, read back by pkcs11-tool."""
    out = tmp_path / ('read-%s.der' % object_id)
    token['hsm'].pkcs11_tool('--token-label', token['label'], '--read-object', '--type', 'cert', '--id', object_id,
                             '--output-file', str(out), check=True)
    return out.read_bytes()


def _no_access_flag(access, flag):
    """Whether the comma-separated pkcs11-tool Access line lacks ``flag`` (e.g. 'extractable' vs 'never extractable')."""
    return flag not in [item.strip() for item in access.split(',')]


# -- writing a certificate next to its key --------------------------------------------------------------

@pytest.mark.parametrize('source', ['pem_path', 'der_path', 'content'])
def test_write_certificate_four_run_and_check_with_pkcs11_tool(token, run_playbook, tmp_path, test_ca, source):
    key, public_key = make_key(token, run_playbook)
    cert = issue_certificate(test_ca, public_key, 'ws-001.example.org')
    if source == 'pem_path':
        (tmp_path / 'vpn.pem').write_text(pem(cert))
        options = dict(certificate_path=str(tmp_path / 'vpn.pem'))
    elif source == 'der_path':
        (tmp_path / 'vpn.der').write_bytes(der(cert))
        options = dict(certificate_path=str(tmp_path / 'vpn.der'))
    else:
        options = dict(certificate_content=pem(cert))

    run = run_playbook(four_run_tasks('token_cert', dict(token_args(token), **options)))
    assert_four_run(run.results, FOUR_RUN)
    assert run.result('check 1')['result']['actions'] == ['write certificate']
    assert run.result('run 1')['result']['actions'] == ['write certificate']
    assert run.result('run 2')['result']['actions'] == []

    written = run.result('run 1')['result']
    for name in FOUR_RUN:  # check mode predicts exactly what the run reports
        facts = run.result(name)['result']
        assert {k: facts[k] for k in ('label', 'id', 'fingerprint_sha256', 'uri', 'key_found')} == \
            {k: written[k] for k in ('label', 'id', 'fingerprint_sha256', 'uri', 'key_found')}
    assert written['label'] == 'vpn'
    assert written['id'] == key['id'] == ski(public_key)
    assert written['key_found'] is True
    assert written['subject'] == 'CN=ws-001.example.org'
    assert written['issuer'] == 'CN=tokenfleet test CA'
    assert written['serial_number'] == '%x' % cert.serial_number
    assert written['fingerprint_sha256'] == fingerprint(cert)
    assert written['not_after'] == cert.not_valid_after_utc.strftime('%Y-%m-%dT%H:%M:%SZ')
    assert written['uri'] == 'pkcs11:token=ws-001;serial=%s;id=%s;object=vpn;type=cert' % (
        token['serial'], ''.join('%%%02X' % b for b in bytes.fromhex(key['id'])))
    diff = run.result('check 1')['result']['diff']
    assert diff['before'] == {'certificates': []}
    assert diff['after']['certificates'][0]['fingerprint_sha256'] == fingerprint(cert)

    # Independently of our code: one certificate, with the key's label and id, and the same bytes.
    certs = certificate_objects(token)
    assert len(certs) == 1
    assert certs[0]['label'] == 'vpn'
    assert certs[0]['ID'] == key['id']
    assert certs[0]['subject'] == 'DN: CN=ws-001.example.org'
    assert read_certificate(token, tmp_path, key['id']) == der(cert)
    # The key itself is untouched.
    keys = private_key_objects(token)
    assert [(k['label'], k['ID']) for k in keys] == [('vpn', key['id'])]


def test_label_and_id_options_override_the_key_defaults(token, run_playbook, test_ca):
    dummy, public_key = make_key(token, run_playbook)
    cert = issue_certificate(test_ca, public_key, 'ws-001')
    run = run_playbook(four_run_tasks('token_cert', dict(token_args(token), certificate_content=pem(cert), label='vpn-cert',
                                                         id='0a:1B')))
    assert_four_run(run.results, FOUR_RUN)
    assert (run.result('run 1')['result']['label'], run.result('run 1')['result']['id']) == ('vpn-cert', '0a1b')
    assert [(c['label'], c['ID']) for c in certificate_objects(token)] == [('vpn-cert', '0a1b')]


def test_replace_certificate_with_a_newer_one(token, run_playbook, tmp_path, test_ca):
    key, public_key = make_key(token, run_playbook, type='rsa')
    old = issue_certificate(test_ca, public_key, 'ws-001 2025')
    new = issue_certificate(test_ca, public_key, 'ws-001 2026', days=365, start_offset_days=1)
    first = run_playbook([cert_task(token, 'old', certificate_content=pem(old))]).result('old')
    assert first['status'] == 'ok' and first['changed']
    assert read_certificate(token, tmp_path, key['id']) == der(old)

    (tmp_path / 'new.pem').write_text(pem(new))
    run = run_playbook(four_run_tasks('token_cert', dict(token_args(token), certificate_path=str(tmp_path / 'new.pem'))))
    assert_four_run(run.results, FOUR_RUN)
    assert run.result('check 1')['result']['actions'] == ['write certificate', 'delete 1 old certificate']
    assert run.result('run 1')['result']['actions'] == ['write certificate', 'delete 1 old certificate']
    diff = run.result('run 1')['result']['diff']
    assert [c['fingerprint_sha256'] for c in diff['before']['certificates']] == [fingerprint(old)]
    assert [c['fingerprint_sha256'] for c in diff['after']['certificates']] == [fingerprint(new)]
    assert run.result('run 1')['result']['subject'] == 'CN=ws-001 2026'

    certs = certificate_objects(token)
    assert len(certs) == 1, certs  # the old one is gone
    assert (certs[0]['label'], certs[0]['ID'], certs[0]['subject']) == ('vpn', key['id'], 'DN: CN=ws-001 2026')
    assert certs[0]['serial'].lower().lstrip('0') == ('%x' % new.serial_number).lstrip('0')
    assert read_certificate(token, tmp_path, key['id']) == der(new)


def test_absent_four_run_keeps_the_key(token, run_playbook, test_ca):
    key, public_key = make_key(token, run_playbook)
    cert = issue_certificate(test_ca, public_key, 'ws-001')
    assert run_playbook([cert_task(token, 'write', certificate_content=pem(cert))]).result('write')['changed']
    assert len(certificate_objects(token)) == 1

    run = run_playbook(four_run_tasks('token_cert', dict(token_args(token), label='vpn', state='absent')))
    assert_four_run(run.results, FOUR_RUN)
    assert run.result('run 1')['result']['actions'] == ['delete 1 certificate']
    assert run.result('check 1')['result']['diff']['before']['certificates'][0]['fingerprint_sha256'] == fingerprint(cert)
    assert certificate_objects(token) == []
    assert [(k['label'], k['ID']) for k in private_key_objects(token)] == [('vpn', key['id'])]


def test_absent_by_certificate_content_removes_only_that_certificate(token, run_playbook, test_ca):
    dummy, public_key = make_key(token, run_playbook)
    ca_key, ca_cert = test_ca
    keep = issue_certificate(test_ca, public_key, 'ws-001')
    run = run_playbook([cert_task(token, 'cert', certificate_content=pem(keep)),
                        cert_task(token, 'ca', certificate_content=pem(ca_cert), allow_orphan=True, label='ca')])
    assert [r['status'] for r in run.results] == ['ok', 'ok']
    run = run_playbook(four_run_tasks('token_cert', dict(token_args(token), certificate_content=pem(ca_cert), state='absent')))
    assert_four_run(run.results, FOUR_RUN)
    assert [(c['label'], c['subject']) for c in certificate_objects(token)] == [('vpn', 'DN: CN=ws-001')]


def test_absent_needs_a_selector(token, run_playbook):
    result = run_playbook([cert_task(token, 'absent', state='absent')]).result('absent')
    assert result['status'] == 'failed'
    assert result['result']['msg'] == ('state=absent needs label, id, certificate_path or certificate_content to '
                                       'select the certificates to remove')


# -- certificates without a key on the token ------------------------------------------------------------

def test_orphan_certificate_is_refused_unless_allowed(token, run_playbook, test_ca):
    dummy, ca_cert = test_ca
    refused = run_playbook([cert_task(token, 'orphan', certificate_content=pem(ca_cert)),
                            cert_task(token, 'no label', certificate_content=pem(ca_cert), allow_orphan=True)])
    result = refused.result('orphan')
    assert result['status'] == 'failed'
    assert result['result']['msg'] == (
        "the public key of the certificate (subject 'CN=tokenfleet test CA') matches no key on token 'ws-001'; "
        'generate or import the key first, or set allow_orphan=true to store the certificate alone '
        '(for example a CA certificate)')
    no_label = refused.result('no label')
    assert no_label['status'] == 'failed'
    assert 'label is required' in no_label['result']['msg']
    assert certificate_objects(token) == []  # the token was not changed

    run = run_playbook(four_run_tasks('token_cert', dict(token_args(token), certificate_content=pem(ca_cert), allow_orphan=True,
                                                         label='company-ca')))
    assert_four_run(run.results, FOUR_RUN)
    written = run.result('run 1')['result']
    assert written['key_found'] is False
    assert written['id'] == ski(ca_cert.public_key())
    certs = certificate_objects(token)
    assert [(c['label'], c['ID'], c['subject']) for c in certs] == [
        ('company-ca', ski(ca_cert.public_key()), 'DN: CN=tokenfleet test CA')]


def test_orphan_may_not_take_over_the_label_of_another_keys_certificate(token, run_playbook, test_ca):
    key, public_key = make_key(token, run_playbook)
    dummy, ca_cert = test_ca
    run = run_playbook([cert_task(token, 'cert', certificate_content=pem(issue_certificate(test_ca, public_key, 'ws-001'))),
                        cert_task(token, 'orphan', certificate_content=pem(ca_cert), allow_orphan=True, label='vpn')])
    result = run.result('orphan')
    assert result['status'] == 'failed'
    assert result['result']['msg'] == ("certificate label 'vpn' on token 'ws-001' is already used by the certificate of "
                                       'another key (id %s); choose another label' % key['id'])
    assert [(c['label'], c['subject']) for c in certificate_objects(token)] == [('vpn', 'DN: CN=ws-001')]


# -- bad input: a clear error, and the token is untouched ------------------------------------------------

@pytest.mark.parametrize('case', ['garbage_file', 'garbage_content', 'key_as_content', 'missing_file', 'both',
                                  'id_not_hex', 'directory'])
def test_bad_input_is_refused_before_anything_changes(token, run_playbook, tmp_path, test_ca, case):
    dummy, public_key = make_key(token, run_playbook)
    cert = issue_certificate(test_ca, public_key, 'ws-001')
    garbage = tmp_path / 'garbage.pem'
    garbage.write_text('-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n')
    options, expected = {
        'garbage_file': (dict(certificate_path=str(garbage)),
                         r'^certificate_path %s is not a PEM or DER X\.509 certificate: ' % re.escape(str(garbage))),
        'garbage_content': (dict(certificate_content='hello'), r'^certificate_content is not a PEM or DER X\.509 certificate: '),
        'key_as_content': (dict(certificate_content=ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()),
            r'^certificate_content is not a PEM or DER X\.509 certificate: '),
        'missing_file': (dict(certificate_path=str(tmp_path / 'nope.pem')),
                         r'^certificate_path %s does not exist$' % re.escape(str(tmp_path / 'nope.pem'))),
        'directory': (dict(certificate_path=str(tmp_path)), r'^certificate_path %s is a directory' % re.escape(str(tmp_path))),
        'both': (dict(certificate_path=str(garbage), certificate_content=pem(cert)),
                 r'mutually exclusive: certificate_path\|certificate_content\|pkcs12_path'),
        'id_not_hex': (dict(certificate_content=pem(cert), id='xyz'), r"^id must be a non-empty hexadecimal string"),
    }[case]
    result = run_playbook([cert_task(token, 'bad', **options)]).result('bad')
    assert result['status'] == 'failed'
    assert re.search(expected, result['result']['msg']), result['result']['msg']
    assert certificate_objects(token) == []


# -- PKCS#12 import (the ePUAP integration certificate) --------------------------------------------------

def make_p12(path, ca, passphrase, key_type='rsa', extra_ca=True):
    key = rsa.generate_private_key(65537, 2048) if key_type == 'rsa' else ec.generate_private_key(ec.SECP384R1())
    cert = issue_certificate(ca, key.public_key(), 'epuap.example.gov.pl')
    cas = [ca[1]] if extra_ca else None
    path.write_bytes(pkcs12.serialize_key_and_certificates(
        b'epuap', key, cert, cas, serialization.BestAvailableEncryption(passphrase.encode())))
    return key, cert


@pytest.mark.parametrize('key_type', ['rsa', 'ec'])
def test_pkcs12_import_four_run(token, run_playbook, tmp_path, test_ca, key_type):
    passphrase = random_pin(32)
    p12 = tmp_path / 'epuap.p12'
    key, cert = make_p12(p12, test_ca, passphrase, key_type)
    run = run_playbook(four_run_tasks('token_cert', dict(token_args(token), pkcs12_path=str(p12), pkcs12_passphrase=passphrase,
                                                         label='epuap')))
    assert_four_run(run.results, FOUR_RUN)
    assert run.result('check 1')['result']['actions'] == ['import key', 'write certificate']
    assert run.result('run 1')['result']['actions'] == ['import key', 'write certificate']
    assert run.result('run 2')['result']['actions'] == []
    assert run.result('run 1')['result']['key_found'] is False
    assert run.result('run 2')['result']['key_found'] is True
    written = run.result('run 1')['result']
    object_id = ski(cert.public_key())
    assert (written['label'], written['id'], written['fingerprint_sha256']) == ('epuap', object_id, fingerprint(cert))

    # Independently: private key, public key and certificate with one label and id; the private key
    # is sensitive and not extractable; the p12's extra CA certificate was not written.
    privates = private_key_objects(token)
    assert [(k['label'], k['ID']) for k in privates] == [('epuap', object_id)]
    assert privates[0]['header'].startswith('Private Key Object; %s' % key_type.upper())
    access = privates[0]['Access']
    assert 'sensitive' in [a.strip() for a in access.split(',')], access
    assert _no_access_flag(access, 'extractable'), access
    assert [(k['label'], k['ID']) for k in public_key_objects(token)] == [('epuap', object_id)]
    assert [(c['label'], c['ID'], c['subject']) for c in certificate_objects(token)] == [
        ('epuap', object_id, 'DN: CN=epuap.example.gov.pl')]
    assert read_certificate(token, tmp_path, object_id) == der(cert)

    if key_type == 'rsa':
        # The imported key signs on the token, and the certificate's public key verifies it.
        data, signature = tmp_path / 'data', tmp_path / 'data.sig'
        data.write_bytes(b'ePUAP integration test')
        token['hsm'].pkcs11_tool('--token-label', 'ws-001', '--login', '--sign', '--id', object_id, '-m', 'SHA256-RSA-PKCS',
                                 '--input-file', str(data), '--output-file', str(signature), pin=token['user'], check=True)
        cert.public_key().verify(signature.read_bytes(), data.read_bytes(), padding.PKCS1v15(), hashes.SHA256())


def test_pkcs12_passphrase_from_environment(token, run_playbook, tmp_path, test_ca):
    passphrase = random_pin(40)
    p12 = tmp_path / 'epuap.p12'
    make_p12(p12, test_ca, passphrase)
    result = run_playbook([cert_task(token, 'import', pkcs12_path=str(p12), label='epuap')],
                          env={'PKCS12_PASSPHRASE': passphrase}).result('import')
    assert result['status'] == 'ok' and result['changed'], result
    assert len(private_key_objects(token)) == 1


def test_pkcs12_does_not_import_next_to_a_different_key_with_the_label(token, run_playbook, tmp_path, test_ca):
    make_key(token, run_playbook, label='epuap')
    passphrase = random_pin(32)
    p12 = tmp_path / 'epuap.p12'
    make_p12(p12, test_ca, passphrase)
    before = all_objects_text(token)
    result = run_playbook([cert_task(token, 'import', pkcs12_path=str(p12), pkcs12_passphrase=passphrase,
                                     label='epuap')]).result('import')
    assert result['status'] == 'failed'
    assert result['result']['msg'].startswith("token 'ws-001' already has a different private key with label epuap")
    assert all_objects_text(token) == before


@pytest.mark.parametrize('case', ['wrong', 'missing', 'not_p12', 'no_file'])
def test_pkcs12_bad_input_leaves_the_token_untouched(token, run_playbook, tmp_path, test_ca, case):
    passphrase = random_pin(32)
    p12 = tmp_path / 'epuap.p12'
    make_p12(p12, test_ca, passphrase)
    not_p12 = tmp_path / 'cert.pem'
    not_p12.write_text(pem(test_ca[1]))
    options, expected = {
        'wrong': (dict(pkcs12_path=str(p12), pkcs12_passphrase=random_pin(32)),
                  'pkcs12_passphrase does not open pkcs12_path %s: ' % p12),
        'missing': (dict(pkcs12_path=str(p12)),
                    'pkcs12_path %s is protected by a passphrase: give pkcs12_passphrase' % p12),
        'not_p12': (dict(pkcs12_path=str(not_p12), pkcs12_passphrase=passphrase),
                    'pkcs12_path %s is not a PKCS#12 (.p12/.pfx) file' % not_p12),
        'no_file': (dict(pkcs12_path=str(tmp_path / 'nope.p12'), pkcs12_passphrase=passphrase),
                    'pkcs12_path %s does not exist' % (tmp_path / 'nope.p12')),
    }[case]
    before = all_objects_text(token)
    run = run_playbook([cert_task(token, 'import', label='epuap', **options)])
    result = run.result('import')
    assert result['status'] == 'failed'
    assert result['result']['msg'].startswith(expected), result['result']['msg']
    assert all_objects_text(token) == before
    assert 'Private Key Object' not in before
    run.assert_not_leaked(passphrase, token['user'])
    if case == 'wrong':
        run.assert_not_leaked(options['pkcs12_passphrase'])


# -- secrets never appear in output -------------------------------------------------------------------------

def test_no_pin_or_passphrase_in_verbose_output(token, run_playbook, tmp_path, test_ca):
    dummy, public_key = make_key(token, run_playbook)
    passphrase = random_pin(32)
    wrong = random_pin(32)
    p12 = tmp_path / 'epuap.p12'
    make_p12(p12, test_ca, passphrase)
    cert = issue_certificate(test_ca, public_key, 'ws-001')
    tasks = [
        cert_task(token, 'cert check', True, certificate_content=pem(cert)),
        cert_task(token, 'cert', certificate_content=pem(cert)),
        cert_task(token, 'p12 wrong', pkcs12_path=str(p12), pkcs12_passphrase=wrong, label='epuap'),
        cert_task(token, 'p12', pkcs12_path=str(p12), pkcs12_passphrase=passphrase, label='epuap'),
        cert_task(token, 'absent', label='epuap', state='absent'),
    ]
    # One task with the secrets from the environment (AWX credential types) instead of options.
    env_task = cert_task(token, 'p12 env', pkcs12_path=str(p12), label='epuap')
    del env_task['tokenfleet.pki.token_cert']['user_pin']
    tasks.append(env_task)
    run = run_playbook(tasks, verbosity=3, env={'PKCS11_USER_PIN': token['user'], 'PKCS12_PASSPHRASE': passphrase})
    assert [(r['task'], r['status']) for r in run.results] == [
        ('cert check', 'ok'), ('cert', 'ok'), ('p12 wrong', 'failed'), ('p12', 'ok'), ('absent', 'ok'), ('p12 env', 'ok')]
    assert run.result('p12 env')['changed'] is True
    assert 'token_cert' in run.stdout and '<localhost> EXEC' in run.stdout  # really verbose output
    run.assert_not_leaked(token['user'], passphrase, wrong, token['so'])
