# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The report's modules and files: fleet_report_host (read-only: the four-run pattern is unchanged four times, bad
input names the option), playbooks/report.yml's tokenfleet.prom (promtool, values as in the JSON), files replaced
atomically, nothing written in check mode, no secret of a state file in any output, and the alert rule of
docs/monitoring.md (promtool check rules and test rules on this report's series).

The fleet: workstations (local connection) with a valid certificate and a failure record, one expiring, one
expired, one whose state file holds a pending request (with request and challenge fields an older version kept);
printers (files on the controller, addresses in TEST-NET-1) with a valid certificate and without one.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import re
import shutil
import subprocess

import pytest
import yaml

from harness import CALLBACK_DIR, FOUR_RUN, RECORD_ENV, REPO_ROOT, ansible_env, make_test_ca, module_task, venv_tool
from test_report import HALF_DAY, TIME_FORMAT, write_certificate, write_state

PLAYBOOK = os.path.join(REPO_ROOT, 'playbooks', 'report.yml')
MONITORING = os.path.join(REPO_ROOT, 'docs', 'monitoring.md')
FILES = ('fleet-report.json', 'fleet-report.html', 'tokenfleet.prom')
SECRET = 'state-secret-challenge-7f3a9c'
SAMPLE = re.compile(r'^([a-z_]+)\{([^}]*)\} (-?[0-9.e+]+)$')
STATUSES = ('expired', 'missing', 'pending', 'expiring', 'valid')


def promtool(*args, stdin=None):
    assert shutil.which('promtool'), 'promtool is not installed; run "make deps" (Debian package prometheus)'
    return subprocess.run(['promtool'] + list(args), input=stdin, capture_output=True, text=True, check=False, timeout=120)


def series(text):
    """name -> {frozenset of label pairs: value} of a Prometheus text file (our files have no escapes in labels)."""
    found = {}
    for line in text.splitlines():
        if line.startswith('#') or not line:
            continue
        match = SAMPLE.match(line)
        if match is None:
            name, value = line.split(' ')
            found.setdefault(name, {})[frozenset()] = float(value)
            continue
        labels = frozenset(re.findall(r'(\w+)="([^"]*)"', match.group(2)))
        found.setdefault(match.group(1), {})[labels] = float(match.group(3))
    return found


@pytest.fixture(scope='module')
def fleet(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('report-files')
    ca = make_test_ca()
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    workstations, printers, expected = {}, {}, {}
    for name, days, status in (('ws-failed', 120, 'valid'), ('ws-soon', 12, 'expiring'), ('ws-gone', -3, 'expired'),
                               ('ws-pending', 60, 'pending')):
        path = tmp / name / 'vpn.pem'
        write_certificate(str(path), ca, name + '.example.com', now + datetime.timedelta(days=days) + HALF_DAY)
        workstations[name] = dict(token_certificate_path=str(path), ansible_connection='local',
                                  ansible_python_interpreter=venv_tool('python'))
        expected[name] = status
    (tmp / 'ws-failed' / 'vpn.pem.error.json').write_text(json.dumps(dict(
        time='2026-11-21T03:40:12Z', task='Enroll', reason='communication error: connection refused')))
    write_state(str(tmp / 'ws-pending' / 'vpn.pem.scep.json'), pending=dict(
        transaction_id='b2' * 20, message_type='RenewalReq', request=SECRET, challenge_password=SECRET,
        started_at='2026-11-30T00:00:00Z'))
    for index, (name, days) in enumerate((('mfp-ok', 200), ('mfp-none', None)), start=1):
        directory = tmp / 'device-keys' / name
        directory.mkdir(parents=True)
        if days is not None:
            write_certificate(str(directory / 'cert.pem'), ca, name + '.example.com',
                              now + datetime.timedelta(days=days) + HALF_DAY)
        printers[name] = dict(ansible_host='192.0.2.%d' % index, device_certificate_dir=str(directory))
        expected[name] = 'valid' if days else 'missing'
    inventory = tmp / 'inventory.yml'
    groups = {'workstations': {'hosts': workstations}, 'printers': {'hosts': printers}}
    inventory.write_text(yaml.safe_dump({'all': {'children': groups}}))
    return dict(tmp=tmp, inventory=str(inventory), expected=expected)


def run_report(fleet, out, *args, keep_remote=None):
    """report.yml over the fleet into ``out``; (completed process, recorded results). With ``keep_remote`` (a
    directory) the modules' temp directories on the hosts are kept there (ANSIBLE_KEEP_REMOTE_FILES)."""
    fleet['runs'] = fleet.get('runs', 0) + 1
    record = fleet['tmp'] / ('results-%d.jsonl' % fleet['runs'])
    env = ansible_env()
    env.update(ANSIBLE_LOCAL_TEMP=str(fleet['tmp'] / 'local-tmp'), ANSIBLE_REMOTE_TEMP=str(keep_remote or fleet['tmp'] / 'remote-tmp'),
               ANSIBLE_CALLBACK_PLUGINS=CALLBACK_DIR, ANSIBLE_CALLBACKS_ENABLED='record_results',
               ANSIBLE_KEEP_REMOTE_FILES='1' if keep_remote else '0')
    env[RECORD_ENV] = str(record)
    completed = subprocess.run([venv_tool('ansible-playbook'), '-i', fleet['inventory'], PLAYBOOK, '-e', 'report_dir=%s' % out]
                               + list(args), cwd=str(fleet['tmp']), env=env, stdin=subprocess.DEVNULL, capture_output=True,
                               text=True, check=False, timeout=600)
    assert completed.returncode == 0, completed.stdout[-6000:] + completed.stderr[-3000:]
    with open(record, encoding='utf-8') as lines:
        return completed, [json.loads(line) for line in lines if line.strip()]


@pytest.fixture(scope='module')
def report(fleet):
    out = fleet['tmp'] / 'out'
    remote = fleet['tmp'] / 'kept-remote-tmp'
    completed, records = run_report(fleet, out, '-v', keep_remote=remote)
    with open(out / 'fleet-report.json', encoding='utf-8') as data:
        document = json.load(data)
    modules = sorted(name for dummy, dummy, names in os.walk(remote) for name in names if name.startswith('AnsiballZ_'))
    prom = out / 'tokenfleet.prom'
    return dict(out=out, json=document, rows=dict((row['host'], row) for row in document['rows']), stdout=completed.stdout,
                stderr=completed.stderr, records=records, prom=prom.read_text(encoding='utf-8') if prom.exists() else None,
                modules=modules)


def test_prometheus_file_passes_promtool_and_holds_the_json_values(fleet, report):
    assert report['prom'] is not None, 'no tokenfleet.prom in %s' % report['out']
    checked = promtool('check', 'metrics', stdin=report['prom'])
    assert checked.returncode == 0, checked.stdout + checked.stderr
    for name in ('tokenfleet_certificate_expiry_timestamp_seconds', 'tokenfleet_certificate_expires_in_seconds',
                 'tokenfleet_certificate_status', 'tokenfleet_last_run_failed'):
        assert '# HELP %s ' % name in report['prom'] and '# TYPE %s gauge\n' % name in report['prom'], name
    found = series(report['prom'])
    generated = datetime.datetime.strptime(report['json']['generated_at'], TIME_FORMAT).replace(tzinfo=datetime.timezone.utc)
    assert found['tokenfleet_report_generated_timestamp_seconds'] == {frozenset(): generated.timestamp()}
    assert report['rows'].keys() == fleet['expected'].keys()
    for host, row in report['rows'].items():
        labels = frozenset({('host', host), ('group', row['group'])})
        assert row['status'] == fleet['expected'][host]
        for status in STATUSES:
            assert found['tokenfleet_certificate_status'][labels | {('status', status)}] == (status == row['status']), (host, status)
        assert found['tokenfleet_last_run_failed'][labels] == (host == 'ws-failed')
        if row['not_after'] is None:  # no certificate: no expiry series, but the status series above
            assert labels not in found['tokenfleet_certificate_expiry_timestamp_seconds']
            assert labels not in found['tokenfleet_certificate_expires_in_seconds']
            continue
        not_after = datetime.datetime.strptime(row['not_after'], TIME_FORMAT).replace(tzinfo=datetime.timezone.utc)
        assert found['tokenfleet_certificate_expiry_timestamp_seconds'][labels] == not_after.timestamp()
        left = found['tokenfleet_certificate_expires_in_seconds'][labels]
        assert left == (not_after - generated).total_seconds()
        assert left // 86400 == row['days_left']
    assert len(found['tokenfleet_certificate_status']) == len(STATUSES) * len(fleet['expected'])
    assert report['rows']['ws-failed']['last_run_failed'] is True and report['rows']['ws-soon']['last_run_failed'] is False
    assert report['rows']['mfp-none']['group'] == 'printers'


def test_one_module_call_per_workstation_and_none_for_printers(fleet, report):
    workstations = [host for host in fleet['expected'] if host.startswith('ws-')]
    # every module run leaves its AnsiballZ file (ANSIBLE_KEEP_REMOTE_FILES): one per workstation, nothing else
    assert report['modules'] == ['AnsiballZ_fleet_report_host.py'] * len(workstations)
    # one task per host: its row; the other three tasks run once, on the controller
    rows = [record for record in report['records'] if record['result'].get('row')]
    assert sorted(record['host'] for record in rows) == sorted(fleet['expected'])
    assert len(report['records']) == len(rows) + 3, [record['task'] for record in report['records']]
    for record in rows:
        assert record['status'] == 'ok' and record['changed'] is False, record
    recap = dict(re.findall(r'^(\S+)\s+: (ok=.*)$', report['stdout'], re.M))
    for host in ('mfp-ok', 'mfp-none'):  # their addresses are in TEST-NET-1: a contact would be unreachable
        assert 'unreachable=0' in recap[host] and 'failed=0' in recap[host], recap


def test_no_secret_of_the_state_file_in_any_output(fleet, report):
    assert report['rows']['ws-pending']['pending_transaction'] == 'b2' * 20
    assert report['rows']['ws-pending']['pending_since'] == '2026-11-30T00:00:00Z'
    outputs = [report['stdout'], report['stderr'], json.dumps(report['records'])]
    outputs += [(report['out'] / name).read_text(encoding='utf-8') for name in FILES if (report['out'] / name).exists()]
    # the file as slurp would return it (base64) must not pass through either
    state = base64.b64encode((fleet['tmp'] / 'ws-pending' / 'vpn.pem.scep.json').read_bytes()).decode()
    for text in outputs:
        assert SECRET not in text and state not in text


def test_files_are_replaced_atomically_and_leftovers_removed(fleet, report, tmp_path):
    out = tmp_path / 'atomic'
    run_report(fleet, out)
    before = dict((name, os.stat(out / name)) for name in FILES)
    # temp files a killed run left, named as module_utils/files names them, and another program's file
    leftovers = ['.tokenfleet-%s-abcd1234' % name for name in FILES]
    for name in leftovers + ['.unrelated']:
        (out / name).write_text('half a file')
    run_report(fleet, out)
    for name in FILES:
        after = os.stat(out / name)
        assert after.st_ino != before[name].st_ino, name  # a new file renamed over the old one, not rewritten in place
        assert after.st_mode & 0o7777 == 0o644, name
    assert sorted(os.listdir(out)) == sorted(list(FILES) + ['.unrelated'])
    checked = promtool('check', 'metrics', stdin=(out / 'tokenfleet.prom').read_text(encoding='utf-8'))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_check_mode_writes_nothing(fleet, report, tmp_path):
    out = tmp_path / 'check'
    completed, records = run_report(fleet, out, '--check')
    assert not out.exists(), os.listdir(out)
    files = [record for record in records if record['task'].startswith('Write fleet-report.json')]
    assert len(files) == 1 and files[0]['status'] == 'ok' and files[0]['changed'] is True, files
    assert files[0]['result']['files'] == [str(out / name) for name in FILES]
    assert files[0]['result']['summary'] == report['json']['summary']
    # an existing report stays as it is
    completed, records = run_report(fleet, report['out'], '--check')
    assert json.loads((report['out'] / 'fleet-report.json').read_text(encoding='utf-8')) == report['json']


def test_fleet_report_host_is_read_only_in_the_four_run_pattern(run_playbook, fleet):
    """Read-only: all four runs (check, run, check, run) report changed false, with the same row."""
    args = dict(certificate_path=str(fleet['tmp'] / 'ws-failed' / 'vpn.pem'), now='2026-12-01T00:00:00Z')
    before = sorted(os.listdir(fleet['tmp'] / 'ws-failed'))
    results = run_playbook([module_task('fleet_report_host', name, args, check=name.startswith('check ')) for name in FOUR_RUN])
    records = [results.result(name) for name in FOUR_RUN]
    assert [record['status'] for record in records] == ['ok'] * 4, results.output()
    assert [record['changed'] for record in records] == [False] * 4
    rows = [record['result']['row'] for record in records]
    assert rows == [rows[0]] * 4
    assert rows[0]['host'] == 'localhost' and rows[0]['status'] == 'valid' and rows[0]['days_left'] >= 120
    assert rows[0]['last_error'] == 'the last run failed at 2026-11-21T03:40:12Z: communication error: connection refused'
    assert sorted(os.listdir(fleet['tmp'] / 'ws-failed')) == before


@pytest.mark.parametrize('args, option', [
    (dict(renew_before='soon'), 'renew_before'),
    (dict(now='yesterday'), 'now'),
    (dict(on_controller='perhaps'), 'on_controller'),
    (dict(certificate_path=None), 'certificate_path'),
])
def test_fleet_report_host_bad_input_names_the_option(run_playbook, fleet, args, option):
    task_args = dict(certificate_path=str(fleet['tmp'] / 'ws-soon' / 'vpn.pem'))
    task_args.update(args)
    task_args = dict((key, value) for key, value in task_args.items() if value is not None)
    record = run_playbook([module_task('fleet_report_host', 'bad', task_args)]).result('bad')
    assert record['status'] == 'failed', record
    assert option in record['result']['msg'], record['result']['msg']
    assert 'row' not in record['result']


@pytest.mark.parametrize('args, option', [
    (dict(generated_at='now'), 'generated_at'),
    (dict(warn_days='many'), 'warn_days'),
    (dict(results=None), 'results'),
])
def test_fleet_report_bad_input_names_the_option_and_writes_nothing(run_playbook, tmp_path, args, option):
    dest = tmp_path / 'nothing-here'
    task_args = dict(dest=str(dest), hosts=['localhost'], results='row', generated_at='2026-12-01T00:00:00Z')
    task_args.update(args)
    task_args = dict((key, value) for key, value in task_args.items() if value is not None)
    task = module_task('fleet_report', 'bad', task_args)
    task['vars'] = dict(ansible_search_path=[os.path.join(REPO_ROOT, 'playbooks')])
    record = run_playbook([task]).result('bad')
    assert record['status'] == 'failed', record
    assert option in record['result']['msg'], record['result']['msg']
    assert not dest.exists()


def alert_rules():
    """The ```yaml block of docs/monitoring.md that holds the Prometheus rule groups."""
    with open(MONITORING, encoding='utf-8') as doc:
        blocks = re.findall(r'^```yaml\n(.*?)^```$', doc.read(), re.M | re.S)
    rules = [block for block in blocks if block.startswith('groups:')]
    assert len(rules) == 1, 'docs/monitoring.md should have one ```yaml block starting with groups:'
    return rules[0]


# Which rows each alert of the documented example pages for, in the test fleet.
PAGED = {
    'TokenfleetCertificateExpiresSoon': lambda row: row['days_left'] is not None and row['days_left'] < 14,
    'TokenfleetCertificateMissing': lambda row: row['status'] == 'missing',
    'TokenfleetLastRunFailed': lambda row: row['last_run_failed'],
}


def test_the_documented_alert_rules_are_valid_and_page_for_the_right_hosts(report, tmp_path):
    rules = tmp_path / 'tokenfleet-rules.yml'
    rules.write_text(alert_rules())
    checked = promtool('check', 'rules', str(rules))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    documented = dict((rule['alert'], rule) for group in yaml.safe_load(alert_rules())['groups'] for rule in group['rules']
                      if 'alert' in rule)
    assert set(PAGED) <= set(documented), sorted(documented)
    # The report's series as promtool's input, unchanged for two hours, on a clock that starts at the report's time
    # (promtool's tests start at time 0): timestamps become seconds since generated_at.
    found = series(report['prom'])
    generated = found['tokenfleet_report_generated_timestamp_seconds'][frozenset()]
    samples = []
    for name, values in found.items():
        for labels, value in values.items():
            if name.endswith('_timestamp_seconds'):
                value -= generated
            selector = '%s{%s}' % (name, ','.join('%s="%s"' % pair for pair in sorted(labels)))
            samples.append(dict(series=selector, values='%d+0x120' % value))
    expected = []
    for alert, pages in PAGED.items():
        rule = documented[alert]
        metric = re.match(r'\s*([a-z_]+)', rule['expr']).group(1)
        exp_alerts = []
        for labels in sorted(found[metric], key=sorted):
            row = report['rows'][dict(labels)['host']]
            if pages(row) and (metric != 'tokenfleet_certificate_status' or dict(labels)['status'] == row['status']):
                alert_labels = dict(labels, **rule.get('labels', {}))
                exp_alerts.append(dict(exp_labels=alert_labels, exp_annotations=dict(
                    (key, re.sub(r'\{\{ *\$labels\.(\w+) *\}\}', lambda match: alert_labels[match.group(1)], text))
                    for key, text in rule.get('annotations', {}).items())))
        assert exp_alerts, alert  # the fleet has a host for each alert
        expected.append(dict(eval_time='2h', alertname=alert, exp_alerts=exp_alerts))
    test_file = tmp_path / 'tokenfleet-rules-test.yml'
    test_file.write_text(yaml.safe_dump(dict(rule_files=[str(rules)], evaluation_interval='1m', tests=[dict(
        interval='1m', input_series=samples, alert_rule_test=expected)])))
    tested = promtool('test', 'rules', str(test_file))
    assert tested.returncode == 0, tested.stdout + tested.stderr
