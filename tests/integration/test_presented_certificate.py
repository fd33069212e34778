# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A lost store is not a mass re-enrolment: presented_certificate reads what a device serves on its TLS port, and
device_certificate (with device_certificate_tls_port) enrols again only the devices whose presented certificate is
missing, not issued under the pinned CA, or due - against simulated printers and a real micromdm CA."""

from __future__ import annotations

import os
import shutil
import sys

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from harness import REPO_ROOT, issue_certificate, make_test_ca, random_pin
from test_printer_rotation import presented_certificate, printer_tasks

sys.path.insert(0, os.path.join(REPO_ROOT, 'tests', 'fakes'))
from printer import FakePrinter, TlsIdentity, make_factory_identity, server_context  # noqa: E402  pylint: disable=wrong-import-position,import-error


def serve(printer, identity):
    """Make the printer present ``identity`` from now on (as if someone had uploaded it)."""
    printer.accept(identity)
    printer.begin_restart()
    assert printer.wait_restarted(10)


def ca_identity(ca, days=90, start_offset_days=0):
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = issue_certificate(ca, key.public_key(), '127.0.0.1', days=days, start_offset_days=start_offset_days)
    return TlsIdentity(key, certificate, (ca[1],), server_context(key, certificate, (ca[1],)))


@pytest.fixture
def pinned_ca(tmp_path):
    ca = make_test_ca()
    path = tmp_path / 'pinned-ca.pem'
    path.write_bytes(ca[1].public_bytes(serialization.Encoding.PEM))
    return ca, str(path)


def presented_task(name, printer, ca_path, **options):
    args = dict(dict(host='127.0.0.1', port=printer.port, ca_certificate_path=ca_path), **options)
    return {'name': name, 'tokenfleet.pki.presented_certificate': args, 'register': 'presented'}


def test_a_certificate_of_the_pinned_ca_that_is_not_due_is_kept_four_run(run_playbook, tmp_path, pinned_ca):
    ca, ca_path = pinned_ca
    identity = ca_identity(ca)
    path = tmp_path / 'kept' / 'cert.pem'
    path.parent.mkdir()
    with FakePrinter(restart_delay=0.1, name='mfp-kept') as printer:
        serve(printer, identity)
        tasks = [presented_task('presented', printer, ca_path, path=str(path))]
        changed = []
        for check in (True, False, True, False):
            run = run_playbook(tasks, check=check)
            assert run.rc == 0, run.output()
            result = run.result('presented')
            changed.append(result['changed'])
            assert result['result']['keep'] is True and result['result']['issued_by_pinned_ca'] is True
            assert result['result']['renewal_due'] is False
            assert result['result']['reason'].startswith('issued under the pinned CA, renewal from ')
        assert changed == [True, True, False, False]
        assert x509.load_pem_x509_certificate(path.read_bytes()) == identity.certificate
        assert oct(os.stat(path).st_mode & 0o777) == '0o644'


@pytest.mark.parametrize('case', ['factory', 'foreign CA', 'due', 'expired', 'closed port'])
def test_what_cannot_stay_is_not_kept_and_says_why(run_playbook, tmp_path, pinned_ca, case):
    ca, ca_path = pinned_ca
    path = tmp_path / 'cert.pem'
    with FakePrinter(restart_delay=0.1, name='mfp-x') as printer:
        port = printer.port
        if case == 'foreign CA':
            serve(printer, ca_identity(make_test_ca()))
        elif case == 'due':
            serve(printer, ca_identity(ca, days=90, start_offset_days=-80))  # 10 days left: inside the default 30-day window
        elif case == 'expired':
            serve(printer, ca_identity(ca, days=5, start_offset_days=-10))
        elif case == 'closed port':
            printer.stop()
        tasks = [presented_task('presented', printer, ca_path, path=str(path), port=port)]
        run = run_playbook(tasks)
    assert run.rc == 0, run.output()
    result = run.result('presented')
    assert result['changed'] is False and result['result']['keep'] is False and not path.exists()
    reason = result['result']['reason']
    if case == 'closed port':
        assert result['result']['presented'] is False and reason.startswith('no certificate could be read from 127.0.0.1:%d' % port)
    elif case in ('due', 'expired'):
        assert result['result']['issued_by_pinned_ca'] is True and result['result']['renewal_due'] is True
        assert reason.startswith('issued under the pinned CA but due for renewal (renew_before is the default'
                                 if case == 'due' else 'issued under the pinned CA but expired at '), reason
    else:
        assert result['result']['presented'] is True and result['result']['issued_by_pinned_ca'] is False
        # a CA of the same name but another key fails on the signature
        assert reason == 'not issued under the pinned CA (no path from %s to a pinned CA certificate)' % (
            'the self-signed certificate' if case == 'factory' else 'CN=tokenfleet test CA'), reason


@pytest.mark.parametrize('options, message', [
    (dict(port=0), 'port must be 1 to 65535 (got 0)'),
    (dict(timeout=0), 'timeout must be positive (got 0)'),
    (dict(renew_before='soon'), 'renew_before must be a number of days'),
    (dict(ca_certificate_path='/nonexistent/ca.pem'), 'ca_certificate_path /nonexistent/ca.pem holds no usable CA certificate'),
    (dict(ca_certificate_path=os.path.join(REPO_ROOT, 'README.md')), 'holds no usable CA certificate'),
])
def test_bad_input_is_refused_naming_the_option(run_playbook, tmp_path, pinned_ca, options, message):
    dummy, ca_path = pinned_ca
    with FakePrinter(restart_delay=0.1, name='mfp-bad') as printer:
        run = run_playbook([presented_task('presented', printer, ca_path, path=str(tmp_path / 'cert.pem'), **options)])
        assert run.result('presented')['status'] == 'failed', run.output()
        assert message in run.result('presented')['result']['msg'], run.output()
        assert not (tmp_path / 'cert.pem').exists() and printer.history == []


def test_a_lost_store_re_enrols_only_the_devices_that_need_it(micromdm, run_playbook, tmp_path):
    """Three printers enrolled through the role; then one presents a factory certificate and one is inside the
    renewal window; the store is deleted. The next run asks the CA for those two only, keeps the third's certificate
    as the store's record (no key: the printer has it), and the run after that asks the CA for nothing."""
    challenge, passphrase = random_pin(32), random_pin(24)
    server = micromdm(challenge=challenge)
    printers = [FakePrinter(restart_delay=0.2, name='mfp-%d' % number).start() for number in (1, 2, 3)]
    try:
        def tasks(**extra):
            listed = printer_tasks(printers, server, challenge, passphrase, tmp_path, device_certificate_tls_host='127.0.0.1',
                                   **extra)
            for task, printer in zip(listed, printers):
                task['vars']['device_certificate_tls_port'] = printer.port
            return listed

        first = run_playbook(tasks())
        assert first.rc == 0, first.output()
        assert server.pkioperation_count() == 3
        issued = []
        for number, printer in enumerate(printers, start=1):
            assert printer.wait_restarted(10)
            issued.append(presented_certificate(printer.port))
            assert issued[-1] == x509.load_pem_x509_certificate((tmp_path / ('mfp-%d' % number) / 'cert.pem').read_bytes())
        serve(printers[1], make_factory_identity('mfp-2'))  # reset to a factory certificate
        for number in (1, 2, 3):
            shutil.rmtree(tmp_path / ('mfp-%d' % number))
        restarts = [printer.restarts for printer in printers]

        lost = tasks()
        lost[2]['vars']['device_certificate_renew_before'] = 400  # mfp-3's certificate is inside this window
        second = run_playbook(lost)
        assert second.rc == 0, second.output()
        second.assert_not_leaked(challenge, passphrase, *[printer.admin_password for printer in printers])
        presented = [record for record in second.results if record['task'].startswith('The certificate the device presents')]
        assert server.pkioperation_count() == 5, [record['result'].get('reason') for record in presented]  # mfp-2, mfp-3
        kept = tmp_path / 'mfp-1'
        assert x509.load_pem_x509_certificate((kept / 'cert.pem').read_bytes()) == issued[0] == presented_certificate(printers[0].port)
        assert not (kept / 'key.pem').exists() and printers[0].restarts == restarts[0]
        for index in (1, 2):
            assert printers[index].wait_restarted(10) and printers[index].restarts == restarts[index] + 1
            now = presented_certificate(printers[index].port)
            assert now != issued[index]
            assert now == x509.load_pem_x509_certificate((tmp_path / ('mfp-%d' % (index + 1)) / 'cert.pem').read_bytes())
            assert (tmp_path / ('mfp-%d' % (index + 1)) / 'key.pem').exists()

        third = run_playbook(tasks())
        assert third.rc == 0, third.output()
        assert [record['task'] for record in third.results if record['changed']] == []
        assert server.pkioperation_count() == 5 and [printer.restarts for printer in printers] == [
            restarts[0], restarts[1] + 1, restarts[2] + 1]
    finally:
        for printer in printers:
            printer.stop()
