# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""bench/report_bench.py on a tiny fleet: it runs report.yml, the ping floor and a baseline revision's report.yml,
checks their reports and writes every figure. Speed is never asserted here."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from harness import REPO_ROOT

KEYS = ['report_bench_forks', 'report_bench_repeats', 'report_4_report_seconds', 'report_4_report_to_ping_ratio',
        'report_4_baseline_seconds', 'report_4_baseline_to_ping_ratio', 'report_4_ping_seconds',
        'report_4_workstations_to_ping_ratio', 'report_4_printers_to_ping_ratio']


@pytest.mark.slow
def test_report_bench_writes_every_figure(tmp_path):
    output = tmp_path / 'results.json'
    output.write_text(json.dumps({'fleet_hosts': {'value': 100, 'unit': 'count'}}))
    completed = subprocess.run([sys.executable, os.path.join(REPO_ROOT, 'bench', 'report_bench.py'), '--sizes', '4',
                                '--repeats', '1', '--split', '--baseline-ref', 'HEAD', '--output', str(output)],
                               cwd=str(tmp_path), capture_output=True, text=True, timeout=900, check=False)
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-4000:]
    results = json.loads(output.read_text())
    assert results['fleet_hosts']['value'] == 100  # the other bench's keys stay
    for key in KEYS:
        assert key in results, key
        assert results[key]['value'] > 0, (key, results[key])
        assert results[key]['unit'] in ('s', 'x', 'count'), (key, results[key])
    assert '4 hosts (3 workstations, 1 printers)' in completed.stdout
    # the per-step times of both playbooks are printed
    assert 'steps of report.yml' in completed.stdout and 'steps of HEAD' in completed.stdout
    assert 'Write fleet-report.json, fleet-report.html and tokenfleet.prom' in completed.stdout
    for step in ('collect', 'sort', 'json', 'html', 'prometheus', 'write'):  # the controller steps fleet_report times
        assert 'tokenfleet.prom, most urgent hosts first / %s' % step in completed.stdout, step
