# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""scep_enroll's PKCS#12 bundle (pkcs12_path) against a real micromdm scepserver; the bundle is opened with OpenSSL
and with GnuTLS' certtool, two tools independent of the cryptography library that writes it."""

from __future__ import annotations

import os
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from harness import FOUR_RUN, assert_four_run, four_run_tasks, module_task, random_pin, token_args


@pytest.fixture
def ca(micromdm):
    challenge = random_pin(32)
    server = micromdm(challenge=challenge, allowrenew=0)
    return dict(server=server, challenge=challenge)


@pytest.fixture
def host(tmp_path):
    """The device's directory: nothing but what scep_enroll writes."""
    directory = tmp_path / 'mfp01'
    directory.mkdir()
    return directory


def bundle_args(ca, directory, passphrase, **options):
    args = dict(url=ca['server'].url, ca_fingerprint=ca['server'].ca_fingerprint_sha256,
                challenge_password=ca['challenge'], private_key_path=str(directory / 'key.pem'),
                certificate_path=str(directory / 'cert.pem'), chain_path=str(directory / 'chain.pem'),
                pkcs12_path=str(directory / 'bundle.p12'), pkcs12_passphrase=passphrase,
                common_name='mfp01.example.com', organization_name='Example AS')
    args.update(options)
    return args


def tool(argv, passphrase):
    """Run an independent tool with the passphrase in its environment (not on the command line); stdout, stderr."""
    completed = subprocess.run(argv, capture_output=True, text=True, check=False,
                               env=dict(os.environ, P12_PASSPHRASE=passphrase))
    assert completed.returncode == 0, '%s: %s' % (argv[0], completed.stderr)
    return completed.stdout, completed.stderr


def openssl_info(path, passphrase):
    """OpenSSL's view: (certificates with their bag attributes, the algorithms it reports)."""
    return tool(['openssl', 'pkcs12', '-info', '-nokeys', '-in', str(path), '-passin', 'env:P12_PASSPHRASE'], passphrase)


def certtool_info(path, passphrase):
    """GnuTLS' view of the bundle (it checks the MAC with the password, then decrypts every bag)."""
    return tool(['sh', '-c', 'exec certtool --p12-info --inder --infile "$1" --password "$P12_PASSPHRASE"', 'certtool',
                 str(path)], passphrase)[0]


def openssl_key(path, passphrase):
    """The public key (PEM) of the private key OpenSSL takes out of the bundle."""
    key = tool(['openssl', 'pkcs12', '-nocerts', '-nodes', '-in', str(path), '-passin', 'env:P12_PASSPHRASE'],
               passphrase)[0]
    completed = subprocess.run(['openssl', 'pkey', '-pubout'], input=key, capture_output=True, text=True, check=True)
    return completed.stdout.encode()


def public_pem(certificate):
    return certificate.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load(directory, passphrase):
    return pkcs12.load_pkcs12((directory / 'bundle.p12').read_bytes(), passphrase.encode())


def current(directory):
    return x509.load_pem_x509_certificate((directory / 'cert.pem').read_bytes())


@pytest.mark.parametrize('encryption, openssl_shows, certtool_shows', [
    ('aes256', ['MAC: sha256', 'PKCS7 Encrypted data: PBES2, PBKDF2, AES-256-CBC',
                'Shrouded Keybag: PBES2, PBKDF2, AES-256-CBC'], ['MAC: SHA256', 'Cipher: AES-256-CBC']),
    ('3des', ['MAC: sha1', 'PKCS7 Encrypted data: pbeWithSHA1And3-KeyTripleDES-CBC',
              'Shrouded Keybag: pbeWithSHA1And3-KeyTripleDES-CBC'], ['MAC: SHA1', 'Cipher: 3DES-CBC'])])
def test_bundle_four_run_opens_with_openssl_and_certtool(ca, run_playbook, host, encryption, openssl_shows,
                                                         certtool_shows):
    passphrase = random_pin(24)
    run = run_playbook(four_run_tasks('scep_enroll', bundle_args(ca, host, passphrase, pkcs12_encryption=encryption)),
                       verbosity=3)
    assert_four_run(run, FOUR_RUN)
    assert ca['server'].pkioperation_count() == 1
    assert run.result('run 1')['result']['pkcs12_path'] == str(host / 'bundle.p12')
    assert run.result('run 1')['result']['status'] == 'issued'
    assert oct(os.stat(host / 'bundle.p12').st_mode & 0o777) == '0o600'
    certificate = current(host)
    chain = [ca['server'].ca_certificate]
    assert x509.load_pem_x509_certificates((host / 'chain.pem').read_bytes()) == chain

    certificates, algorithms = openssl_info(host / 'bundle.p12', passphrase)
    for text in openssl_shows:
        assert text in algorithms, algorithms
    assert 'friendlyName: mfp01.example.com' in certificates
    assert x509.load_pem_x509_certificates(certificates.encode()) == [certificate] + chain
    assert openssl_key(host / 'bundle.p12', passphrase) == public_pem(certificate)

    gnutls = certtool_info(host / 'bundle.p12', passphrase)
    for text in certtool_shows + ['Friendly name: mfp01.example.com', 'Type: PKCS #8 Encrypted key',
                                  '-----BEGIN ENCRYPTED PRIVATE KEY-----']:
        assert text in gnutls, gnutls
    assert x509.load_pem_x509_certificates(gnutls.encode()) == [certificate] + chain

    bundle = load(host, passphrase)
    assert bundle.cert.certificate == certificate
    assert [cert.certificate for cert in bundle.additional_certs] == chain
    assert public_pem(bundle.key) == public_pem(certificate)
    assert sorted(os.listdir(host)) == ['bundle.p12', 'cert.pem', 'cert.pem.scep.json', 'chain.pem', 'key.pem']
    run.assert_not_leaked(ca['challenge'], passphrase)


def test_bundle_options_are_checked_before_anything_changes(ca, token, run_playbook, host):
    on_token = dict(bundle_args(ca, host, random_pin(24)), key_label='vpn', **token_args(token))
    del on_token['private_key_path']
    run = run_playbook([
        module_task('scep_enroll', 'empty', bundle_args(ca, host, '')),
        module_task('scep_enroll', 'missing', bundle_args(ca, host, None)),
        module_task('scep_enroll', 'token key', on_token),
    ])
    assert run.result('empty')['result']['msg'] == ('pkcs12_passphrase is empty: it protects the key in pkcs12_path %s'
                                                    % (host / 'bundle.p12'))
    assert run.result('missing')['result']['msg'] == ('pkcs12_passphrase is missing: it protects the key in pkcs12_path '
                                                      '%s' % (host / 'bundle.p12'))
    assert run.result('token key')['result']['msg'] == ('pkcs12_path needs the key in a file (private_key_path): a key on '
                                                        'a token cannot be exported into a PKCS#12 bundle')
    assert all(record['status'] == 'failed' for record in run.results)
    assert os.listdir(host) == []
    assert ca['server'].pkioperation_count() == 0


def test_bundle_is_rewritten_on_renewal_and_when_it_no_longer_holds_the_pair(ca, run_playbook, host):
    """A renewal rewrites the bundle; a bundle deleted by hand, one of another passphrase or another encryption is
    written again without asking the CA; a bundle that is fine is left alone."""
    passphrase, other = random_pin(24), random_pin(24)
    args = bundle_args(ca, host, passphrase)
    server = ca['server']
    first = run_playbook([module_task('scep_enroll', 'enroll', args)])
    assert first.result('enroll')['result']['status'] == 'issued', first.output()
    enrolled = current(host)

    renew = run_playbook([module_task('scep_enroll', 'renew', dict(args, renew_before=400, rekey=True, remove_old=True))])
    assert renew.result('renew')['result']['status'] == 'renewed', renew.output()
    renewed = current(host)
    assert renewed != enrolled and public_pem(renewed) != public_pem(enrolled)
    assert load(host, passphrase).cert.certificate == renewed
    assert openssl_key(host / 'bundle.p12', passphrase) == public_pem(renewed)
    assert server.pkioperation_count() == 2

    for case, change, options, why in (
            ('deleted', (host / 'bundle.p12').unlink, {}, 'is missing'),
            ('other passphrase', lambda: None, dict(pkcs12_passphrase=other), 'does not open with pkcs12_passphrase'),
            ('3des', lambda: None, dict(pkcs12_passphrase=other, pkcs12_encryption='3des'),
             'is not encrypted as pkcs12_encryption says'),
            ('friendly name', lambda: None, dict(pkcs12_passphrase=other, pkcs12_encryption='3des',
                                                 pkcs12_friendly_name='Printer 1'), 'has another friendly name')):
        change()
        wanted = options.get('pkcs12_passphrase', passphrase)
        run = run_playbook([module_task('scep_enroll', 'check', dict(args, **options), check=True),
                            module_task('scep_enroll', 'again', dict(args, **options)),
                            module_task('scep_enroll', 'then', dict(args, **options))], verbosity=3)
        results = [(record['task'], record['status'], record['changed'], record['result'].get('status'))
                   for record in run.results]
        assert results == [('check', 'ok', True, 'unchanged'), ('again', 'ok', True, 'unchanged'),
                           ('then', 'ok', False, 'unchanged')], (case, run.output())
        assert run.result('again')['result']['reason'].endswith(
            '; pkcs12_path %s %s, so it is written again' % (host / 'bundle.p12', why)), (case, run.output())
        assert openssl_key(host / 'bundle.p12', wanted) == public_pem(renewed), case
        assert load(host, wanted).cert.certificate == renewed
        assert oct(os.stat(host / 'bundle.p12').st_mode & 0o777) == '0o600'
        run.assert_not_leaked(passphrase, other)
    certificates, algorithms = openssl_info(host / 'bundle.p12', other)
    assert 'MAC: sha1' in algorithms and 'friendlyName: Printer 1' in certificates, (algorithms, certificates)
    assert server.pkioperation_count() == 2  # none of these asked the CA


@pytest.mark.parametrize('due', [False, True], ids=['nothing-due', 'renewal'])
def test_temp_files_a_killed_run_left_are_removed_by_the_next_run(ca, run_playbook, host, due):
    """A killed run leaves .tokenfleet-<name>-* temp files (the bundle's holds the key and the issued certificate);
    the next run removes them, whether it has anything to do or not."""
    passphrase = random_pin(24)
    args = bundle_args(ca, host, passphrase)
    assert run_playbook([module_task('scep_enroll', 'enroll', args)]).rc == 0
    files = sorted(os.listdir(host))
    planted = ['.tokenfleet-%s-%s' % (name, suffix) for name, suffix in (
        ('bundle.p12', 'k2j4x9_a'), ('cert.pem', 'q0p1r2s3'), ('chain.pem', 'zz12ab34'), ('key.pem', 'a1b2c3d4'),
        ('cert.pem.scep.json', 'm5n6o7p8'))]
    for name in planted:
        (host / name).write_bytes((host / 'bundle.p12').read_bytes())
    run = run_playbook([module_task('scep_enroll', 'next', dict(args, renew_before=400) if due else args)])
    record = run.result('next')
    assert record['status'] == 'ok' and record['result']['status'] == ('renewed' if due else 'unchanged'), run.output()
    assert sorted(os.listdir(host)) == files
    assert load(host, passphrase).cert.certificate == current(host)
