# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""bench/fleet_bench.py on a tiny fleet: it runs, writes every figure and renews every host when all are due.
Speed is never asserted here."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from harness import REPO_ROOT
from stepca import missing_tools

KEYS = ['fleet_hosts', 'fleet_forks', 'fleet_repeats', 'rotate_all_due_renewed_hosts',
        'rotate_none_due_seconds', 'ping_none_due_seconds', 'rotate_none_due_to_ping_ratio', 'rotate_none_due_tasks',
        'rotate_all_due_seconds', 'ping_all_due_seconds', 'rotate_all_due_to_ping_ratio', 'rotate_all_due_tasks']


@pytest.mark.slow
def test_fleet_bench_writes_every_figure_and_renews_every_host(tmp_path):
    assert not missing_tools(), 'step-ca missing; run "make deps"'
    output = tmp_path / 'results.json'
    output.write_text(json.dumps({'scep_enroll_seconds_per_enrollment': {'value': 0.5, 'unit': 's'}}))
    completed = subprocess.run([sys.executable, os.path.join(REPO_ROOT, 'bench', 'fleet_bench.py'), '--hosts', '3',
                                '--repeats', '1', '--output', str(output)],
                               cwd=str(tmp_path), capture_output=True, text=True, timeout=600, check=False)
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-4000:]
    results = json.loads(output.read_text())
    assert results['scep_enroll_seconds_per_enrollment']['value'] == 0.5  # the other bench's keys stay
    for key in KEYS:
        assert key in results, key
        assert results[key]['value'] > 0, (key, results[key])
        assert results[key]['unit'] in ('s', 'x', 'count'), (key, results[key])
    assert results['fleet_hosts']['value'] == 3
    assert results['rotate_all_due_renewed_hosts']['value'] == 3
    # everything due: the printer also packs and delivers its bundle
    assert results['rotate_all_due_tasks']['value'] > results['rotate_none_due_tasks']['value']
    assert 'every all-due run renewed all 3 hosts' in completed.stdout
