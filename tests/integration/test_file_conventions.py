# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Files as community.crypto writes them (issue #12): module.atomic_move with unsafe_writes, a mode never wider
than 0600 or the wanted one, backup, return_content, and diff mode in scep_enroll, token_init, ksef_token and
scep_ca_info."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fixtures_ksef import NIP, OWNER, admin_token, ksef  # noqa: F401  pylint: disable=unused-import
from fixtures_scep import fake_scep, scep_ca  # noqa: F401  pylint: disable=unused-import
from harness import FOUR_RUN, assert_four_run, four_run_tasks, module_task, random_pin

MODE_WATCH = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'files', 'mode_watch')
BACKUP_SUFFIX = '~'


@pytest.fixture
def fake(fake_scep):
    return functools.partial(fake_scep, challenge=random_pin(), ca=None)


def scep_args(server, directory, **options):
    args = dict(url=server.url, ca_fingerprint=server.ca_fingerprint, challenge_password=server.challenge,
                private_key_path=str(directory / 'key.pem'), certificate_path=str(directory / 'cert.pem'),
                common_name='mfp03.example.com', timeout=5)
    args.update(options)
    return args


def mode_of(path):
    return os.stat(path).st_mode & 0o777


def backups_of(path):
    """The backup copies of ``path`` in its directory (``<name>.<pid>.<date>@<time>~``)."""
    return sorted(str(path.parent / name) for name in os.listdir(path.parent)
                  if name.startswith(path.name + '.') and name.endswith(BACKUP_SUFFIX))


def with_diff(task):
    return dict(task, diff=True)


@contextlib.contextmanager
def umask(value):
    previous = os.umask(value)
    try:
        yield
    finally:
        os.umask(previous)


class ModeWatch:
    """Every mode each file of ``directory`` had during the module runs of a playbook (files/mode_watch)."""

    def __init__(self, directory, log):
        self.log = log
        self.env = dict(PYTHONPATH=MODE_WATCH, TOKENFLEET_MODE_WATCH_DIR=str(directory),
                        TOKENFLEET_MODE_WATCH_LOG=str(log))

    def seen(self):
        modes = {}
        with open(self.log, encoding='utf-8') as log:
            for line in log:
                for name, values in json.loads(line).items():
                    modes.setdefault(name, set()).update(values)
        return modes


@contextlib.contextmanager
def bind_mounted(source, target):
    """``target`` (a file) bind-mounted over by ``source``, as containers mount single files; unmounted after."""
    mounted = subprocess.run(['mount', '--bind', str(source), str(target)], capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.fail('mount --bind is needed for this test (run as root, or with CAP_SYS_ADMIN): %s' % mounted.stderr)
    try:
        yield
    finally:
        subprocess.run(['umount', str(target)], check=True)


def test_key_files_are_never_readable_by_others_and_a_certificate_gets_its_mode(fake, run_playbook, tmp_path):
    """With a umask of 000, a new key, its .new, .old and backup copies, and the state file are never seen with any
    group or other permission; the certificate with mode 0644 ends 0644 and is never wider. Plain atomic_move fails
    this (it gives a new file 0666 & ~umask after the rename), and so does backup_local for the copy of a key."""
    host = tmp_path / 'host'
    host.mkdir()
    server = fake()
    watch = ModeWatch(host, tmp_path / 'modes.jsonl')
    args = scep_args(server, host, mode='0644', chain_path=str(host / 'chain.pem'))
    with umask(0):
        run = run_playbook([module_task('scep_enroll', 'enroll', args),
                            module_task('scep_enroll', 'rekey', dict(args, force=True, rekey=True, backup=True))],
                           env=watch.env)
    enroll, rekey = run.result('enroll'), run.result('rekey')
    assert enroll['status'] == 'ok' and enroll['result']['status'] == 'issued', run.output()
    assert rekey['status'] == 'ok' and rekey['result']['status'] == 'renewed', run.output()
    assert mode_of(host / 'key.pem') == 0o600 and mode_of(host / 'key.pem.old') == 0o600
    assert mode_of(host / 'cert.pem') == 0o644 and mode_of(host / 'cert.pem.scep.json') == 0o600
    key_backup = rekey['result']['private_key_backup_file']
    assert backups_of(host / 'key.pem') == [key_backup] and mode_of(key_backup) == 0o600
    assert open(key_backup, 'rb').read() == (host / 'key.pem.old').read_bytes()

    seen = watch.seen()
    assert 'key.pem' in seen and os.path.basename(key_backup) in seen, seen  # the watch saw the files
    private = dict((name, modes) for name, modes in seen.items()
                   if name.startswith(('key.pem', '.tokenfleet-key.pem', 'cert.pem.scep.json', '.ansible_tmp')))
    assert [name for name, modes in private.items() if any(mode & 0o077 for mode in modes)] == [], private
    assert seen['cert.pem'] <= {0o600, 0o644}, seen['cert.pem']


def test_an_existing_key_file_is_narrowed_before_the_new_key_is_in_it(fake, run_playbook, tmp_path):
    """A key file someone left world-readable: the new key never appears with the old file's mode (atomic_move alone
    would copy that mode onto the new content before its rename)."""
    host = tmp_path / 'host'
    host.mkdir()
    server = fake()
    args = scep_args(server, host)
    assert run_playbook([module_task('scep_enroll', 'enroll', args)]).result('enroll')['status'] == 'ok'
    os.chmod(host / 'key.pem', 0o644)
    watch = ModeWatch(host, tmp_path / 'modes.jsonl')
    run = run_playbook([module_task('scep_enroll', 'rekey', dict(args, force=True, rekey=True, remove_old=True))],
                       env=watch.env)
    assert run.result('rekey')['result']['status'] == 'renewed', run.output()
    assert mode_of(host / 'key.pem') == 0o600 and not (host / 'key.pem.new').exists()
    seen = watch.seen()
    new = [name for name in seen if name.startswith(('.tokenfleet-key.pem', 'key.pem.new', '.ansible_tmp'))]
    assert 'key.pem.new' in new, seen  # the new key, before it is renamed over the old one
    assert [name for name in new if seen[name] != {0o600}] == [], seen


def test_a_bind_mounted_certificate_is_refused_before_any_change_or_written_with_unsafe_writes(
        fake, run_playbook, tmp_path, test_ca):
    """A certificate file bind-mounted into place (as containers do): without unsafe_writes the run fails naming it
    before the CA is asked; with unsafe_writes the mounted file itself gets the certificate."""
    host = tmp_path / 'host'
    host.mkdir()
    server = fake()
    outside = tmp_path / 'outside.pem'
    old = test_ca[1].public_bytes(serialization.Encoding.PEM)  # a certificate for another key: enroll
    outside.write_bytes(old)
    (host / 'cert.pem').write_text('')
    args = scep_args(server, host)
    with bind_mounted(outside, host / 'cert.pem'):
        refused = run_playbook([module_task('scep_enroll', 'refused', args)]).result('refused')
        assert refused['status'] == 'failed'
        assert refused['result']['msg'] == (
            'certificate_path %s is a mount point (a bind-mounted file), which a rename cannot replace; set '
            'unsafe_writes=true to have it written in place (not atomically)' % (host / 'cert.pem'))
        assert server.pki_messages == [] and not (host / 'key.pem').exists()
        assert outside.read_bytes() == old

        run = run_playbook(four_run_tasks('scep_enroll', dict(args, unsafe_writes=True)))
        assert_four_run(run, FOUR_RUN)
        written = (host / 'cert.pem').read_bytes()
    issued = x509.load_pem_x509_certificate(outside.read_bytes())  # the mounted file itself got the certificate
    assert issued in server.issued and outside.read_bytes() == written
    assert mode_of(outside) == 0o644


def test_csr_on_a_bind_mounted_file_fails_clearly_without_unsafe_writes(run_playbook, tmp_path):
    key_path = tmp_path / 'key.pem'
    key_path.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    request, outside = tmp_path / 'request.csr', tmp_path / 'outside.csr'
    request.write_text('')
    outside.write_text('old request\n')
    args = dict(private_key_path=str(key_path), path=str(request), common_name='epuap.example.gov.pl')
    with bind_mounted(outside, request):
        refused = run_playbook([module_task('csr', 'refused', args)]).result('refused')
        run = run_playbook(four_run_tasks('csr', dict(args, unsafe_writes=True)))
    assert refused['status'] == 'failed' and 'set unsafe_writes=true' in refused['result']['msg']
    assert refused['result']['msg'].startswith('path %s is a mount point' % request)
    assert_four_run(run, FOUR_RUN)
    csr = x509.load_pem_x509_csr(outside.read_bytes())
    assert csr.subject.rfc4514_string() == 'CN=epuap.example.gov.pl'


def test_csr_backup_of_a_request_with_a_challenge_is_never_readable_by_others(run_playbook, tmp_path):
    """A request carrying a challenge password is 0600, and so is its backup at every moment (backup_local's copy2
    creates the copy with the umask's mode and sets the original's mode only after the content)."""
    host = tmp_path / 'host'
    host.mkdir()
    key_path = tmp_path / 'key.pem'
    key_path.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    challenge = random_pin()
    args = dict(private_key_path=str(key_path), path=str(host / 'request.csr'), common_name='mfp04.example.com',
                challenge_password=challenge, backup=True)
    watch = ModeWatch(host, tmp_path / 'modes.jsonl')
    with umask(0):
        run = run_playbook([module_task('csr', 'first', args),
                            module_task('csr', 'second', dict(args, common_name='mfp05.example.com')),
                            module_task('csr', 'same', dict(args, common_name='mfp05.example.com'))], env=watch.env)
    first, second, same = (run.result(name)['result'] for name in ('first', 'second', 'same'))
    assert first['changed'] and 'backup_file' not in first, run.output()
    assert second['changed'] and backups_of(host / 'request.csr') == [second['backup_file']]
    old = x509.load_pem_x509_csr(open(second['backup_file'], 'rb').read())
    assert old.subject.rfc4514_string() == 'CN=mfp04.example.com' and mode_of(second['backup_file']) == 0o600
    assert not same['changed'] and 'backup_file' not in same
    seen = watch.seen()
    assert os.path.basename(second['backup_file']) in seen and 'request.csr' in seen, seen
    assert [name for name, modes in seen.items() if any(mode & 0o077 for mode in modes)] == [], seen
    run.assert_not_leaked(challenge)


def test_scep_enroll_diff_return_content_and_no_secret_in_the_output(fake, run_playbook, tmp_path):
    host = tmp_path / 'host'
    host.mkdir()
    server = fake()
    args = scep_args(server, host, chain_path=str(host / 'chain.pem'), return_content=True)
    run = run_playbook([with_diff(task) for task in four_run_tasks('scep_enroll', args)], verbosity=3)
    assert_four_run(run, FOUR_RUN)
    certificate = x509.load_pem_x509_certificate((host / 'cert.pem').read_bytes())

    predicted = run.result('check 1')['result']['diff']
    assert predicted['before'] == dict(certificate=None, chain=None, pending_transaction_id=None)
    after = predicted['after']
    assert after['certificate']['subject'] == 'CN=mfp03.example.com'
    assert after['certificate']['serial_number'] is None
    assert after['certificate']['public_key_fingerprint'] is None  # the key is generated by the real run
    assert run.result('check 1')['result']['certificate_content'] is None

    first = run.result('run 1')['result']
    assert first['diff']['before'] == predicted['before']
    assert first['diff']['after']['certificate']['serial_number'] == '%x' % certificate.serial_number
    assert first['diff']['after']['chain'][0]['subject'] == certificate.issuer.rfc4514_string()
    assert first['certificate_content'] == (host / 'cert.pem').read_text()
    assert first['chain_content'] == (host / 'chain.pem').read_text()
    for name in ('check 2', 'run 2'):
        diff = run.result(name)['result']['diff']
        assert diff['before'] == diff['after'] == first['diff']['after']
        assert 'backup_file' not in run.result(name)['result']
    assert 'CN=mfp03.example.com' in run.stdout  # the diff is shown ...
    key_line = (host / 'key.pem').read_text().splitlines()[5]
    run.assert_not_leaked(server.challenge, key_line)  # ... and neither the challenge nor the key is

    renew = run_playbook([with_diff(module_task('scep_enroll', 'renew', dict(args, force=True), check=True))])
    predicted = renew.result('renew')['result']['diff']['after']['certificate']
    assert predicted['public_key_fingerprint'] == first['diff']['after']['certificate']['public_key_fingerprint']
    assert predicted['serial_number'] is None and predicted['subject'] == 'CN=mfp03.example.com'


def test_scep_ca_info_backup_return_content_and_diff(fake, run_playbook, tmp_path, test_ca):
    server = fake()
    chain = tmp_path / 'ca.pem'
    old = test_ca[1].public_bytes(serialization.Encoding.PEM)
    chain.write_bytes(old)
    os.chmod(chain, 0o640)
    args = dict(url=server.url, ca_fingerprint=server.ca_fingerprint, chain_path=str(chain), backup=True,
                return_content=True)
    run = run_playbook([with_diff(task) for task in four_run_tasks('scep_ca_info', args)])
    assert_four_run(run, FOUR_RUN)
    first = run.result('run 1')['result']
    assert backups_of(chain) == [first['backup_file']]
    assert open(first['backup_file'], 'rb').read() == old and mode_of(first['backup_file']) == 0o640
    assert chain.read_text() == first['chain_content'] == run.result('check 1')['result']['chain_content']
    assert mode_of(chain) == 0o644
    for name in ('check 1', 'check 2', 'run 2'):
        assert 'backup_file' not in run.result(name)['result']
    for name in ('check 1', 'run 1'):
        diff = run.result(name)['result']['diff']
        assert [c['subject'] for c in diff['before']['certificates']] == ['CN=tokenfleet test CA']
        assert [c['fingerprint_sha256'] for c in diff['after']['certificates']] == [
            c['fingerprint_sha256'] for c in first['certificates'] if c['role'] == 'ca']
    assert run.result('run 2')['result']['diff']['before'] == run.result('run 2')['result']['diff']['after']


def test_token_init_diff_and_backup_of_the_pin_file(softhsm, run_playbook, tmp_path):
    so_pin = random_pin()
    pin_file = tmp_path / 'user-pin'
    args = dict(pkcs11_module=softhsm.module, label='ws-009', so_pin=so_pin, user_pin='random', user_pin_path=str(pin_file),
                backup=True)
    run = run_playbook([with_diff(task) for task in four_run_tasks('token_init', args)], verbosity=3)
    assert_four_run(run, FOUR_RUN)
    predicted = run.result('check 1')['result']['diff']
    assert predicted['before']['initialized'] is False and predicted['before']['label'] is None
    assert predicted['after'] == dict(predicted['before'], label='ws-009', serial=None, slot_id=None, initialized=True,
                                      user_pin_initialized=True, user_pin_locked=False, user_pin_version=None)
    first = run.result('run 1')['result']
    assert first['diff']['after'] == dict(label='ws-009', serial=first['serial'], slot_id=first['slot_id'],
                                          initialized=True, user_pin_initialized=True, user_pin_locked=False,
                                          user_pin_version=None)
    assert 'backup_file' not in first  # there was no PIN file to replace
    assert run.result('run 2')['result']['diff']['before'] == run.result('run 2')['result']['diff']['after']
    first_pin = pin_file.read_text().strip()

    again = run_playbook([with_diff(module_task('token_init', 'wipe', dict(args, force=True)))], verbosity=3)
    wiped = again.result('wipe')['result']
    assert wiped['changed'] and wiped['actions'] == ['wipe and re-initialise token', 'set user PIN']
    assert backups_of(pin_file) == [wiped['backup_file']]
    assert open(wiped['backup_file'], encoding='ascii').read().strip() == first_pin
    assert mode_of(wiped['backup_file']) == 0o600 and mode_of(pin_file) == 0o600
    second_pin = pin_file.read_text().strip()
    assert second_pin != first_pin
    for output in (run, again):
        output.assert_not_leaked(so_pin, first_pin, second_pin)


def test_token_init_diff_of_a_pin_change(token, run_playbook):
    new_pin = random_pin()
    args = dict(pkcs11_module=token['hsm'].module, label=token['label'], user_pin=token['user'], new_user_pin=new_pin,
                new_user_pin_version='2026-12')
    run = run_playbook([with_diff(task) for task in four_run_tasks('token_init', args)], verbosity=3)
    assert_four_run(run, FOUR_RUN)
    for name in ('check 1', 'run 1'):
        diff = run.result(name)['result']['diff']
        assert diff['before']['user_pin_version'] is None and diff['after']['user_pin_version'] == '2026-12'
        assert dict(diff['before'], user_pin_version='2026-12') == diff['after']
        assert diff['before']['label'] == token['label'] and diff['before']['serial'] == token['serial']
    run.assert_not_leaked(token['user'], new_pin)


def test_ksef_token_diff_and_backup_of_the_token_file(ksef, admin_token, run_playbook, tmp_path):
    ksef.token_sessions_can_generate = True
    token_file = tmp_path / 'erp.token'
    token_file.write_text('previous secret\n')
    os.chmod(token_file, 0o640)
    args = dict(api_url=ksef.base_url, ca_path=ksef.ca_pem_path, context=dict(type='nip', value=NIP), max_wait=20,
                auth_token=admin_token, description='Integration - ERP', permissions=['InvoiceRead'],
                token_path=str(token_file), force=True, backup=True)
    run = run_playbook([with_diff(module_task('ksef_token', 'check', args, check=True)),
                        with_diff(module_task('ksef_token', 'create', args)),
                        with_diff(module_task('ksef_token', 'again', dict(args, force=False)))], verbosity=3)
    check, create, again = (run.result(name)['result'] for name in ('check', 'create', 'again'))
    assert create['changed'] and not again['changed'], run.output()
    secret = token_file.read_text().strip()
    assert secret.startswith(create['reference_number'] + '|')
    assert backups_of(token_file) == [create['backup_file']]
    assert open(create['backup_file'], encoding='ascii').read() == 'previous secret\n'
    assert mode_of(create['backup_file']) == 0o640 and mode_of(token_file) == 0o600  # the copy has the original's mode
    assert 'backup_file' not in check and 'backup_file' not in again

    before = dict(tokens=[], token_path_reference='unknown')
    assert check['diff'] == dict(before=before, after=dict(tokens=[dict(
        reference_number=None, description='Integration - ERP', permissions=['InvoiceRead'], status=None)],
        token_path_reference=None))
    made = dict(reference_number=create['reference_number'], description='Integration - ERP',
                permissions=['InvoiceRead'], status='Active')
    assert create['diff'] == dict(before=before, after=dict(tokens=[made], token_path_reference=create['reference_number']))
    assert again['diff']['before'] == again['diff']['after'] == create['diff']['after']
    run.assert_not_leaked(admin_token, secret, 'previous secret')


def test_ksef_token_diff_of_a_revocation(ksef, admin_token, run_playbook):
    reference, dummy = ksef.add_token(NIP, OWNER, ['InvoiceRead'], 'Accounting - Jan Kowalski')
    args = dict(api_url=ksef.base_url, ca_path=ksef.ca_pem_path, context=dict(type='nip', value=NIP), max_wait=20,
                auth_token=admin_token, description='Accounting - Jan Kowalski', state='absent')
    run = run_playbook([with_diff(task) for task in four_run_tasks('ksef_token', args)])
    assert_four_run(run, FOUR_RUN)
    revoked = dict(reference_number=reference, description='Accounting - Jan Kowalski', permissions=['InvoiceRead'],
                   status='Active')
    for name in ('check 1', 'run 1'):
        assert run.result(name)['result']['diff'] == dict(before=dict(tokens=[revoked]), after=dict(tokens=[]))
    assert run.result('run 2')['result']['diff'] == dict(before=dict(tokens=[]), after=dict(tokens=[]))
