# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""scep_enroll with EC keys (P-256, P-384; in a file and on a token) against a real step-ca.

The CSR carries and is signed by the EC key; the pkiMessage around it is signed by a throwaway RSA key and
self-signed certificate that live in the module's memory only. The tests read that signer certificate from the
recorded pkiMessages and look for its key in every file under the test's directory.
"""

# pylint: disable=redefined-outer-name

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import subprocess
import sys

import pytest
from asn1crypto import cms, core
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from fixtures_scep import approving_when_pending
from harness import FOUR_RUN, REPO_ROOT, assert_four_run, four_run_tasks, module_task, token_args
from stepca import verify_chain

sys.path.insert(0, os.path.join(REPO_ROOT, 'tests', 'fakes'))
from scep_responder import FakeScepServer  # noqa: E402  pylint: disable=wrong-import-position,import-error

CURVES = {'secp256r1': 'prime256v1', 'secp384r1': 'secp384r1'}
"""Our curve names -> openssl's."""


def openssl(*args):
    completed = subprocess.run(['openssl'] + [str(arg) for arg in args], capture_output=True, text=True, check=False,
                               timeout=30)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    return completed.stdout


def cert_pubkey(path, form='PEM'):
    return openssl('x509', '-in', path, '-inform', form, '-noout', '-pubkey')


def key_pubkey(path):
    return openssl('pkey', '-in', path, '-pubout')


def curve_of_key_file(path):
    """openssl's name of the curve of a private key file (``ASN1 OID: ...``)."""
    found = re.search(r'ASN1 OID: (\S+)', openssl('pkey', '-in', path, '-noout', '-text'))
    assert found, 'not an EC key: %s' % path
    return found.group(1)


def token_pubkey(hsm, pin, label, directory):
    """The EC public key object labelled ``label`` on token ws-001 as OpenSC lists it, printed by openssl (PEM).

    From EC_PARAMS and EC_POINT of ``pkcs11-tool --list-objects``: its ``--read-object`` fails on P-384 keys
    ("cannot create EVP_PKEY").
    """
    listing = hsm.pkcs11_tool('--token-label', 'ws-001', '--login', '--list-objects', '--type', 'pubkey', pin=pin).stdout
    label_line = re.compile(r'label:\s+%s\s*$' % re.escape(label), re.M)
    found = [block for block in listing.split('Public Key Object')[1:] if label_line.search(block)]
    assert len(found) == 1, listing
    point = core.OctetString.load(bytes.fromhex(re.search(r'EC_POINT:\s+([0-9a-f]+)', found[0]).group(1))).native
    curve = {'06082a8648ce3d030107': ec.SECP256R1, '06052b81040022': ec.SECP384R1}[
        re.search(r'EC_PARAMS:\s+([0-9a-f]+)', found[0]).group(1)]
    der = ec.EllipticCurvePublicKey.from_encoded_point(curve(), point).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    target = directory / ('%s.pub.der' % label)
    target.write_bytes(der)
    return openssl('pkey', '-pubin', '-inform', 'DER', '-in', target, '-pubout')


def token_certificate_pubkey(hsm, pin, label, directory):
    target = directory / ('%s.cert.der' % label)
    hsm.pkcs11_tool('--token-label', 'ws-001', '--login', '--read-object', '--type', 'cert', '--label', label,
                    '--output-file', str(target), pin=pin)
    return cert_pubkey(target, 'DER')


def token_labels(hsm, pin):
    """Labels of the private keys on token ws-001 (pkcs11-tool --list-objects)."""
    listing = hsm.pkcs11_tool('--token-label', 'ws-001', '--login', '--list-objects', '--type', 'privkey', pin=pin).stdout
    return sorted(re.findall(r'label:\s+(\S+)', listing))


def recorded_signers(server):
    """(messageType, signer certificate) of each POST pkiMessage that went through step-ca's recording proxy."""
    with server._recorded_lock:  # pylint: disable=protected-access
        bodies = [body for method, dummy, body in server._recorded if method == 'POST']  # pylint: disable=protected-access
    found = []
    for body in bodies:
        signed = cms.ContentInfo.load(body)['content']
        certificates = [x509.load_der_x509_certificate(choice.chosen.dump()) for choice in signed['certificates']]
        assert len(certificates) == 1, 'one signer certificate expected in the pkiMessage'
        attributes = dict((a['type'].dotted, a['values'][0]) for a in signed['signer_infos'][0]['signed_attrs'])
        message_type = attributes['2.16.840.1.113733.1.9.2'].native
        found.append((message_type, certificates[0]))
    return found


def _pem_payloads(data):
    payloads = []
    for block in re.findall(rb'-----BEGIN [A-Z0-9 ]+-----(.*?)-----END', data, re.S):
        try:
            payloads.append(base64.b64decode(b''.join(block.split())))
        except binascii.Error:  # no PEM after all (e.g. a log line quoting a header)
            continue
    return payloads


def files_holding(directory, needles, skip=()):
    """Every file under ``directory`` (but not under its subdirectories ``skip``) that holds one of ``needles``
    (bytes): raw, in hex, or in a PEM block."""
    hits = []
    for root, dirs, names in os.walk(directory):
        dirs[:] = [name for name in dirs if root != str(directory) or name not in skip]
        for name in names:
            path = os.path.join(root, name)
            if os.path.islink(path) or not os.path.isfile(path):
                continue
            with open(path, 'rb') as handle:
                data = handle.read()
            texts = [data, data.lower()] + _pem_payloads(data)
            for needle in needles:
                if any(needle in text for text in texts) or needle.hex().encode('ascii') in data.lower():
                    hits.append(path)
                    break
    return hits


def assert_throwaway_signers(server, ec_public_keys, directory, subject):
    """Each recorded pkiMessage is signed by its own throwaway RSA certificate (self-signed, the request's subject,
    not the EC key), and neither that certificate nor its key is in any file under ``directory``."""
    signers = recorded_signers(server)
    assert signers
    wanted = [key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
              for key in ec_public_keys]
    moduli = []
    for dummy, signer in signers:
        public = signer.public_key()
        assert isinstance(public, rsa.RSAPublicKey)
        assert signer.issuer == signer.subject == subject
        assert public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) not in wanted
        moduli.append(public.public_numbers().n)
    assert len(set(moduli)) == len(moduli), 'a throwaway signer was used twice'
    needles = []
    for (dummy, signer), modulus in zip(signers, moduli):
        needles += [modulus.to_bytes((modulus.bit_length() + 7) // 8, 'big'), signer.public_bytes(serialization.Encoding.DER)]
    assert files_holding(directory, needles) == []
    return signers


def base_args(server, tmp_path, **options):
    args = dict(url=server.url, ca_certificate_path=server.intermediate_pem_path, challenge_password=server.challenge,
                certificate_path=str(tmp_path / 'cert.pem'), chain_path=str(tmp_path / 'chain.pem'),
                common_name='ws01.example.com', renew_before=0, timeout=20)
    args.update(options)
    return args


def token_key_task(token, label, curve):
    return module_task('token_key', 'key %s' % label, dict(token_args(token), label=label, type='ec', curve=curve))


def state_of(tmp_path):
    with open(tmp_path / 'cert.pem.scep.json', encoding='utf-8') as state:
        return json.load(state)


# ---- file keys ----------------------------------------------------------------------------------


def test_generated_ec_p256_file_key_four_run(stepca, run_playbook, tmp_path):
    server = stepca(record=True)
    args = base_args(server, tmp_path, private_key_path=str(tmp_path / 'key.pem'), key_type='ec', curve='secp256r1')
    del args['challenge_password']  # from the environment, so that the playbook file does not hold it either
    run = run_playbook(four_run_tasks('scep_enroll', args), verbosity=3, env=dict(SCEP_CHALLENGE_PASSWORD=server.challenge))
    assert_four_run(run, FOUR_RUN)
    assert run.result('run 1')['result']['status'] == 'issued'
    assert [run.result(name)['result']['status'] for name in ('check 2', 'run 2')] == ['unchanged', 'unchanged']
    assert curve_of_key_file(tmp_path / 'key.pem') == 'prime256v1'
    assert oct(os.stat(tmp_path / 'key.pem').st_mode & 0o777) == '0o600'
    assert cert_pubkey(tmp_path / 'cert.pem') == key_pubkey(tmp_path / 'key.pem')
    ok, output = verify_chain(server, tmp_path / 'cert.pem')
    assert ok, output
    certificate = x509.load_pem_x509_certificate((tmp_path / 'cert.pem').read_bytes())
    assert isinstance(certificate.public_key(), ec.EllipticCurvePublicKey)
    assert [entry.serial for entry in server.issued()] == [certificate.serial_number]
    assert server.pkioperation_count() == 1
    key = serialization.load_pem_private_key((tmp_path / 'key.pem').read_bytes(), None)
    signers = assert_throwaway_signers(server, [key.public_key()], tmp_path, certificate.subject)
    assert [message_type for message_type, dummy in signers] == ['19']
    assert state_of(tmp_path)['pending'] is None
    run.assert_not_leaked(server.challenge)
    # the challenge is in step-ca's own configuration only (its directory), in no file of the run
    assert files_holding(tmp_path, [server.challenge.encode('ascii')], skip=('stepca',)) == []
    assert files_holding(tmp_path / 'stepca', [server.challenge.encode('ascii')]) != []


def test_existing_ec_p384_file_key_enrolls_and_renews(stepca, run_playbook, tmp_path):
    """An EC key made by openssl; then a forced renewal as RenewalReq, signed by a new throwaway signer."""
    server = stepca(record=True)
    openssl('genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-384', '-out', tmp_path / 'key.pem')
    before = key_pubkey(tmp_path / 'key.pem')
    args = base_args(server, tmp_path, private_key_path=str(tmp_path / 'key.pem'), renewal_message='renewalreq')
    run = run_playbook([module_task('scep_enroll', 'enroll', args),
                        module_task('scep_enroll', 'renew', dict(args, force=True))], verbosity=3)
    assert run.result('enroll')['result']['status'] == 'issued', run.output()
    assert run.result('renew')['result']['status'] == 'renewed', run.output()
    assert key_pubkey(tmp_path / 'key.pem') == before  # the key is used as it is, not replaced
    assert cert_pubkey(tmp_path / 'cert.pem') == before
    issued = server.issued()
    assert len(issued) == 2 and issued[0].serial != issued[1].serial
    assert x509.load_pem_x509_certificate((tmp_path / 'cert.pem').read_bytes()).serial_number == issued[1].serial
    key = serialization.load_pem_private_key((tmp_path / 'key.pem').read_bytes(), None)
    assert key.curve.name == 'secp384r1'
    signers = assert_throwaway_signers(server, [key.public_key()], tmp_path, issued[1].certificate.subject)
    assert [message_type for message_type, dummy in signers] == ['19', '17']
    run.assert_not_leaked(server.challenge)


def test_curve_without_key_type_ec_is_refused_before_any_request(stepca, run_playbook, tmp_path):
    server = stepca()
    args = base_args(server, tmp_path, private_key_path=str(tmp_path / 'key.pem'), curve='secp384r1')
    record = run_playbook([module_task('scep_enroll', 'enroll', args)]).result('enroll')
    assert record['status'] == 'failed'
    assert record['result']['msg'] == 'curve is the curve of a generated EC key: it needs key_type ec (got key_type rsa)'
    for name in ('key.pem', 'cert.pem', 'cert.pem.scep.json', 'chain.pem'):
        assert not (tmp_path / name).exists(), name
    assert server.pkioperation_count() == 0


# ---- token keys ---------------------------------------------------------------------------------


@pytest.mark.parametrize('curve', ['secp256r1', 'secp384r1'])
def test_ec_token_key_enrolls_and_the_certificate_object_matches(stepca, token, run_playbook, tmp_path, curve):
    server = stepca(record=True)
    args = dict(base_args(server, tmp_path, key_label='vpn', store_on_token=True), **token_args(token))
    run = run_playbook([token_key_task(token, 'vpn', curve), module_task('scep_enroll', 'enroll', args),
                        module_task('scep_enroll', 'again', args)], verbosity=3)
    assert run.result('enroll')['result']['status'] == 'issued', run.output()
    assert run.result('again')['changed'] is False and run.result('again')['result']['status'] == 'unchanged'
    hsm = token['hsm']
    public = token_pubkey(hsm, token['user'], 'vpn', tmp_path)
    assert cert_pubkey(tmp_path / 'cert.pem') == public
    assert token_certificate_pubkey(hsm, token['user'], 'vpn', tmp_path) == public
    certificate = x509.load_pem_x509_certificate((tmp_path / 'cert.pem').read_bytes())
    assert certificate.public_key().curve.name == curve
    ok, output = verify_chain(server, tmp_path / 'cert.pem')
    assert ok, output
    assert server.issued_count() == 1
    assert_throwaway_signers(server, [certificate.public_key()], tmp_path, certificate.subject)
    run.assert_not_leaked(server.challenge, token['user'], token['so'])


@pytest.mark.parametrize('where, remove_old', [('token', False), ('token', True), ('file', False), ('file', True)])
def test_ec_rekey_makes_a_key_of_the_same_curve(stepca, token, run_playbook, tmp_path, where, remove_old):
    server = stepca(record=True)
    hsm, pin = token['hsm'], token['user']
    if where == 'token':
        args = dict(base_args(server, tmp_path, key_label='vpn', store_on_token=True), **token_args(token))
        setup = [token_key_task(token, 'vpn', 'secp384r1')]
    else:
        args = base_args(server, tmp_path, private_key_path=str(tmp_path / 'key.pem'), key_type='ec', curve='secp384r1')
        setup = []
    run = run_playbook(setup + [module_task('scep_enroll', 'enroll', args)])
    assert run.result('enroll')['result']['status'] == 'issued', run.output()
    old_public = token_pubkey(hsm, pin, 'vpn', tmp_path) if where == 'token' else key_pubkey(tmp_path / 'key.pem')
    old_certificate = (tmp_path / 'cert.pem').read_bytes()

    # key_type and curve say P-256 for a generated key; a rekey follows the current key (P-384) instead
    rekey_args = dict(args, rekey=True, remove_old=remove_old, force=True)
    if where == 'file':
        rekey_args['curve'] = 'secp256r1'
    run = run_playbook([module_task('scep_enroll', 'rekey', rekey_args),
                        module_task('scep_enroll', 'again', dict(args, rekey=True, remove_old=remove_old))], verbosity=3)
    assert run.result('rekey')['result']['status'] == 'renewed', run.output()
    assert run.result('again')['changed'] is False
    new_public = token_pubkey(hsm, pin, 'vpn', tmp_path) if where == 'token' else key_pubkey(tmp_path / 'key.pem')
    assert new_public != old_public
    assert cert_pubkey(tmp_path / 'cert.pem') == new_public
    certificate = x509.load_pem_x509_certificate((tmp_path / 'cert.pem').read_bytes())
    assert certificate.public_key().curve.name == 'secp384r1'
    ok, output = verify_chain(server, tmp_path / 'cert.pem')
    assert ok, output
    if where == 'token':
        assert token_certificate_pubkey(hsm, pin, 'vpn', tmp_path) == new_public
        assert token_labels(hsm, pin) == (['vpn'] if remove_old else ['vpn', 'vpn.old'])
        if not remove_old:
            assert token_pubkey(hsm, pin, 'vpn.old', tmp_path) == old_public
        run.assert_not_leaked(server.challenge, pin)
    else:
        assert curve_of_key_file(tmp_path / 'key.pem') == 'secp384r1'
        assert not (tmp_path / 'key.pem.new').exists()
        assert (tmp_path / 'key.pem.old').exists() is not remove_old
        assert (tmp_path / 'cert.pem.old').exists() is not remove_old
        if not remove_old:
            assert key_pubkey(tmp_path / 'key.pem.old') == old_public
            assert (tmp_path / 'cert.pem.old').read_bytes() == old_certificate
        run.assert_not_leaked(server.challenge)
    assert server.issued_count() == 2
    assert state_of(tmp_path)['swap'] is None and state_of(tmp_path)['pending'] is None


# ---- a pending EC request, resumed by a later run (our fake responder) ----------------------------


def test_pending_ec_request_is_polled_by_a_later_run_with_a_new_throwaway_signer(run_playbook, tmp_path):
    server = FakeScepServer(challenge='fake-challenge-%s' % os.urandom(8).hex())
    server.configure(pending=True)
    server.start()
    try:
        args = dict(url=server.url, ca_fingerprint=server.ca_fingerprint, challenge_password=server.challenge,
                    private_key_path=str(tmp_path / 'key.pem'), certificate_path=str(tmp_path / 'cert.pem'),
                    common_name='mfp02.example.com', timeout=5, key_type='ec')
        first = run_playbook([module_task('scep_enroll', 'request', args)], verbosity=3)
        request = first.result('request')['result']
        assert request['status'] == 'pending', first.output()
        pending = state_of(tmp_path)['pending']
        assert pending['signer_certificate'] is None  # the throwaway signer is not kept
        assert curve_of_key_file(tmp_path / 'key.pem') == 'prime256v1'
        server.approve(request['transaction_id'])
        second = run_playbook([module_task('scep_enroll', 'issued', args), module_task('scep_enroll', 'again', args)],
                              verbosity=3)
        assert second.result('issued')['result']['status'] == 'issued', second.output()
        assert second.result('issued')['result']['transaction_id'] == request['transaction_id']
        assert second.result('again')['changed'] is False
        assert cert_pubkey(tmp_path / 'cert.pem') == key_pubkey(tmp_path / 'key.pem')
        signers = [message.signer_certificate for message in server.pki_messages]
        assert len(signers) >= 2 and len(set(signer.fingerprint(signers[0].signature_hash_algorithm) for signer in signers)) >= 2
        assert all(isinstance(signer.public_key(), rsa.RSAPublicKey) for signer in signers)
        for dummy, text in (('first', first.stdout + first.stderr), ('second', second.stdout + second.stderr)):
            assert server.challenge not in text
        needles = [signer.public_bytes(serialization.Encoding.DER) for signer in signers]
        needles += [signer.public_key().public_numbers().n.to_bytes(256, 'big') for signer in signers]
        assert files_holding(tmp_path, needles) == []
    finally:
        server.stop()


def test_ed25519_key_is_refused_before_any_request(stepca, run_playbook, tmp_path):
    server = stepca()
    openssl('genpkey', '-algorithm', 'ED25519', '-out', tmp_path / 'key.pem')
    args = base_args(server, tmp_path, private_key_path=str(tmp_path / 'key.pem'))
    record = run_playbook([module_task('scep_enroll', 'enroll', args)]).result('enroll')
    assert record['status'] == 'failed'
    assert record['result']['msg'] == 'the key is neither an RSA nor an EC key: scep_enroll enrolls RSA and EC keys only'
    assert not (tmp_path / 'cert.pem').exists()
    assert server.pkioperation_count() == 0


def test_files_holding_finds_a_key_as_pem_der_or_hex(tmp_path):
    """The search the throwaway-signer checks rely on finds a key's modulus however a file would hold it."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    modulus = key.public_key().public_numbers().n.to_bytes(256, 'big')
    (tmp_path / 'a').mkdir()
    (tmp_path / 'a' / 'key.pem').write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                               serialization.NoEncryption()))
    (tmp_path / 'key.der').write_bytes(key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    (tmp_path / 'state.json').write_text(json.dumps(dict(n=modulus.hex().upper())))
    (tmp_path / 'other.pem').write_bytes(b'-----BEGIN X-----\nnot base64!\n-----END X-----\n')
    assert sorted(os.path.relpath(path, tmp_path) for path in files_holding(tmp_path, [modulus])) == [
        'a/key.pem', 'key.der', 'state.json']


def test_polls_within_one_run_keep_the_throwaway_signer(run_playbook, tmp_path):
    """The reply to a poll is encrypted to the request's signer: one throwaway signer for the request and its polls."""
    server = FakeScepServer(challenge='fake-challenge-%s' % os.urandom(8).hex())
    server.configure(pending=True)
    server.start()
    try:
        args = dict(url=server.url, ca_fingerprint=server.ca_fingerprint, challenge_password=server.challenge,
                    private_key_path=str(tmp_path / 'key.pem'), certificate_path=str(tmp_path / 'cert.pem'),
                    common_name='mfp03.example.com', timeout=5, key_type='ec', curve='secp384r1',
                    poll_attempts=20, poll_interval=1)
        with approving_when_pending(server):
            run = run_playbook([module_task('scep_enroll', 'wait', args)])
        assert run.result('wait')['result']['status'] == 'issued', run.output()
        signers = [message.signer_certificate for message in server.pki_messages]
        assert len(signers) >= 2 and all(signer == signers[0] for signer in signers)
        assert isinstance(signers[0].public_key(), rsa.RSAPublicKey)
        assert cert_pubkey(tmp_path / 'cert.pem') == key_pubkey(tmp_path / 'key.pem')
        assert curve_of_key_file(tmp_path / 'key.pem') == 'secp384r1'
    finally:
        server.stop()


def test_pending_ec_token_rekey_is_completed_by_a_later_run(token, run_playbook, tmp_path):
    """The new P-384 key (<label>.new) of a pending rekey is found again by its public half and takes the label."""
    server = FakeScepServer(challenge='fake-challenge-%s' % os.urandom(8).hex())
    server.start()
    try:
        hsm, pin = token['hsm'], token['user']
        args = dict(token_args(token), url=server.url, ca_fingerprint=server.ca_fingerprint,
                    challenge_password=server.challenge, key_label='vpn', store_on_token=True,
                    certificate_path=str(tmp_path / 'cert.pem'), common_name='ws02.example.com', timeout=5)
        run = run_playbook([token_key_task(token, 'vpn', 'secp384r1'), module_task('scep_enroll', 'enroll', args)])
        assert run.result('enroll')['result']['status'] == 'issued', run.output()
        old_public = token_pubkey(hsm, pin, 'vpn', tmp_path)
        server.configure(pending=True)
        rekey = dict(args, rekey=True, force=True)
        first = run_playbook([module_task('scep_enroll', 'rekey', rekey)], verbosity=3)
        request = first.result('rekey')['result']
        assert request['status'] == 'pending', first.output()
        assert token_labels(hsm, pin) == ['vpn', 'vpn.new']
        new_public = token_pubkey(hsm, pin, 'vpn.new', tmp_path)
        assert state_of(tmp_path)['pending']['signer_certificate'] is None
        server.approve(request['transaction_id'])
        second = run_playbook([module_task('scep_enroll', 'issued', dict(args, rekey=True)),
                               module_task('scep_enroll', 'again', dict(args, rekey=True))], verbosity=3)
        issued = second.result('issued')['result']
        assert issued['status'] == 'renewed' and issued['transaction_id'] == request['transaction_id'], second.output()
        assert second.result('again')['changed'] is False
        assert token_labels(hsm, pin) == ['vpn', 'vpn.old']
        assert token_pubkey(hsm, pin, 'vpn', tmp_path) == new_public != old_public
        assert token_pubkey(hsm, pin, 'vpn.old', tmp_path) == old_public
        assert cert_pubkey(tmp_path / 'cert.pem') == new_public
        assert token_certificate_pubkey(hsm, pin, 'vpn', tmp_path) == new_public
        for run_ in (first, second):
            run_.assert_not_leaked(server.challenge, pin)
    finally:
        server.stop()
