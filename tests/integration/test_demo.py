# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The demo playbook (make demo): a local step-ca, simulated workstations and printers, a rerun that changes nothing,
a failing host that does not stop the others, and the CA stopped by its PID in every case."""

from __future__ import annotations

import datetime
import json
import os
import re
import socket
import subprocess
import sys
import time

import pytest
from cryptography import x509

from harness import REPO_ROOT, ansible_env, free_port, venv_tool
from report_page import ReportPage
from stepca import issued_certificates, scep_requests

STOP_SCRIPT = os.path.join(REPO_ROOT, 'playbooks', 'files', 'demo-stop-ca.sh')
DEMO_SECRETS = ('secrets/password', 'secrets/challenge', 'secrets/root_ca_key', 'secrets/intermediate_ca_key', 'config/ca.json')


def run_demo(demo_dir, workstations, printers, port, *extra, returncode=0):
    completed = subprocess.run(
        [venv_tool('ansible-playbook'), '-i', 'playbooks/inventory/demo.yml', 'playbooks/demo.yml',
         '-e', 'demo_workstations=%d' % workstations, '-e', 'demo_printers=%d' % printers,
         '-e', 'demo_dir=%s' % demo_dir, '-e', 'demo_scep_port=%d' % port] + list(extra),
        cwd=REPO_ROOT, env=ansible_env(), stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=900,
        check=False)
    output = completed.stdout + completed.stderr
    assert completed.returncode == returncode, completed.stdout[-6000:] + completed.stderr[-3000:]
    return dict(re.findall(r'^((?:ws|mfp)-\d+)\s+: ok=\d+\s+changed=(\d+)', completed.stdout, re.M)), output


def is_demo_stepca(pid, demo_dir):
    """Whether the process ``pid`` is a step-ca serving this demo's ca.json (a PID may have been reused since)."""
    try:
        with open('/proc/%d/cmdline' % pid, 'rb') as cmdline:
            argv = cmdline.read().split(b'\0')[:-1]
    except OSError:
        return False
    config = os.path.join(os.path.realpath(demo_dir), 'ca', 'config', 'ca.json').encode()
    return bool(argv) and os.path.basename(argv[0]) == b'step-ca' and argv[-1] == config


def assert_stepca_stopped(demo_dir, output, port):
    """The step-ca the run started (its PID from the run's output) was stopped by that PID, and nothing serves SCEP."""
    started = [int(pid) for pid in re.findall(r'step-ca \(PID (\d+)\) serves SCEP at http://127\.0\.0\.1:%d/' % port, output)]
    assert len(started) == 1, output[-3000:]
    assert 'stopped step-ca (PID %d)' % started[0] in output
    assert not is_demo_stepca(started[0], demo_dir)
    assert not (demo_dir / 'ca' / 'step-ca.pid').exists()
    with socket.socket() as probe:
        assert probe.connect_ex(('127.0.0.1', port)) != 0


def host_certificate(demo_dir, host):
    name = 'vpn.pem' if host.startswith('ws-') else 'cert.pem'
    return x509.load_pem_x509_certificate((demo_dir / host / name).read_bytes())


def assert_issued_by_demo_ca(demo_dir, hosts):
    """Each host's certificate is one that step-ca issued, under the demo's intermediate, for the configured 90 days."""
    intermediate = x509.load_pem_x509_certificate((demo_dir / 'ca' / 'certs' / 'intermediate_ca.crt').read_bytes())
    root = x509.load_pem_x509_certificate((demo_dir / 'ca' / 'certs' / 'root_ca.crt').read_bytes())
    intermediate.verify_directly_issued_by(root)
    issued = dict((entry.serial, entry) for entry in issued_certificates(demo_dir / 'ca' / 'step-ca.log'))
    for host in hosts:
        certificate = host_certificate(demo_dir, host)
        assert certificate.serial_number in issued, host
        certificate.verify_directly_issued_by(intermediate)
        lifetime = certificate.not_valid_after_utc - certificate.not_valid_before_utc
        assert datetime.timedelta(days=90) <= lifetime <= datetime.timedelta(days=90, minutes=2), (host, lifetime)


def assert_secrets_kept(demo_dir, output):
    """The CA's secrets are in 0600 files, and neither the key password nor the challenge is in the output."""
    for name in DEMO_SECRETS:
        assert oct(os.stat(demo_dir / 'ca' / name).st_mode & 0o777) == '0o600', name
    for name in ('password', 'challenge'):
        secret = (demo_dir / 'ca' / 'secrets' / name).read_text().strip()
        assert len(secret) == 32 and secret not in output, name


def test_demo_provisions_workstations_and_printers_and_rerun_changes_nothing(tmp_path):
    port = free_port()
    first, output = run_demo(tmp_path, 3, 2, port)
    assert sorted(first) == ['mfp-001', 'mfp-002', 'ws-001', 'ws-002', 'ws-003']
    assert all(int(changed) > 0 for changed in first.values())
    assert '3 workstations and 2 printers provisioned; the rerun changed nothing' in output
    for host in ('ws-001', 'ws-002', 'ws-003'):
        assert re.search(r'%s: token %s \(serial [0-9a-f]{16}\) holds vpn and certificate CN=%s.demo.example;' % (host, host, host),
                         output), output[-3000:]
        assert oct(os.stat(tmp_path / host / 'user-pin').st_mode & 0o777) == '0o600'
    for host, address in (('mfp-001', '192.0.2.1'), ('mfp-002', '192.0.2.2')):
        assert re.search(r'%s: CN=%s,O=tokenfleet demo, valid until' % (host, address), output)
        assert (tmp_path / 'printer-bundles' / host / 'bundle.p12').exists()
    assert_stepca_stopped(tmp_path, output, port)
    assert_secrets_kept(tmp_path, output)
    report = json.loads((tmp_path / 'report' / 'fleet-report.json').read_text())
    assert sorted(row['host'] for row in report['rows']) == sorted(first)
    assert set(row['status'] for row in report['rows']) == {'valid'}
    assert (tmp_path / 'report' / 'fleet-report.html').exists()
    # One certificate per host, and no more: the second pass of the run asked the CA for nothing.
    log = tmp_path / 'ca' / 'step-ca.log'
    issued = issued_certificates(log)
    assert len(issued) == len(first)
    assert_issued_by_demo_ca(tmp_path, first)
    requests = len(scep_requests(log, 'PKIOperation'))
    assert requests == len(first)
    # A whole second run, without the report (which is written anew each time): nothing changes, nothing is issued,
    # the CA gets no request.
    port = free_port()
    second, output = run_demo(tmp_path, 3, 2, port, '--skip-tags', 'report')
    assert second == dict((host, '0') for host in first)
    assert issued_certificates(log) == issued
    assert len(scep_requests(log, 'PKIOperation')) == requests
    assert_stepca_stopped(tmp_path, output, port)


def test_demo_goes_on_without_a_failing_host_reports_it_and_fails_at_the_end(tmp_path):
    port = free_port()
    recap, output = run_demo(tmp_path, 2, 2, port, '-e', 'demo_failing_hosts=ws-002,mfp-001', returncode=2)
    assert sorted(recap) == ['mfp-001', 'mfp-002', 'ws-001', 'ws-002']
    # The other hosts were provisioned, twice, by step-ca; the failing ones asked it for nothing.
    assert '1 workstations and 1 printers provisioned; the rerun changed nothing; failed: ws-002, mfp-001' in output
    assert re.search(r'ws-001: token ws-001 \(serial [0-9a-f]{16}\) holds vpn and certificate CN=ws-001.demo.example;'
                     r' first pass changed \d+ task\(s\), second pass 0', output)
    assert re.search(r'mfp-002: CN=192\.0\.2\.2,O=tokenfleet demo, valid until \S+; first pass changed 1, second pass 0', output)
    assert (tmp_path / 'printer-bundles' / 'mfp-002' / 'bundle.p12').exists()
    assert_issued_by_demo_ca(tmp_path, ['ws-001', 'mfp-002'])
    assert len(issued_certificates(tmp_path / 'ca' / 'step-ca.log')) == 2
    assert not (tmp_path / 'ws-002' / 'vpn.pem').exists() and not (tmp_path / 'mfp-001' / 'cert.pem').exists()
    # Each failing host with its reason on screen, and the run's verdict at its very end.
    refused = 'communication error: connection to 127.0.0.1:1 refused (is the SCEP server running?)'
    assert 'ws-002 failed: Certificate from the SCEP CA (enrolled, renewed or left alone): %s' % refused in output
    assert 'mfp-001 failed: Certificate for the device from the SCEP CA (enrolled, renewed or left alone): %s' % refused in output
    verdict = ('2 of 4 hosts failed: ws-002, mfp-001 (the reasons are above and in %s/report/fleet-report.html)'
               % os.path.realpath(tmp_path))
    # ... after the CA was stopped and the report written.
    assert (output.index('stopped step-ca (PID') < output.index('fleet-report.html, fleet-report.json and tokenfleet.prom: 4 hosts')
            < output.index(verdict)), output[-3000:]
    # The report was written, with a row for every host; the failing ones say why.
    report = json.loads((tmp_path / 'report' / 'fleet-report.json').read_text())
    rows = dict((row['host'], row) for row in report['rows'])
    assert sorted(rows) == sorted(recap)
    assert report['summary'] == dict(expired=0, missing=2, pending=0, expiring=0, valid=2)
    for host in ('ws-002', 'mfp-001'):
        assert rows[host]['status'] == 'missing'
        assert rows[host]['failed_at']
        assert rows[host]['last_error'] == 'the last run failed at %s: %s' % (rows[host]['failed_at'], refused)
    for host in ('ws-001', 'mfp-002'):
        assert rows[host]['status'] == 'valid' and rows[host]['last_error'] is None
        assert rows[host]['serial'] == '%x' % host_certificate(tmp_path, host).serial_number
    page = ReportPage((tmp_path / 'report' / 'fleet-report.html').read_text())
    assert dict((host, row['cells'][-1]) for host, row in page.rows.items() if refused in row['cells'][-1]) == \
        dict((host, rows[host]['last_error']) for host in ('ws-002', 'mfp-001'))
    assert sorted(host for host, row in page.rows.items() if row['failed']) == ['mfp-001', 'ws-002']
    assert page.tiles['failed'] == 2
    # The CA was stopped by its PID, also though hosts failed.
    assert_stepca_stopped(tmp_path, output, port)
    assert_secrets_kept(tmp_path, output)


def test_demo_records_a_failure_outside_the_roles_for_the_report(tmp_path):
    # ws-001's token directory cannot be made (a file is in its place): the demo's own first task fails, not the role.
    (tmp_path / 'ws-001').mkdir()
    (tmp_path / 'ws-001' / 'tokens').write_text('not a directory\n')
    port = free_port()
    recap, output = run_demo(tmp_path, 1, 1, port, returncode=2)
    assert sorted(recap) == ['mfp-001', 'ws-001']
    assert '0 workstations and 1 printers provisioned; the rerun changed nothing; failed: ws-001' in output
    assert re.search(r'ws-001 failed: .*tokens', output), output[-3000:]
    record = json.loads((tmp_path / 'ws-001' / 'vpn.pem.error.json').read_text())
    assert record['task'] == 'Token directory of this workstation' and 'tokens' in record['reason']
    rows = dict((row['host'], row) for row in json.loads((tmp_path / 'report' / 'fleet-report.json').read_text())['rows'])
    assert rows['ws-001']['status'] == 'missing'
    assert rows['ws-001']['last_error'] == 'the last run failed at %s: %s' % (record['time'], record['reason'])
    assert rows['mfp-001']['status'] == 'valid'
    assert_stepca_stopped(tmp_path, output, port)


@pytest.mark.parametrize('option, value, message', [
    ('demo_failing_hosts', 'ws-001,ws-009',
     'demo_failing_hosts names ws-009, which the demo does not have (it has ws-001 to ws-002 and no printers)'),
    ('demo_workstations', 'two', 'demo_workstations must be a whole number from 0 to 9999, not two'),
    ('demo_certificate_days', '0', 'demo_certificate_days must be a whole number from 1 to 3650, not 0'),
    ('demo_stepca_binary', '/nonexistent/step-ca', 'demo_stepca_binary: no step-ca program at /nonexistent/step-ca'),
])
def test_demo_refuses_bad_variables_before_any_change(tmp_path, option, value, message):
    demo_dir = tmp_path / 'demo'
    dummy, output = run_demo(demo_dir, 2, 0, free_port(), '-e', '%s=%s' % (option, value), returncode=2)
    assert message in output
    assert not demo_dir.exists()


def test_demo_refuses_a_closed_port_that_is_open(tmp_path):
    demo_dir = tmp_path / 'demo'
    with socket.socket() as listener:
        listener.bind(('127.0.0.1', 0))
        listener.listen()
        open_port = listener.getsockname()[1]
        dummy, output = run_demo(demo_dir, 2, 0, free_port(), '-e', 'demo_failing_hosts=ws-001',
                                 '-e', 'demo_closed_port=%d' % open_port, returncode=2)
    assert 'demo_closed_port %d is open on 127.0.0.1' % open_port in output
    assert not demo_dir.exists()


def stop_script(ca_dir):
    return subprocess.run([STOP_SCRIPT, str(ca_dir)], capture_output=True, text=True, timeout=60, check=False)


def test_stop_script_stops_the_demo_stepca_by_its_pid_and_nothing_else(stepca, tmp_path):
    server = stepca()
    # StepCaServer's layout: its ca.json is <steppath>/config/ca.json, as the demo's is <demo_dir>/ca/config/ca.json.
    ca_dir = server.steppath
    pid_file = os.path.join(ca_dir, 'step-ca.pid')
    # A PID file whose process is another program now (PIDs are reused): that process is left alone.
    other = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)', server.config_path])  # pylint: disable=consider-using-with
    try:
        with open(pid_file, 'w', encoding='ascii') as handle:
            handle.write('%d\n' % other.pid)
        result = stop_script(ca_dir)
        assert (result.returncode, result.stdout, result.stderr) == (0, '', '')
        assert other.poll() is None and server.running
        assert not os.path.exists(pid_file)
    finally:
        other.kill()
        other.wait()
    # The demo's step-ca itself is stopped.
    pid = server.process.pid
    with open(pid_file, 'w', encoding='ascii') as handle:
        handle.write('%d\n' % pid)
    result = stop_script(ca_dir)
    assert (result.returncode, result.stdout, result.stderr) == (0, 'stopped step-ca (PID %d)\n' % pid, '')
    deadline = time.monotonic() + 10
    while server.process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.process.poll() is not None
    assert not os.path.exists(pid_file)
    # No PID file (the playbook already stopped it): nothing to do.
    result = stop_script(ca_dir)
    assert (result.returncode, result.stdout, result.stderr) == (0, '', '')
    # A step-ca of another directory is not this demo's.
    second = stepca()
    with open(pid_file, 'w', encoding='ascii') as handle:
        handle.write('%d\n' % second.process.pid)
    result = stop_script(ca_dir)
    assert (result.returncode, result.stdout) == (0, '')
    assert second.running
