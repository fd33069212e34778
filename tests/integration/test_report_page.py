# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The fleet report page as an operator uses it, in headless Chromium driven by Playwright (Debian's chromium, no
browser download, every request that is not file:// aborted and recorded): search, sort, status and group filters,
the failed-run tile, compact rows, the CSV download, the page with scripting off, and a chart that agrees with the
tiles and spans the fleet's real range. Certificate and record text is escaped wherever it appears.

The fleet (report.yml, local connection): workstations with certificates valid for 200, 120 and 300 days, one
expiring in 10 days, one expired 3 days ago, one without a certificate, one whose subject holds markup and a script;
two of them have a failure record (one of those with a certificate still valid, and with markup in the reason);
printers read on the controller: one valid for 90 days, one pending its first enrollment, one expiring in 5 days
whose last run failed. Larger fleets for the chart and the row height are fabricated rows rendered with the same
template (report_page.render_page)."""

from __future__ import annotations

import csv
import datetime
import io
import json
import os
import re
import subprocess

import pytest
import yaml

from harness import REPO_ROOT, ansible_env, make_test_ca, venv_tool
from report_page import (CHROMIUM, STATUS_ORDER, TIME_FORMAT, ReportPage, chromium, fabricate_rows, offline_context,
                         pending_request, render_page, write_certificate, write_state)

PLAYBOOK = os.path.join(REPO_ROOT, 'playbooks', 'report.yml')
# The columns of the CSV: the fields of a fleet-report.json row, in the order report.yml documents them.
FIELDS = ['host', 'group', 'certificate_path', 'on_controller', 'subject', 'issuer', 'serial', 'not_before', 'not_after',
          'days_left', 'expiry_week', 'fingerprint_sha256', 'status', 'pending_transaction', 'pending_since', 'failed_at',
          'last_error']
HALF_DAY = datetime.timedelta(hours=12)
SCRIPT_SUBJECT_CN = '<script>window.pwned=1</script>'
SCRIPT_SUBJECT_O = '</script><img src=x onerror=pwned()>'
HOSTILE_REASON = 'server said <img src=x onerror="window.pwned=2"> & gave up'
CHARTED = ('expired', 'pending', 'expiring', 'valid')


def failure_record(path, time, reason):
    with open(path, 'w', encoding='utf-8') as output:
        json.dump(dict(time=time, task='Enroll', reason=reason), output)


@pytest.fixture(scope='module')
def fleet_report(tmp_path_factory):
    """Runs report.yml over the fleet above; the page's path and the JSON rows by host."""
    tmp = tmp_path_factory.mktemp('page-fleet')
    ca = make_test_ca()
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    failed_at = (now - datetime.timedelta(hours=3)).strftime(TIME_FORMAT)
    workstations = {}
    for name, days in (('ws-alpha', 200), ('ws-bravo', 120), ('ws-charlie', 10), ('ws-delta', -3), ('ws-echo', None),
                       ('ws-hotel', 300), ('ws-markup', 60)):
        path = tmp / name / 'vpn.pem'
        os.makedirs(path.parent)
        if days is not None:
            if name == 'ws-markup':
                write_certificate(str(path), ca, SCRIPT_SUBJECT_CN, now + datetime.timedelta(days=days) + HALF_DAY,
                                  organization=SCRIPT_SUBJECT_O)
            else:
                write_certificate(str(path), ca, name + '.example.com', now + datetime.timedelta(days=days) + HALF_DAY)
        workstations[name] = dict(token_certificate_path=str(path), ansible_connection='local',
                                  ansible_python_interpreter=venv_tool('python'))
    failure_record(str(tmp / 'ws-bravo' / 'vpn.pem.error.json'), failed_at, HOSTILE_REASON)
    failure_record(str(tmp / 'ws-echo' / 'vpn.pem.error.json'), failed_at, 'the token is not there')
    printers = {}
    for index, (name, days) in enumerate((('mfp-1', 90), ('mfp-2', None), ('mfp-3', 5)), start=1):
        directory = tmp / 'device-keys' / name
        os.makedirs(directory)
        printers[name] = dict(ansible_host='192.0.2.%d' % index, device_certificate_dir=str(directory))
        if days is not None:
            write_certificate(str(directory / 'cert.pem'), ca, name, now + datetime.timedelta(days=days) + HALF_DAY)
    write_state(str(tmp / 'device-keys' / 'mfp-2' / 'cert.pem.scep.json'), pending=pending_request(failed_at))
    failure_record(str(tmp / 'device-keys' / 'mfp-3' / 'cert.pem.error.json'), failed_at,
                   'communication error: connection to ca.example.com:80 refused')
    inventory = tmp / 'inventory.yml'
    groups = {'workstations': {'hosts': workstations}, 'printers': {'hosts': printers}}
    inventory.write_text(yaml.safe_dump({'all': {'children': groups}}))
    out = tmp / 'out'
    env = ansible_env()
    env.update(ANSIBLE_LOCAL_TEMP=str(tmp / 'ansible-local-tmp'), ANSIBLE_REMOTE_TEMP=str(tmp / 'ansible-remote-tmp'))
    completed = subprocess.run([venv_tool('ansible-playbook'), '-i', str(inventory), PLAYBOOK, '-e', 'report_dir=%s' % out],
                               cwd=str(tmp), env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                               check=False, timeout=600)
    assert completed.returncode == 0, completed.stdout[-8000:] + completed.stderr[-4000:]
    document = json.loads((out / 'fleet-report.json').read_text(encoding='utf-8'))
    rows = dict((row['host'], row) for row in document['rows'])
    assert dict((host, row['status']) for host, row in rows.items()) == {
        'ws-alpha': 'valid', 'ws-bravo': 'valid', 'ws-charlie': 'expiring', 'ws-delta': 'expired', 'ws-echo': 'missing',
        'ws-hotel': 'valid', 'ws-markup': 'valid', 'mfp-1': 'valid', 'mfp-2': 'pending', 'mfp-3': 'expiring'}
    return dict(html=out / 'fleet-report.html', url='file://%s' % (out / 'fleet-report.html'), rows=rows,
                order=[row['host'] for row in document['rows']], document=document, tmp=tmp)


@pytest.fixture(scope='module')
def browser():
    """One headless Chromium for the module's tests; each test gets contexts of its own."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail('%s is not installed; run "make deps" (Debian package chromium)' % CHROMIUM)
    with chromium() as launched:
        yield launched


@pytest.fixture
def browser_page(browser, fleet_report):
    """The report in a 1400 x 1000 px page with scripting on; asserts afterwards that no script error happened and that
    the page asked for nothing but file:// URLs."""
    with offline_context(browser, viewport={'width': 1400, 'height': 1000}) as (context, blocked):
        page = context.new_page()
        errors = []
        page.on('pageerror', lambda error: errors.append(str(error)))
        page.on('console', lambda message: errors.append(message.text) if message.type == 'error' else None)
        page.goto(fleet_report['url'])
        yield page
        assert errors == []
        assert blocked == []


def shown_hosts(page):
    return page.eval_on_selector_all('#hosts tbody tr[data-host]', 'rows => rows.filter(row => row.offsetParent !== null)'
                                                                   '.map(row => row.dataset.host)')


def test_the_page_asks_for_nothing_but_its_file(browser, fleet_report):
    """Loaded and used (search, sort, filter, CSV), the page requests nothing; the guard that would have caught it does
    see a request that is not file://, so its empty list means none was made."""
    with offline_context(browser) as (context, blocked):
        page = context.new_page()
        page.goto(fleet_report['url'])
        page.fill('#search', 'ws-')
        page.click('#hosts thead th[data-key=host] button')
        page.select_option('#status-filter', 'valid')
        with page.expect_download():
            page.click('#csv')
        assert blocked == []
        assert page.evaluate('fetch("http://127.0.0.1:9/probe").then(() => "loaded", () => "blocked")') == 'blocked'
        assert blocked == ['http://127.0.0.1:9/probe']


def test_typing_a_host_name_leaves_that_row(fleet_report, browser_page):
    page = browser_page
    assert shown_hosts(page) == fleet_report['order']
    page.locator('input[type=search]').press_sequentially('ws-bra')
    assert shown_hosts(page) == ['ws-bravo']
    assert page.inner_text('#shown') == '1 of 10 hosts'
    page.fill('#search', '')
    assert shown_hosts(page) == fleet_report['order']


def test_search_finds_subject_issuer_and_error(fleet_report, browser_page):
    page = browser_page
    rows = fleet_report['rows']
    page.fill('#search', 'window.pwned=1')
    assert shown_hosts(page) == ['ws-markup']
    page.fill('#search', 'CN=tokenfleet test CA')
    assert sorted(shown_hosts(page)) == sorted(host for host, row in rows.items() if row['issuer'])
    page.fill('#search', 'REFUSED')
    assert shown_hosts(page) == ['mfp-3']
    page.fill('#search', 'token is not')
    assert shown_hosts(page) == ['ws-echo']
    page.fill('#search', 'ws- valid-for-nobody')
    assert shown_hosts(page) == []
    assert page.inner_text('#shown') == '0 of 10 hosts'


def test_a_header_click_sorts(fleet_report, browser_page):
    page = browser_page
    rows = fleet_report['rows']
    page.click('#hosts thead th[data-key=days_left] button')
    with_days = sorted((host for host in rows if rows[host]['days_left'] is not None),
                       key=lambda host: (rows[host]['days_left'], fleet_report['order'].index(host)))
    without = [host for host in fleet_report['order'] if rows[host]['days_left'] is None]
    assert shown_hosts(page) == with_days + without
    assert page.get_attribute('#hosts thead th[data-key=days_left]', 'aria-sort') == 'ascending'
    page.click('#hosts thead th[data-key=days_left] button')
    assert shown_hosts(page) == sorted(with_days, key=lambda host: -rows[host]['days_left']) + without
    assert page.get_attribute('#hosts thead th[data-key=days_left]', 'aria-sort') == 'descending'
    page.click('#hosts thead th[data-key=host] button')
    assert shown_hosts(page) == sorted(rows)
    assert page.get_attribute('#hosts thead th[data-key=days_left]', 'aria-sort') is None
    page.click('#hosts thead th[data-key=status] button')
    assert [rows[host]['status'] for host in shown_hosts(page)] == sorted((row['status'] for row in rows.values()), key=STATUS_ORDER.index)
    # Sorting keeps the search.
    page.fill('#search', 'mfp')
    page.click('#hosts thead th[data-key=not_after] button')
    assert shown_hosts(page) == ['mfp-3', 'mfp-1', 'mfp-2']


def test_the_status_and_group_filters_work(fleet_report, browser_page):
    page = browser_page
    rows = fleet_report['rows']
    for status in STATUS_ORDER:
        page.select_option('#status-filter', status)
        assert shown_hosts(page) == [host for host in fleet_report['order'] if rows[host]['status'] == status], status
    page.select_option('#status-filter', 'failed')
    assert shown_hosts(page) == ['ws-echo', 'mfp-3', 'ws-bravo']
    page.select_option('#group-filter', 'printers')
    assert shown_hosts(page) == ['mfp-3']
    page.select_option('#status-filter', '')
    assert shown_hosts(page) == [host for host in fleet_report['order'] if host.startswith('mfp-')]
    page.select_option('#group-filter', 'workstations')
    page.fill('#search', 'ws-alpha')
    assert shown_hosts(page) == ['ws-alpha']


def test_the_failed_run_tile_counts_right_and_filters(fleet_report, browser_page):
    page = browser_page
    failed = [host for host in fleet_report['order'] if fleet_report['rows'][host]['failed_at']]
    assert sorted(failed) == ['mfp-3', 'ws-bravo', 'ws-echo']
    tile = page.locator('.tile[data-filter=failed]')
    assert tile.inner_text().split() == ['3', 'Last', 'run', 'failed']
    # A failed run whose certificate is still valid is marked on its row.
    marker = page.locator('tr[data-host=ws-bravo] .badge.run-failed')
    assert marker.inner_text() == 'run failed' and marker.is_visible()
    assert page.locator('tr.failed').evaluate_all('rows => rows.map(row => row.dataset.host)') == failed
    tile.click()
    assert shown_hosts(page) == failed
    assert page.input_value('#status-filter') == 'failed'
    for status in STATUS_ORDER:
        count = len([row for row in fleet_report['rows'].values() if row['status'] == status])
        assert page.inner_text('.tile[data-filter=%s] strong' % status) == str(count)
    tile.click()
    assert shown_hosts(page) == fleet_report['order']


def test_the_group_counts(fleet_report):
    shown = ReportPage(fleet_report['html'].read_text(encoding='utf-8'))
    assert shown.groups == {'printers': [3, 0, 0, 1, 1, 1, 1], 'workstations': [7, 1, 1, 0, 1, 4, 2]}


def test_the_csv_download_holds_the_rows_shown(fleet_report, browser_page):
    page = browser_page
    fields = FIELDS

    def download():
        with page.expect_download() as info:
            page.click('#csv')
        with open(info.value.path(), encoding='utf-8', newline='') as data:
            content = data.read()
        assert info.value.suggested_filename == 'fleet-report-%s.csv' % re.sub(r'[^0-9TZ]', '', fleet_report['document']['generated_at'])
        return list(csv.reader(io.StringIO(content)))

    def as_text(value):
        return '' if value is None else str(value).lower() if isinstance(value, bool) else str(value)

    table = download()
    assert table[0] == fields
    assert table[1:] == [[as_text(fleet_report['rows'][host][field]) for field in fields] for host in fleet_report['order']]
    markup = table[1 + fleet_report['order'].index('ws-markup')]
    assert markup[fields.index('subject')] == fleet_report['rows']['ws-markup']['subject']
    page.select_option('#group-filter', 'printers')
    page.click('#hosts thead th[data-key=host] button')
    assert [line[0] for line in download()[1:]] == ['mfp-1', 'mfp-2', 'mfp-3']


def test_the_csv_neutralises_formulas(browser, tmp_path):
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    rows = fabricate_rows(3, now)
    rows[0]['subject'] = '=HYPERLINK("http://example.invalid","x"),CN=a'
    rows[1]['last_error'] = '@SUM(1)'
    path = _write(rows, now, str(tmp_path))
    with offline_context(browser) as (context, blocked):
        page = context.new_page()
        page.goto('file://%s' % path)
        with page.expect_download() as info:
            page.click('#csv')
        with open(info.value.path(), encoding='utf-8', newline='') as data:
            table = list(csv.DictReader(data))
        assert blocked == []
    assert table[0]['subject'] == "'" + rows[0]['subject']
    assert table[1]['last_error'] == "'@SUM(1)"
    assert [line['days_left'] for line in table] == [str(row['days_left']) if row['days_left'] is not None else '' for row in rows]


def _write(rows, now, directory, **kwargs):
    path = os.path.join(directory, 'fleet-report.html')
    with open(path, 'w', encoding='utf-8') as output:
        output.write(render_page(rows, now.strftime(TIME_FORMAT), **kwargs))
    return path


def test_with_scripting_off_every_host_row_the_tiles_and_the_chart_show(browser, fleet_report):
    with offline_context(browser, java_script_enabled=False, viewport={'width': 1400, 'height': 1000}) as (context, blocked):
        page = context.new_page()
        page.goto(fleet_report['url'])
        assert shown_hosts(page) == fleet_report['order']
        for host, row in fleet_report['rows'].items():
            assert page.inner_text('tr[data-host="%s"] td:first-child' % host) == host
            assert page.inner_text('tr[data-host="%s"] td.error' % host) == (row['last_error'] or '')
        assert page.inner_text('.tile[data-filter=failed] strong') == '3'
        assert page.locator('#expiry-chart g.bar').count() >= 2 and page.locator('#expiry-chart rect').count() >= 5
        assert not page.is_visible('#search') and not page.is_visible('#csv')
        assert page.evaluate('document.documentElement.className') == 'noscript'
        assert blocked == []


def test_rows_are_compact(fleet_report, browser_page):
    """Every row of the report, also those with long errors, is at most 50 px high: 20 to a 1,000-px screen."""
    heights = browser_page.eval_on_selector_all('#hosts tbody tr', 'rows => rows.map(row => row.getBoundingClientRect().height)')
    assert len(heights) == 10 and max(heights) <= 50, heights


def test_a_thousand_hosts_fill_a_screen_with_at_least_20_rows(browser, tmp_path):
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    rows = fabricate_rows(1000, now)
    path = _write(rows, now, str(tmp_path))
    with offline_context(browser, viewport={'width': 1400, 'height': 1000}) as (context, blocked):
        page = context.new_page()
        page.goto('file://%s' % path)
        page.evaluate('document.getElementById("hosts").tBodies[0].rows[0].scrollIntoView({block: "start"})')
        on_screen = page.evaluate('Array.from(document.querySelectorAll("#hosts tbody tr")).filter(row => {'
                                  ' const box = row.getBoundingClientRect(); return box.top >= 0 && box.bottom <= innerHeight; }).length')
        assert on_screen >= 20, on_screen
        page.fill('#search', rows[500]['host'])
        assert shown_hosts(page) == [rows[500]['host']]
        assert blocked == []


def chart_agrees_with_tiles(shown, rows):
    """The bars' status segments add up to the tiles; every certificate is in the bar of its days left."""
    for status in ('expired', 'expiring', 'valid'):
        assert sum(column[status] for column in shown.bars) == shown.tiles[status], status
    pending_with_certificate = [row for row in rows if row['status'] == 'pending' and row['days_left'] is not None]
    assert sum(column['pending'] for column in shown.bars) == len(pending_with_certificate)
    assert sum(column['count'] for column in shown.bars) == len([row for row in rows if row['days_left'] is not None])
    for column in shown.bars:
        assert column['count'] == sum(column[status] for status in CHARTED)
    for row in rows:
        if row['days_left'] is not None and row['days_left'] >= 0:
            covering = [column for column in shown.bars if column['bar'] == 'later' and row['days_left'] >= column['from']
                        or column['bar'] not in ('later', 'expired') and column['from'] <= row['days_left'] <= column['to']]
            assert len(covering) == 1, row


def test_the_chart_agrees_with_the_tiles_in_the_browser(fleet_report, browser_page):
    shown = ReportPage(browser_page.content())
    rows = list(fleet_report['rows'].values())
    chart_agrees_with_tiles(shown, rows)
    assert shown.tiles['expired'] == 1 and shown.tiles['expiring'] == 2 and shown.tiles['valid'] == 5
    bars = [column for column in shown.bars if column['bar'] != 'expired']
    # From the earliest certificate (mfp-3, 5 days) to the latest (ws-hotel, 300 days): 43 weeks are more than the
    # 40 bars a chart has, so 2-week bars.
    assert bars[0]['from'] <= 5 <= bars[0]['to'] and bars[-1]['from'] <= 300 <= bars[-1]['to']
    assert len(set(column['to'] - column['from'] for column in bars)) == 1 and bars[0]['to'] - bars[0]['from'] == 13
    assert 'later' not in [column['bar'] for column in bars]
    warn = browser_page.locator('#expiry-chart g.warn')
    assert warn.get_attribute('data-days') == '30' and warn.text_content().strip() == '30 days'


@pytest.mark.parametrize('spread, warn_days, chart_weeks, size', [
    ('a year left', 30, 52, 1),            # 360 to 365 days left: 6 daily bars, not 53 empty weeks
    ('a spread', 400, 4, 1),               # the warning days beyond a 4-week window: colours still follow the status
    ('a spread', 30, 52, 14),              # up to 363 days: 2-week bars
    ('hours', 30, 52, 1),                  # 24-hour certificates: one bar
])
def test_the_chart_spans_the_real_range_and_agrees_with_the_tiles(spread, warn_days, chart_weeks, size):
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    rows = fabricate_rows(300, now)
    certified = [row for row in rows if row['days_left'] is not None]
    if spread == 'a year left':
        for index, row in enumerate(certified):
            row.update(days_left=360 + index % 6, status='valid')
    elif spread == 'hours':
        for index, row in enumerate(certified):
            row.update(days_left=0, status='expiring' if index % 3 else 'valid')
    shown = ReportPage(render_page(rows, now.strftime(TIME_FORMAT), warn_days=warn_days, chart_weeks=chart_weeks))
    chart_agrees_with_tiles(shown, rows)
    bars = [column for column in shown.bars if column['bar'] not in ('expired', 'later')]
    assert all(column['to'] - column['from'] + 1 == size for column in bars), bars
    lowest = min(row['days_left'] for row in certified if row['days_left'] >= 0)
    highest = max(row['days_left'] for row in certified)
    assert bars[0]['from'] <= lowest <= bars[0]['to'] and bars[0]['count'] > 0
    assert len(shown.bars) <= 42
    if chart_weeks * 7 > highest - lowest:
        assert bars[-1]['from'] <= highest <= bars[-1]['to'] and bars[-1]['count'] > 0
        assert 'later' not in [column['bar'] for column in shown.bars]
    else:
        later = [column for column in shown.bars if column['bar'] == 'later']
        assert later[0]['count'] == len([row for row in certified if row['days_left'] >= later[0]['from']]) > 0
        assert bars[-1]['to'] < lowest + chart_weeks * 7 + size
    if spread == 'a year left':
        assert len(bars) == 6


def test_text_from_certificates_and_records_is_escaped(fleet_report, browser_page):
    subject = fleet_report['rows']['ws-markup']['subject']
    # RFC 4514 puts a backslash before < and >, so the subject holds '</script' and '<img', as the reason does.
    assert '</script' in subject and '<img' in subject and '<img' in fleet_report['rows']['ws-bravo']['last_error']
    source = fleet_report['html'].read_text(encoding='utf-8')
    assert subject not in source and '<img' not in source and 'onerror="' not in source
    assert source.count('</script>') == 2 and len(re.findall(r'<script\b', source)) == 2
    assert ReportPage(source).scripts == 2
    data = source[source.index('id="report-data">'):source.index('</script>')]
    assert '<' not in data[len('id="report-data">'):] and '&' not in data
    page = browser_page
    assert page.evaluate('typeof window.pwned') == 'undefined'
    assert page.locator('script').count() == 2 and page.locator('img').count() == 0
    assert page.inner_text('tr[data-host=ws-markup] td:nth-child(3)') == subject
    assert page.inner_text('tr[data-host=ws-bravo] td.error') == fleet_report['rows']['ws-bravo']['last_error']
    assert HOSTILE_REASON in fleet_report['rows']['ws-bravo']['last_error']
    # The script reads the same text back from the JSON block.
    assert page.evaluate('JSON.parse(document.getElementById("report-data").textContent).rows.find(r => r.host === "ws-markup").subject') \
        == fleet_report['rows']['ws-markup']['subject']
    page.fill('#search', '<script')
    assert shown_hosts(page) == ['ws-markup']


def test_the_placeholder_row_of_a_host_without_facts_renders():
    """report.yml's row for a host whose facts could not be put together has host, status and last_error only."""
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    rows = [dict(host='ws-<odd>', status='missing', last_error="the report could not collect this host's certificate facts")]
    shown = ReportPage(render_page(rows, now.strftime(TIME_FORMAT)))
    assert shown.rows == {'ws-<odd>': dict(status='missing', failed=False, cells=[
        'ws-<odd>', '', '', '', '', '', 'missing', "the report could not collect this host's certificate facts"])}
    assert shown.tiles == {'': 1, 'expired': 0, 'missing': 1, 'pending': 0, 'expiring': 0, 'valid': 0, 'failed': 0}
    assert shown.groups == {'unknown': [1, 0, 1, 0, 0, 0, 0]}
    assert [column['bar'] for column in shown.bars] == ['expired'] and shown.bars[0]['count'] == 0
