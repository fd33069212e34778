# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The fleet report's engine (module_utils/fleet_report.py, report_read.py): the rows' order, the Prometheus text,
the files' atomic replacement and what is read of a state file and a failure record."""

from __future__ import annotations

import json
import os
import stat

import pytest

from ansible_collections.tokenfleet.pki.plugins.module_utils import fleet_report
from ansible_collections.tokenfleet.pki.plugins.module_utils.report_read import read_host_files

GENERATED = '2026-12-01T00:00:00Z'


def row(host, status, days_left=None, not_after=None, group='workstations', last_run_failed=False):
    return dict(host=host, group=group, status=status, days_left=days_left, not_after=not_after,
                last_run_failed=last_run_failed, failed_at=None, last_error=None)


def test_rows_most_urgent_first_then_days_left_then_host_case_insensitively():
    rows = [row('b-valid', 'valid', 300), row('A-valid', 'valid', 300), row('c-valid', 'valid', 20),
            row('z-missing', 'missing'), row('a-missing', 'missing'), row('p', 'pending', 5),
            row('old', 'expired', -2), row('older', 'expired', -30), row('soon', 'expiring', 3),
            row('odd', 'unknown')]
    assert [entry['host'] for entry in fleet_report.sort_rows(rows)] == [
        'older', 'old', 'a-missing', 'z-missing', 'p', 'soon', 'c-valid', 'A-valid', 'b-valid', 'odd']


def test_summary_counts_every_status_also_the_absent_ones():
    assert fleet_report.summary([row('a', 'valid', 3), row('b', 'valid', 4), row('c', 'missing')]) == dict(
        expired=0, missing=1, pending=0, expiring=0, valid=2)


def test_prometheus_text_has_help_type_and_one_status_series_per_status():
    rows = [row('ws-1', 'expiring', 9, '2026-12-10T12:00:00Z', last_run_failed=True),
            row('mfp "lobby"\\1', 'missing', group='printers')]
    text = fleet_report.prometheus_text(GENERATED, rows)
    lines = text.splitlines()
    assert text.endswith('\n')
    names = [line.split()[2] for line in lines if line.startswith('# TYPE ')]
    assert names == ['tokenfleet_certificate_expiry_timestamp_seconds', 'tokenfleet_certificate_expires_in_seconds',
                     'tokenfleet_certificate_status', 'tokenfleet_last_run_failed',
                     'tokenfleet_report_generated_timestamp_seconds']
    assert all(line.endswith(' gauge') for line in lines if line.startswith('# TYPE '))
    assert 'tokenfleet_certificate_expiry_timestamp_seconds{host="ws-1",group="workstations"} 1796904000' in lines
    assert 'tokenfleet_certificate_expires_in_seconds{host="ws-1",group="workstations"} %d' % (9.5 * 86400) in lines
    assert 'tokenfleet_certificate_status{host="ws-1",group="workstations",status="expiring"} 1' in lines
    assert 'tokenfleet_certificate_status{host="ws-1",group="workstations",status="valid"} 0' in lines
    assert 'tokenfleet_last_run_failed{host="ws-1",group="workstations"} 1' in lines
    # a label value with a quote and a backslash is escaped; no certificate: status series only
    printer = 'host="mfp \\"lobby\\"\\\\1",group="printers"'
    assert 'tokenfleet_certificate_status{%s,status="missing"} 1' % printer in lines
    assert not [line for line in lines if printer in line and line.startswith(('tokenfleet_certificate_expir',))]
    assert 'tokenfleet_last_run_failed{%s} 0' % printer in lines
    assert 'tokenfleet_report_generated_timestamp_seconds 1796083200' in lines


def test_replace_file_renames_a_new_file_over_the_old_and_removes_leftovers(tmp_path):
    path = tmp_path / 'tokenfleet.prom'
    path.write_text('old\n')
    old_inode = path.stat().st_ino
    leftover = tmp_path / '.tokenfleet-tokenfleet.prom-abcdefgh'
    leftover.write_text('half')
    other = tmp_path / '.tokenfleet-fleet-report.json-abcdefgh'
    other.write_text('belongs to another file')
    assert fleet_report.replace_file(str(path), 'new\n', 0o644) is True
    assert path.read_text() == 'new\n' and path.stat().st_ino != old_inode
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert sorted(os.listdir(tmp_path)) == ['.tokenfleet-fleet-report.json-abcdefgh', 'tokenfleet.prom']
    inode = path.stat().st_ino
    assert fleet_report.replace_file(str(path), 'new\n', 0o644) is False
    assert path.stat().st_ino == inode


def test_replace_file_in_check_mode_writes_nothing(tmp_path):
    path = tmp_path / 'fleet-report.json'
    assert fleet_report.replace_file(str(path), '{}\n', 0o644, check_mode=True) is True
    assert os.listdir(tmp_path) == []


def test_read_host_files_returns_no_secret_of_the_state_file_or_record(tmp_path):
    certificate = tmp_path / 'vpn.pem'
    (tmp_path / 'vpn.pem.scep.json').write_text(json.dumps(dict(version=1, history=[], pending=dict(
        transaction_id='ab' * 20, started_at='2026-11-30T00:00:00Z', request='SECRET-REQUEST', challenge='SECRET-CHALLENGE'))))
    (tmp_path / 'vpn.pem.error.json').write_text(json.dumps(dict(
        time='2026-11-30T01:00:00Z', task='Enroll', reason='refused', extra='SECRET-EXTRA')))
    read = read_host_files(str(certificate), str(certificate) + '.scep.json', str(certificate) + '.error.json')
    assert 'SECRET' not in json.dumps(read)
    assert read['pending'] is True and read['pending_transaction'] == 'ab' * 20
    assert read['failure'] == dict(time='2026-11-30T01:00:00Z', task='Enroll', reason='refused')
    assert read['certificate'] is None and read['certificate_error'] == 'File not found: %s' % certificate


def test_read_host_files_reports_broken_files_as_text(tmp_path):
    certificate = tmp_path / 'cert.pem'
    certificate.mkdir()
    (tmp_path / 'cert.pem.scep.json').write_text('{"pending": ')
    (tmp_path / 'cert.pem.error.json').write_text('not json')
    read = read_host_files(str(certificate), str(certificate) + '.scep.json', str(certificate) + '.error.json')
    assert read['certificate_error'] == 'Source is a directory and must be a file: %s' % certificate
    assert read['state_error'].startswith('state file %s.scep.json is not a scep_enroll state file: ' % certificate)
    assert read['last_run_failed'] is False and read['failure'] == {}


@pytest.mark.parametrize('value, option', [('2026-12-01', 'generated_at'), ('tomorrow', 'now')])
def test_bad_times_name_the_option(value, option):
    with pytest.raises(fleet_report.ReportError, match=option):
        fleet_report.parse_time(value, option)
