# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The demo playbook (make demo) provisions simulated workstations, and a rerun changes nothing."""

from __future__ import annotations

import os
import re
import subprocess

from harness import REPO_ROOT, ansible_env, venv_tool


def run_demo(demo_dir, workstations):
    completed = subprocess.run(
        [venv_tool('ansible-playbook'), '-i', 'playbooks/inventory/demo.yml', 'playbooks/demo.yml',
         '-e', 'demo_workstations=%d' % workstations, '-e', 'demo_dir=%s' % demo_dir],
        cwd=REPO_ROOT, env=ansible_env(), stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=900,
        check=False)
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-4000:]
    return dict(re.findall(r'^(ws-\d+)\s+: ok=\d+\s+changed=(\d+)', completed.stdout, re.M)), completed.stdout


def test_demo_provisions_workstations_and_rerun_changes_nothing(tmp_path):
    first, output = run_demo(tmp_path, 5)
    assert sorted(first) == ['ws-001', 'ws-002', 'ws-003', 'ws-004', 'ws-005']
    assert all(int(changed) > 0 for changed in first.values())
    assert '5 workstations provisioned; the rerun changed nothing' in output
    for host in first:
        assert re.search(r'%s: token %s \(serial [0-9a-f]{16}\) holds (signing/rsa, vpn/ec|vpn/ec, signing/rsa)' % (host, host),
                         output)
        assert oct(os.stat(tmp_path / host / 'user-pin').st_mode & 0o777) == '0o600'
    second, dummy = run_demo(tmp_path, 5)
    assert second == dict((host, '0') for host in first)
