# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The fleet report on the controller: certificate facts (the x509_facts filter), one row per host, the order of the
rows, and the JSON and Prometheus files, each replaced atomically. Private to the collection.

Used by the x509_facts filter, the fleet_report_host action (a host's row) and the fleet_report action (the files).
Every step is linear in the number of hosts: rows are built once each, sorted once, and written once.
"""

from __future__ import annotations

import datetime
import json
import os

from ansible.module_utils.common.text.converters import to_bytes

from ansible_collections.tokenfleet.pki.plugins.module_utils import files
from ansible_collections.tokenfleet.pki.plugins.module_utils import x509 as x509_utils
from ansible_collections.tokenfleet.pki.plugins.module_utils.common import PkiError
from ansible_collections.tokenfleet.pki.plugins.module_utils.renewal_window import RenewBefore, RenewBeforeError, certificate_due

TIME_FORMAT = '%Y-%m-%dT%H:%M:%SZ'
STATUSES = ('expired', 'missing', 'pending', 'expiring', 'valid')
"""Most urgent first: the order of the rows, the summary and the status series."""
FACT_KEYS = ('subject', 'issuer', 'serial', 'not_before', 'not_after', 'days_left', 'expired', 'renewal_due', 'renew_at',
             'expiry_week', 'fingerprint_sha256')
NOT_COLLECTED = "the report could not collect this host's certificate facts"
_BY_DAYS_LEFT = ('expired', 'expiring', 'valid')
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


REPORT_ARGUMENT_SPEC = dict(
    dest=dict(type='path', required=True), hosts=dict(type='list', elements='str', required=True),
    results=dict(type='str', required=True), generated_at=dict(type='str', required=True),
    warn_days=dict(type='int', default=30), chart_weeks=dict(type='int', default=52),
    template=dict(type='str', default='fleet-report.html.j2'))
"""The options of the tokenfleet.pki.fleet_report action (documented in plugins/modules/fleet_report.py)."""
FILE_NAMES = ('fleet-report.json', 'fleet-report.html', 'tokenfleet.prom')


class ReportError(PkiError):
    """Bad input to the report (an option named in the message)."""


def parse_time(value, option='now'):
    """``YYYY-MM-DDTHH:MM:SSZ`` (or a datetime) as an aware UTC datetime; None is the current time."""
    if value is None:
        return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    if isinstance(value, datetime.datetime):
        return value if value.tzinfo else value.replace(tzinfo=datetime.timezone.utc)
    try:
        return datetime.datetime.strptime(str(value), TIME_FORMAT).replace(tzinfo=datetime.timezone.utc)
    except ValueError:
        raise ReportError('%s must look like 2026-01-31T12:00:00Z, got %r' % (option, value))


def renewal_rule(value, option='renew_before'):
    try:
        return RenewBefore(value, option=option)
    except RenewBeforeError as exc:
        raise ReportError(str(exc))


def _certificate(data):
    if not isinstance(data, (str, bytes)):
        raise x509_utils.CertificateError('the input must be PEM text, not %s' % type(data).__name__)
    data = to_bytes(data, errors='surrogate_or_strict')
    if b'-----BEGIN CERTIFICATE-----' not in data:
        raise x509_utils.CertificateError('the input is not a PEM certificate (no -----BEGIN CERTIFICATE----- line)')
    return x509_utils.load_certificate(data, 'the input')


def certificate_facts(data, moment, rule):
    """PEM text -> the x509_facts filter's dictionary; ``error`` holds why ``data`` is no certificate (others None)."""
    try:
        certificate = _certificate(data)
    except x509_utils.CertificateError as exc:
        result = dict((key, None) for key in FACT_KEYS)
        result['error'] = str(exc)
        return result
    facts = x509_utils.certificate_facts(certificate)
    not_after = certificate.not_valid_after_utc
    iso_year, iso_week, dummy = not_after.isocalendar()
    due, renew_at = certificate_due(certificate, moment, rule)
    return dict(
        subject=facts['subject'],
        issuer=facts['issuer'],
        serial=facts['serial_number'],
        not_before=facts['not_before'],
        not_after=facts['not_after'],
        days_left=(not_after - moment).days,
        expired=not_after < moment,
        renewal_due=due,
        renew_at=renew_at.strftime(TIME_FORMAT),
        expiry_week='%04d-W%02d' % (iso_year, iso_week),
        fingerprint_sha256=facts['fingerprint_sha256'],
        error=None,
    )


def _strip_task_failed(message):
    message = str(message or '')
    return message[len('Task failed: '):] if message.startswith('Task failed: ') else message


def host_row(host, group, on_controller, certificate_path, read, moment, rule, unreachable=None, failed=None):
    """The report row of one host from what report_read.read_host_files() found (``read``; None when nothing
    could be read: ``unreachable`` or ``failed`` then says why), judged at ``moment`` under ``rule``."""
    read = read or {}
    pending = read.get('pending', False)
    failure = read.get('failure') or {}
    last_run_failed = read.get('last_run_failed', False)
    certificate = read.get('certificate')
    if unreachable is not None:
        read_error = 'unreachable: ' + _strip_task_failed(unreachable)
    elif failed is not None:
        read_error = _strip_task_failed(failed) or 'the certificate could not be read'
    elif certificate is not None:
        read_error = ''
    elif (pending or last_run_failed) and not read.get('certificate_found'):
        read_error = ''  # not issued yet while a request is pending, or the failed run did not get it: no error
    else:
        read_error = read.get('certificate_error') or 'the certificate could not be read'
    facts = certificate_facts(certificate if certificate is not None else '', moment, rule)
    if pending:
        status = 'pending'
    elif facts['error'] is not None:
        status = 'missing'
    elif facts['expired']:
        status = 'expired'
    elif facts['renewal_due']:
        status = 'expiring'
    else:
        status = 'valid'
    errors = [
        'the last run failed at %s: %s' % (failure.get('time', 'an unknown time'), failure.get('reason', 'no reason recorded'))
        if last_run_failed else '',
        read_error,
        '%s: %s' % (certificate_path, facts['error']) if facts['error'] is not None and certificate is not None else '',
        read.get('state_error') or '',
    ]
    return dict(
        host=host,
        group=group,
        certificate_path=certificate_path,
        on_controller=on_controller,
        subject=facts['subject'],
        issuer=facts['issuer'],
        serial=facts['serial'],
        not_before=facts['not_before'],
        not_after=facts['not_after'],
        days_left=facts['days_left'],
        expiry_week=facts['expiry_week'],
        fingerprint_sha256=facts['fingerprint_sha256'],
        status=status,
        pending_transaction=read.get('pending_transaction') if pending else None,
        pending_since=read.get('pending_since') if pending else None,
        failed_at=failure.get('time'),
        last_error='; '.join(error for error in errors if error) or None,
        last_run_failed=bool(last_run_failed),
    )


def fallback_row(host, reason=None):
    """The row of a host whose per-host task left no row (it did not run for it, or failed: ``reason``)."""
    return dict(host=host, status='missing', last_error=NOT_COLLECTED + (': %s' % reason if reason else ''),
                last_run_failed=False)


def _urgency(row):
    status = row.get('status')
    rank = STATUSES.index(status) if status in STATUSES else len(STATUSES)
    days = row.get('days_left') if status in _BY_DAYS_LEFT and isinstance(row.get('days_left'), int) else 0
    return rank, days, str(row.get('host', '')).lower()


def sort_rows(rows):
    """Most urgent first: expired, missing, pending, expiring, valid; within expired, expiring and valid the fewest
    days left first; then by host name (case-insensitive), in one sort."""
    return sorted(rows, key=_urgency)


def summary(rows):
    counts = dict((status, 0) for status in STATUSES)
    for row in rows:
        counts[row['status']] = counts.get(row['status'], 0) + 1
    return counts


def json_report(generated_at, warn_days, rows):
    """fleet-report.json: generated_at, warn_days, summary and the rows, in that order."""
    document = dict(generated_at=generated_at, warn_days=warn_days, summary=summary(rows), rows=rows)
    return json.dumps(document, indent=4, ensure_ascii=False, separators=(',', ': ')) + '\n'


def _label(value):
    """A Prometheus label value: backslash, double quote and line feed escaped."""
    return str(value).replace('\\', '\\\\').replace('"', '\\"').replace('\n', '\\n')


def _timestamp(text):
    return int((parse_time(text) - _EPOCH).total_seconds())


METRICS = (
    ('tokenfleet_certificate_expiry_timestamp_seconds',
     "When the host's certificate expires (its not_after), as Unix time. Hosts without a readable certificate have none."),
    ('tokenfleet_certificate_expires_in_seconds',
     'Seconds from the report time until the certificate expires (days_left in the JSON report is this in whole days, '
     'rounded down); negative when it has expired.'),
    ('tokenfleet_certificate_status',
     'The status of the host in the fleet report: one series per status, 1 for the current one, 0 for the others.'),
    ('tokenfleet_last_run_failed',
     'Whether the last run of the role on the host failed (it left a failure record): 1, else 0.'),
    ('tokenfleet_report_generated_timestamp_seconds',
     'When the fleet report was made, as Unix time: the moment every value above is computed against.'),
)


def prometheus_text(generated_at, rows):
    """A node_exporter textfile-collector file (Prometheus text format 0.0.4) with the rows' series, host and group
    labels on each; rows in their order, so that a host's series follow the report's order."""
    series = dict((name, []) for name, dummy in METRICS)
    generated = _timestamp(generated_at)
    for row in rows:
        labels = 'host="%s",group="%s"' % (_label(row['host']), _label(row.get('group') or ''))
        if row.get('not_after'):
            series['tokenfleet_certificate_expiry_timestamp_seconds'].append('{%s} %d' % (labels, _timestamp(row['not_after'])))
            series['tokenfleet_certificate_expires_in_seconds'].append(
                '{%s} %d' % (labels, _timestamp(row['not_after']) - generated))
        for status in STATUSES:
            series['tokenfleet_certificate_status'].append(
                '{%s,status="%s"} %d' % (labels, status, 1 if row['status'] == status else 0))
        series['tokenfleet_last_run_failed'].append('{%s} %d' % (labels, 1 if row.get('last_run_failed') else 0))
    series['tokenfleet_report_generated_timestamp_seconds'].append(' %d' % generated)
    lines = []
    for name, help_text in METRICS:
        lines.append('# HELP %s %s' % (name, help_text))
        lines.append('# TYPE %s gauge' % name)
        lines.extend(name + sample for sample in series[name])
    return '\n'.join(lines) + '\n'


def replace_file(path, content, mode=0o644, check_mode=False):
    """Make ``path`` hold ``content`` (bytes or text) with ``mode``, replacing it atomically on the controller; True
    when anything changed (in check mode: would change; nothing is written).

    As module_utils/files writes on hosts: files.stage() makes a temp file in the same directory with the mode,
    the content and an fsync, then a rename puts it in place and the directory is synced, so a reader
    (node_exporter, a web server) sees the old file or the new one, never a part. Temp files a killed run left
    for ``path`` are removed first.
    """
    content = to_bytes(content)
    try:
        with open(path, 'rb') as current:
            same = current.read() == content
            same_mode = (os.fstat(current.fileno()).st_mode & 0o7777) == mode
    except FileNotFoundError:
        same = same_mode = False
    except OSError as exc:
        raise ReportError('%s cannot be read: %s' % (path, exc.strerror or exc))
    if same and same_mode:
        return False
    if check_mode:
        return True
    try:
        if same:
            os.chmod(path, mode)
            return True
        files.check_destination(path, 'the report file')
        files.remove_leftovers(path)
        tmp_path = files.stage(path, content, mode)
    except OSError as exc:
        raise ReportError('%s cannot be written: %s' % (path, exc.strerror or exc))
    try:
        os.replace(tmp_path, path)
    except OSError as exc:
        os.unlink(tmp_path)
        raise ReportError('%s cannot be written: %s' % (path, exc.strerror or exc))
    files.fsync_directory(path)
    return True
