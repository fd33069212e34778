# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The demo playbook (make demo): a local SCEP CA, simulated workstations and printers, and a rerun that changes nothing."""

from __future__ import annotations

import json
import os
import re
import subprocess

from harness import REPO_ROOT, ansible_env, free_port, venv_tool


def run_demo(demo_dir, workstations, printers, port, *extra):
    completed = subprocess.run(
        [venv_tool('ansible-playbook'), '-i', 'playbooks/inventory/demo.yml', 'playbooks/demo.yml',
         '-e', 'demo_workstations=%d' % workstations, '-e', 'demo_printers=%d' % printers,
         '-e', 'demo_dir=%s' % demo_dir, '-e', 'demo_scep_port=%d' % port] + list(extra),
        cwd=REPO_ROOT, env=ansible_env(), stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=900,
        check=False)
    assert completed.returncode == 0, completed.stdout[-6000:] + completed.stderr[-3000:]
    return dict(re.findall(r'^((?:ws|mfp)-\d+)\s+: ok=\d+\s+changed=(\d+)', completed.stdout, re.M)), completed.stdout


def scepserver_running(demo_dir):
    return subprocess.run(['pgrep', '-f', 'scepserver -depot %s' % os.path.realpath(demo_dir)], capture_output=True,
                          check=False).returncode == 0


def test_demo_provisions_workstations_and_printers_and_rerun_changes_nothing(tmp_path):
    first, output = run_demo(tmp_path, 3, 2, free_port())
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
    assert not scepserver_running(tmp_path)
    report = json.loads((tmp_path / 'report' / 'fleet-report.json').read_text())
    assert sorted(row['host'] for row in report['rows']) == sorted(first)
    assert set(row['status'] for row in report['rows']) == {'valid'}
    assert (tmp_path / 'report' / 'fleet-report.html').exists()
    issued = len(os.listdir(tmp_path / 'ca' / 'depot'))
    # A whole second run, without the report (which is written anew each time): nothing changes, nothing is issued.
    second, dummy = run_demo(tmp_path, 3, 2, free_port(), '--skip-tags', 'report')
    assert second == dict((host, '0') for host in first)
    assert len(os.listdir(tmp_path / 'ca' / 'depot')) == issued
    assert not scepserver_running(tmp_path)
