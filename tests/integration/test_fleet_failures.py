# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A fleet with one broken printer (its SCEP URL points at a closed port) and one broken workstation: the others get
their certificates, the broken hosts alone fail, each with a failure record, and the fleet report names them and says
why. Once fixed, a run enrolls them, removes the records and the report shows no error."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import yaml
from cryptography import x509

from harness import REPO_ROOT, free_port, random_pin, venv_tool
from report_page import ReportPage

PROVISION = [
    {'name': 'Workstations', 'hosts': 'workstations', 'gather_facts': False, 'roles': ['tokenfleet.pki.token_certificate']},
    {'name': 'Printers', 'hosts': 'printers', 'gather_facts': False, 'roles': ['tokenfleet.pki.device_certificate']},
]


def ansible_playbook(env, tmp_path, *argv):
    completed = subprocess.run([venv_tool('ansible-playbook')] + list(argv), cwd=str(tmp_path), env=env,
                               stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600, check=False)
    return completed.returncode, completed.stdout[-8000:] + completed.stderr[-3000:]


def load_json(path):
    with open(path, encoding='utf-8') as handle:
        return json.load(handle)


def test_broken_hosts_fail_alone_and_the_report_says_why(micromdm, token, tmp_path):
    challenge = random_pin(32)
    server = micromdm(challenge=challenge)
    broken_url = 'http://127.0.0.1:%d/scep' % free_port()
    common = dict(ansible_connection='local', ansible_python_interpreter=sys.executable)
    workstations = {
        'ws-good': dict(common, token_certificate_token_label=token['label'], token_certificate_user_pin=token['user'],
                        token_certificate_pkcs11_module=token['hsm'].module, token_certificate_scep_url=server.url,
                        token_certificate_path=str(tmp_path / 'ws-good' / 'vpn.pem')),
        # Its token has no key yet and its CA is unreachable: it fails at the SCEP step.
        'ws-broken': dict(common, token_certificate_token_label=token['label'], token_certificate_user_pin=token['user'],
                          token_certificate_pkcs11_module=token['hsm'].module, token_certificate_key_label='broken',
                          token_certificate_scep_url=broken_url, token_certificate_path=str(tmp_path / 'ws-broken' / 'vpn.pem')),
    }
    printers = dict(('mfp-%d' % number, dict(common, device_certificate_scep_url=server.url,
                                             device_certificate_dir=str(tmp_path / 'keys' / ('mfp-%d' % number))))
                    for number in (1, 2, 3))
    # The common name defaults to the device's address, else its inventory name (never the controller's).
    printers['mfp-1']['ansible_host'] = '192.0.2.1'
    printers['mfp-2']['device_certificate_common_name'] = '192.0.2.2'
    printers['mfp-2']['device_certificate_scep_url'] = broken_url
    fleet_vars = dict(token_certificate_ca_fingerprint=server.ca_fingerprint_sha256,
                      token_certificate_challenge_password=challenge,
                      device_certificate_ca_fingerprint=server.ca_fingerprint_sha256,
                      device_certificate_challenge_password=challenge,
                      device_certificate_pkcs12_passphrase=random_pin(24),
                      device_certificate_out_dir=str(tmp_path / 'out'), device_certificate_timeout=5)
    inventory = tmp_path / 'fleet.yml'

    def write_inventory():
        inventory.write_text(yaml.safe_dump({'all': {'vars': fleet_vars, 'children': {
            'workstations': {'hosts': workstations}, 'printers': {'hosts': printers}}}}))

    write_inventory()
    playbook = tmp_path / 'provision.yml'
    playbook.write_text(yaml.safe_dump(PROVISION, sort_keys=False))
    report_dir = tmp_path / 'report'
    env = token['hsm'].env

    rc, output = ansible_playbook(env, tmp_path, '-i', str(inventory), str(playbook))
    assert rc == 2, output  # some hosts failed
    # The good hosts got their certificates; the broken ones alone failed, with the reason on screen.
    assert (tmp_path / 'ws-good' / 'vpn.pem').exists()
    for name in ('mfp-1', 'mfp-3'):
        assert sorted(os.listdir(tmp_path / 'out' / name)) == ['bundle.p12', 'cert.pem', 'chain.pem']
    assert not os.path.exists(tmp_path / 'out' / 'mfp-2')
    assert not os.path.exists(tmp_path / 'keys' / 'mfp-2' / 'cert.pem')
    assert not os.path.exists(tmp_path / 'ws-broken' / 'vpn.pem')
    assert server.pkioperation_count() == 3
    recap = dict((line.split()[0], line) for line in output.splitlines() if ' : ok=' in line)
    for host in ('ws-good', 'mfp-1', 'mfp-3'):
        assert 'failed=0' in recap[host], output
    for host in ('ws-broken', 'mfp-2'):
        assert 'failed=1' in recap[host], output
    assert 'connection to 127.0.0.1:%s refused' % broken_url.split(':')[2].split('/')[0] in output

    printer_record = load_json(tmp_path / 'keys' / 'mfp-2' / 'cert.pem.error.json')
    workstation_record = load_json(tmp_path / 'ws-broken' / 'vpn.pem.error.json')
    for record in (printer_record, workstation_record):
        assert sorted(record) == ['reason', 'task', 'time']
        assert record['reason'].startswith('communication error: connection to 127.0.0.1:'), record
        assert 'refused' in record['reason']
        assert record['task'].startswith('Certificate')
    assert not os.path.exists(tmp_path / 'keys' / 'mfp-1' / 'cert.pem.error.json')
    assert challenge not in json.dumps([printer_record, workstation_record])
    for name, common_name in (('mfp-1', '192.0.2.1'), ('mfp-3', 'mfp-3')):
        issued = x509.load_pem_x509_certificate((tmp_path / 'out' / name / 'cert.pem').read_bytes())
        assert issued.subject.rfc4514_string() == 'CN=%s' % common_name

    def report():
        rc, output = ansible_playbook(env, tmp_path, '-i', str(inventory), os.path.join(REPO_ROOT, 'playbooks', 'report.yml'),
                                      '-e', 'report_dir=%s' % report_dir)
        assert rc == 0, output
        rows = dict((row['host'], row) for row in load_json(report_dir / 'fleet-report.json')['rows'])
        return rows, (report_dir / 'fleet-report.html').read_text()

    rows, page = report()
    assert sorted(rows) == ['mfp-1', 'mfp-2', 'mfp-3', 'ws-broken', 'ws-good']
    for host in ('mfp-1', 'mfp-3', 'ws-good'):
        assert rows[host]['status'] == 'valid' and rows[host]['last_error'] is None, rows[host]
    for host, record in (('mfp-2', printer_record), ('ws-broken', workstation_record)):
        assert rows[host]['status'] == 'missing'
        assert rows[host]['failed_at'] == record['time']
        # Why, and nothing else: a certificate that was never issued is no second error.
        assert rows[host]['last_error'] == 'the last run failed at %s: %s' % (record['time'], record['reason'])
    # The page's table says it in the two rows and nowhere else, and marks those rows as failed runs.
    shown = ReportPage(page).rows
    assert dict((host, row['cells'][-1]) for host, row in shown.items() if 'the last run failed at' in row['cells'][-1]) == \
        dict((host, rows[host]['last_error']) for host in ('mfp-2', 'ws-broken'))
    assert sorted(host for host, row in shown.items() if row['failed']) == ['mfp-2', 'ws-broken']
    assert ReportPage(page).tiles['failed'] == 2
    assert 'refused (is the SCEP server running?)' in page

    # Fixed: the next run enrolls the broken hosts and forgets their failures.
    printers['mfp-2']['device_certificate_scep_url'] = server.url
    workstations['ws-broken']['token_certificate_scep_url'] = server.url
    write_inventory()
    rc, output = ansible_playbook(env, tmp_path, '-i', str(inventory), str(playbook))
    assert rc == 0, output
    assert server.pkioperation_count() == 5
    assert not os.path.exists(tmp_path / 'keys' / 'mfp-2' / 'cert.pem.error.json')
    assert not os.path.exists(tmp_path / 'ws-broken' / 'vpn.pem.error.json')
    issued = x509.load_pem_x509_certificate((tmp_path / 'out' / 'mfp-2' / 'cert.pem').read_bytes())
    assert issued.subject.rfc4514_string() == 'CN=192.0.2.2'
    rows, page = report()
    assert [rows[host]['status'] for host in sorted(rows)] == ['valid'] * 5
    assert [row['last_error'] for row in rows.values()] == [None] * 5
    assert 'the last run failed' not in page
    assert ReportPage(page).tiles['failed'] == 0
    assert not [host for host, row in ReportPage(page).rows.items() if row['failed'] or row['cells'][-1]]
