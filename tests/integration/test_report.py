# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""playbooks/report.yml: one row per host whatever state it is in, and an HTML page headless Chromium loads cleanly.

The fleet: workstations (local connection) with a certificate valid for 200 days, one expiring in 10 days, three
24-hour certificates judged by scep_enroll's renewal window (one fresh, one due, one due by its 50% renew_before), an
expired one, one without a certificate, one that is unreachable (ssh to a closed port); printers with controller-side
directories: a valid certificate with its scep_enroll state file, a first enrollment pending, a renewal pending, a
broken certificate and state file, and one left at the device_certificate role's default directory. The printers'
addresses are in TEST-NET-1, so a printer the report tried to contact would show up as unreachable.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import subprocess

import pytest
import yaml

from harness import REPO_ROOT, ansible_env, free_port, make_test_ca, venv_tool
from report_page import ReportPage, pending_request, write_certificate, write_state

PLAYBOOK = os.path.join(REPO_ROOT, 'playbooks', 'report.yml')
SCREENSHOT_COPY = os.path.join(REPO_ROOT, '.tmp', 'report-test')
CHROMIUM_TIMEOUT = 120
TIME_FORMAT = '%Y-%m-%dT%H:%M:%SZ'
HALF_DAY = datetime.timedelta(hours=12)


@pytest.fixture(scope='module')
def fleet(tmp_path_factory):
    """The inventory and files above, and the expected status of every host."""
    tmp = tmp_path_factory.mktemp('fleet')
    ca = make_test_ca()
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    expected = {}
    not_after = {}

    def cert(name, path, days, **kwargs):
        # Half a day past whole days: days_left (rounded down) is exactly ``days`` however long the run takes.
        not_after[name] = now + datetime.timedelta(days=days) + HALF_DAY
        return write_certificate(str(path), ca, name + '.example.com', not_after[name], **kwargs)

    workstations = {}
    for name, days, status in (('ws-valid', 200, 'valid'), ('ws-expiring', 10, 'expiring'), ('ws-expired', -4, 'expired')):
        path = tmp / name / 'pki' / 'vpn.pem'
        cert(name, path, days)
        workstations[name] = dict(token_certificate_path=str(path))
        expected[name] = status
    # Chosen per host instead of token_certificate_path.
    cert('ws-override', tmp / 'ws-override' / 'elsewhere.pem', 45)
    workstations['ws-override'] = dict(token_certificate_path=str(tmp / 'nowhere.pem'),
                                       report_certificate_path=str(tmp / 'ws-override' / 'elsewhere.pem'))
    expected['ws-override'] = 'valid'
    # 24-hour certificates (step-ca's default) under scep_enroll's renewal window: 30 days, at most a third of the
    # lifetime (8 h), or the host's token_certificate_renew_before
    for name, hours_left, renew_before, status in (('ws-day-fresh', 20, None, 'valid'), ('ws-day-due', 6, None, 'expiring'),
                                                   ('ws-day-share', 10, '50%', 'expiring')):
        path = tmp / name / 'pki' / 'vpn.pem'
        not_after[name] = now + datetime.timedelta(hours=hours_left)
        write_certificate(str(path), ca, name + '.example.com', not_after[name], lifetime=datetime.timedelta(hours=24))
        workstations[name] = dict(token_certificate_path=str(path))
        if renew_before is not None:
            workstations[name]['token_certificate_renew_before'] = renew_before
        expected[name] = status
    workstations['ws-missing'] = dict(token_certificate_path=str(tmp / 'ws-missing' / 'pki' / 'vpn.pem'))
    expected['ws-missing'] = 'missing'
    for host in workstations.values():
        host.update(ansible_connection='local', ansible_python_interpreter=venv_tool('python'))
    workstations['ws-unreachable'] = dict(
        ansible_connection='ssh', ansible_host='127.0.0.1', ansible_port=free_port(), ansible_user='nobody',
        ansible_ssh_common_args='-o ConnectTimeout=5 -o BatchMode=yes -o StrictHostKeyChecking=no '
                                '-o UserKnownHostsFile=/dev/null', token_certificate_path=str(tmp / 'unused.pem'))
    expected['ws-unreachable'] = 'missing'

    devices = tmp / 'device-keys'
    printers = {}
    for index, name in enumerate(('mfp-valid', 'mfp-pending', 'mfp-renewing', 'mfp-broken', 'mfp-default'), start=1):
        printers[name] = dict(ansible_host='192.0.2.%d' % index)
        if name != 'mfp-default':
            printers[name]['device_certificate_dir'] = str(devices / name)
    issued = cert('mfp-valid', devices / 'mfp-valid' / 'cert.pem', 90)
    write_state(str(devices / 'mfp-valid' / 'cert.pem.scep.json'), history=[dict(
        serial_number='%x' % issued.serial_number, subject=issued.subject.rfc4514_string(),
        not_before=issued.not_valid_before_utc.strftime(TIME_FORMAT), not_after=issued.not_valid_after_utc.strftime(TIME_FORMAT),
        fingerprint_sha256='', issued_at=now.strftime(TIME_FORMAT))])
    expected['mfp-valid'] = 'valid'
    write_state(str(devices / 'mfp-pending' / 'cert.pem.scep.json'), pending=pending_request('2026-01-02T03:04:05Z'))
    expected['mfp-pending'] = 'pending'
    cert('mfp-renewing', devices / 'mfp-renewing' / 'cert.pem', 5)
    write_state(str(devices / 'mfp-renewing' / 'cert.pem.scep.json'), pending=pending_request('2026-01-03T00:00:00Z'))
    expected['mfp-renewing'] = 'pending'
    os.makedirs(devices / 'mfp-broken')
    (devices / 'mfp-broken' / 'cert.pem').write_text('this is no certificate\n')
    (devices / 'mfp-broken' / 'cert.pem.scep.json').write_text('{"pending": ')
    expected['mfp-broken'] = 'missing'
    expected['mfp-default'] = 'missing'

    inventory = tmp / 'inventory.yml'
    inventory.write_text(yaml.safe_dump({'all': {'children': {
        'workstations': {'hosts': workstations},
        'printers': {'hosts': printers},
    }}}))
    return dict(tmp=tmp, inventory=str(inventory), expected=expected, not_after=not_after, devices=devices)


@pytest.fixture(scope='module')
def report(fleet):
    """Runs playbooks/report.yml once for the module's tests."""
    out = fleet['tmp'] / 'out'
    env = ansible_env()
    env.update(ANSIBLE_LOCAL_TEMP=str(fleet['tmp'] / 'ansible-local-tmp'), ANSIBLE_REMOTE_TEMP=str(fleet['tmp'] / 'ansible-remote-tmp'))
    completed = subprocess.run(
        [venv_tool('ansible-playbook'), '-i', fleet['inventory'], PLAYBOOK, '-e', 'report_dir=%s' % out],
        cwd=str(fleet['tmp']), env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False, timeout=600)
    output = completed.stdout[-8000:] + completed.stderr[-4000:]
    assert completed.returncode == 0, output
    with open(out / 'fleet-report.json', encoding='utf-8') as data:
        document = json.load(data)
    return dict(json=document, rows=dict((row['host'], row) for row in document['rows']), html=out / 'fleet-report.html',
                stdout=completed.stdout, output=output)


def test_every_host_has_a_row_with_its_status(fleet, report):
    rows = report['rows']
    assert sorted(rows) == sorted(fleet['expected']), report['output']
    assert len(report['json']['rows']) == len(fleet['expected'])
    assert dict((host, row['status']) for host, row in rows.items()) == fleet['expected']
    assert report['json']['warn_days'] == 30
    counts = dict((status, list(fleet['expected'].values()).count(status))
                  for status in ('expired', 'missing', 'pending', 'expiring', 'valid'))
    assert report['json']['summary'] == counts


def test_days_left_and_facts_come_from_the_certificates(fleet, report):
    generated_at = datetime.datetime.strptime(report['json']['generated_at'], TIME_FORMAT).replace(tzinfo=datetime.timezone.utc)
    assert abs(datetime.datetime.now(datetime.timezone.utc) - generated_at) < datetime.timedelta(minutes=10)
    rows = report['rows']
    for host, not_after in fleet['not_after'].items():
        row = rows[host]
        assert row['days_left'] == (not_after - generated_at).days, row
        assert row['not_after'] == not_after.strftime(TIME_FORMAT)
        assert row['subject'] == 'O=tokenfleet test,CN=%s.example.com' % host  # RFC 4514: last RDN first
        assert row['issuer'] == 'CN=tokenfleet test CA'
        assert re.match(r'^[0-9a-f]+$', row['serial'])
        assert re.match(r'^([0-9a-f]{2}:){31}[0-9a-f]{2}$', row['fingerprint_sha256'])
        assert row['expiry_week'] == '%04d-W%02d' % not_after.isocalendar()[:2]
    assert [rows[host]['days_left'] for host in ('ws-valid', 'ws-expiring', 'ws-expired', 'mfp-renewing')] == [200, 10, -4, 5]
    for host in ('ws-valid', 'ws-expiring', 'ws-expired', 'ws-override', 'mfp-valid'):
        assert rows[host]['last_error'] is None, rows[host]


def test_rows_of_hosts_without_a_certificate_say_why(fleet, report):
    rows = report['rows']
    # slurp's own words ("File not found" since ansible-core 2.19, "file not found" before)
    assert rows['ws-missing']['last_error'].lower() == 'file not found: %s' % (fleet['tmp'] / 'ws-missing' / 'pki' / 'vpn.pem')
    assert rows['ws-unreachable']['last_error'].startswith('unreachable: '), rows['ws-unreachable']
    assert 'ssh' in rows['ws-unreachable']['last_error'].lower()
    assert 'PEM' not in rows['ws-unreachable']['last_error'] and ';' not in rows['ws-unreachable']['last_error']
    broken = rows['mfp-broken']['last_error']
    assert '%s: the input is not a PEM certificate' % (fleet['devices'] / 'mfp-broken' / 'cert.pem') in broken, broken
    assert 'state file: ' in broken, broken
    assert rows['mfp-pending']['days_left'] is None and rows['mfp-pending']['subject'] is None
    for host in ('mfp-pending', 'mfp-renewing'):
        assert rows[host]['pending_transaction'] == 'a1' * 20
        assert rows[host]['last_error'] is None, rows[host]
    assert rows['mfp-pending']['pending_since'] == '2026-01-02T03:04:05Z'
    default = os.path.join(REPO_ROOT, 'playbooks', 'device-keys', 'mfp-default', 'cert.pem')
    assert rows['mfp-default']['certificate_path'] == default
    assert rows['mfp-default']['on_controller'] is True and rows['ws-valid']['on_controller'] is False
    assert rows['ws-override']['certificate_path'] == str(fleet['tmp'] / 'ws-override' / 'elsewhere.pem')


def test_printers_are_read_on_the_controller_and_never_contacted(fleet, report):
    recap = dict(re.findall(r'^(\S+)\s+: (ok=.*)$', report['stdout'], re.M))
    for host in fleet['expected']:
        if host.startswith('mfp-'):
            assert 'unreachable=0' in recap[host], recap
    assert 'failed=0' in recap['ws-missing']


def test_rows_are_most_urgent_first(report):
    statuses = [row['status'] for row in report['json']['rows']]
    order = ['expired', 'missing', 'pending', 'expiring', 'valid']
    assert statuses == sorted(statuses, key=order.index)
    valid = [row['days_left'] for row in report['json']['rows'] if row['status'] == 'valid']
    assert valid == sorted(valid)


def test_html_is_self_contained(report):
    page = report['html'].read_text(encoding='utf-8')
    assert page.startswith('<!DOCTYPE html>')
    for reference in ('<link', '@import', 'url(', 'src=', 'http://', 'https://', '<iframe', '<object', '<embed'):
        assert reference not in page, reference
    # Inline only: the rows as JSON and the script that searches, sorts, filters and makes the CSV.
    assert re.findall(r'<script[^>]*>', page) == ['<script type="application/json" id="report-data">', '<script>']


def test_html_loads_in_headless_chromium_and_shows_every_host(fleet, report, tmp_path):
    chromium = shutil.which('chromium') or shutil.which('chromium-browser')
    if chromium is None:
        pytest.fail('chromium is not installed; run "make deps" (Debian package chromium)')
    url = 'file://' + str(report['html'])

    def run(*action):
        command = [chromium, '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
                   '--disable-background-networking', '--disable-component-update', '--disable-sync',
                   '--user-data-dir=%s' % (tmp_path / 'chromium-profile'), '--enable-logging=stderr', '--v=0']
        completed = subprocess.run(command + list(action) + [url], cwd=str(tmp_path), stdin=subprocess.DEVNULL,
                                   capture_output=True, text=True, check=False, timeout=CHROMIUM_TIMEOUT)
        assert completed.returncode == 0, completed.stderr[-4000:]
        for marker in ('Uncaught', 'ERROR:CONSOLE', 'Failed to load resource', 'net::ERR_'):
            assert marker not in completed.stderr, completed.stderr[-4000:]
        return completed

    dom = run('--dump-dom').stdout
    parsed = ReportPage(dom)
    assert dict((host, row['status']) for host, row in parsed.rows.items()) == fleet['expected'], parsed.rows
    assert '<svg id="expiry-chart"' in dom
    bars = dict((column['bar'], column) for column in parsed.bars)
    # One rectangle per status that a bar counts; the bars from the earliest certificate's days left (0: the
    # 24-hour ones) to the latest (ws-valid's 200), one after the other, each holding the certificates of its range.
    for column in parsed.bars:
        assert column['rects'] == len([status for status in ('expired', 'pending', 'expiring', 'valid') if column[status]]), column
        assert column['count'] == sum(column[status] for status in ('expired', 'pending', 'expiring', 'valid')), column
    assert bars['expired']['count'] == 1
    assert sum(column['count'] for column in parsed.bars) == len(fleet['not_after'])
    ranges = [(column['from'], column['to']) for column in parsed.bars if column['bar'] != 'expired']
    assert ranges[0][0] == 0 and ranges[-1][0] <= 200 <= ranges[-1][1], ranges
    assert all(later[0] == earlier[1] + 1 for earlier, later in zip(ranges, ranges[1:])), ranges
    for host, not_after in fleet['not_after'].items():
        days = report['rows'][host]['days_left']
        if days >= 0:
            assert [column for column in parsed.bars if column['bar'] != 'expired' and column['from'] <= days <= column['to']][0]['count'] >= 1
    assert [column['count'] for column in parsed.bars if column['bar'] != 'expired' and column['from'] <= 200 <= column['to']] == [1]

    screenshot = tmp_path / 'fleet-report.png'
    run('--screenshot=%s' % screenshot, '--window-size=1400,1900', '--hide-scrollbars')
    with open(screenshot, 'rb') as image:
        assert image.read(8) == b'\x89PNG\r\n\x1a\n'
    # For people: the last report and its screenshot, in the ignored .tmp directory.
    os.makedirs(SCREENSHOT_COPY, exist_ok=True)
    shutil.copy(screenshot, SCREENSHOT_COPY)
    shutil.copy(report['html'], SCREENSHOT_COPY)


def test_filter_documentation_renders():
    completed = subprocess.run([venv_tool('ansible-doc'), '-t', 'filter', 'tokenfleet.pki.x509_facts'], env=ansible_env(),
                               stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False, timeout=120)
    assert completed.returncode == 0, completed.stderr
    for text in ('days_left', 'fingerprint_sha256', 'on_error', 'EXAMPLES', 'RETURN VALUES'):
        assert text in completed.stdout, text
