# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""device_certificate delivers to simulated printers, which restart; a real TLS handshake shows the new certificate,
also after a rotation."""

from __future__ import annotations

import json
import os
import socket
import ssl
import sys

from cryptography import x509

from harness import REPO_ROOT, random_pin

sys.path.insert(0, os.path.join(REPO_ROOT, 'tests', 'fakes'))
from printer import FakePrinter  # noqa: E402  pylint: disable=wrong-import-position,import-error

DELIVER = os.path.join(REPO_ROOT, 'tests', 'integration', 'files', 'deliver_to_fake_printer.yml')


def presented_certificate(port):
    """The certificate a TLS handshake with the printer presents (no verification: we compare it exactly)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(('127.0.0.1', port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname='127.0.0.1') as tls:
            return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))


def printer_tasks(printers, server, challenge, passphrase, tmp_path, **extra):
    tasks = []
    for number, printer in enumerate(printers, start=1):
        variables = dict(device_certificate_scep_url=server.url, device_certificate_ca_fingerprint=server.ca_fingerprint_sha256,
                         device_certificate_challenge_password=challenge, device_certificate_pkcs12_passphrase=passphrase,
                         device_certificate_dir=str(tmp_path / ('mfp-%d' % number)), device_certificate_deliver_tasks=DELIVER,
                         device_certificate_common_name='192.0.2.%d' % number, printer_url=printer.url,
                         printer_admin_password=printer.admin_password)
        variables.update(extra)
        tasks.append({'name': 'printer %d' % number, 'ansible.builtin.include_role': {'name': 'tokenfleet.pki.device_certificate'},
                      'vars': variables})
    return tasks


def test_printers_present_their_new_certificates_after_enrollment_and_rotation(micromdm, run_playbook, tmp_path):
    challenge, passphrase = random_pin(32), random_pin(24)
    server = micromdm(challenge=challenge)
    printers = [FakePrinter(restart_delay=0.2, name='mfp-%d' % number).start() for number in (1, 2)]
    try:
        factory = [presented_certificate(printer.port) for printer in printers]
        run = run_playbook(printer_tasks(printers, server, challenge, passphrase, tmp_path), verbosity=3)
        assert run.rc == 0, run.output()
        run.assert_not_leaked(challenge, passphrase, *[printer.admin_password for printer in printers])
        issued = []
        for number, printer in enumerate(printers, start=1):
            assert printer.wait_restarted(10)
            presented = presented_certificate(printer.port)
            expected = x509.load_pem_x509_certificate((tmp_path / ('mfp-%d' % number) / 'cert.pem').read_bytes())
            assert presented == expected != factory[number - 1]
            assert presented.subject.rfc4514_string() == 'CN=192.0.2.%d' % number
            issued.append(presented)

        rotate = run_playbook(printer_tasks(printers, server, challenge, passphrase, tmp_path, device_certificate_renew_before=400))
        assert rotate.rc == 0, rotate.output()
        for number, printer in enumerate(printers, start=1):
            assert printer.wait_restarted(10)
            presented = presented_certificate(printer.port)
            assert presented != issued[number - 1]
            assert presented.public_key().public_numbers() != issued[number - 1].public_key().public_numbers()  # rekeyed
            assert presented == x509.load_pem_x509_certificate((tmp_path / ('mfp-%d' % number) / 'cert.pem').read_bytes())
            assert printer.restarts == 2
    finally:
        for printer in printers:
            printer.stop()


def test_a_failed_delivery_is_retried_by_the_next_run_without_a_new_request(micromdm, run_playbook, tmp_path):
    """The printer refuses the upload (its admin password was changed): the certificate stays on the controller, the
    failure is recorded, and the next run delivers that same certificate without asking the CA again."""
    challenge, passphrase = random_pin(32), random_pin(24)
    server = micromdm(challenge=challenge)
    printer = FakePrinter(restart_delay=0.2, name='mfp-1').start()
    try:
        factory = presented_certificate(printer.port)
        refused = printer_tasks([printer], server, challenge, passphrase, tmp_path, printer_admin_password='not-the-password')
        first = run_playbook(refused, verbosity=3)
        assert first.rc != 0, first.output()
        first.assert_not_leaked(challenge, passphrase, printer.admin_password, 'not-the-password')
        assert server.pkioperation_count() == 1
        issued = x509.load_pem_x509_certificate((tmp_path / 'mfp-1' / 'cert.pem').read_bytes())
        assert presented_certificate(printer.port) == factory
        record = json.loads((tmp_path / 'mfp-1' / 'cert.pem.error.json').read_text())
        assert record['task'] == 'Upload the bundle to the printer'
        assert '401' in record['reason'], record
        assert 'not-the-password' not in json.dumps(record) and passphrase not in json.dumps(record)

        second = run_playbook(printer_tasks([printer], server, challenge, passphrase, tmp_path))
        assert second.rc == 0, second.output()
        assert server.pkioperation_count() == 1  # the same certificate, delivered now
        assert printer.wait_restarted(10)
        assert presented_certificate(printer.port) == issued
        assert not (tmp_path / 'mfp-1' / 'cert.pem.error.json').exists()
        assert printer.restarts == 1

        third = run_playbook(printer_tasks([printer], server, challenge, passphrase, tmp_path))
        assert third.rc == 0, third.output()
        assert [record['task'] for record in third.results if record['changed']] == []
        assert server.pkioperation_count() == 1 and printer.restarts == 1
    finally:
        printer.stop()
