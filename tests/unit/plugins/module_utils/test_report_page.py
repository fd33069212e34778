# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""What the report page shows besides the table (module_utils/report_page.py): tiles, group counts, the chart's
bars and the JSON block. The page itself, in a browser, is tested in tests/integration/test_report_page.py."""

from __future__ import annotations

import json

from ansible_collections.tokenfleet.pki.plugins.module_utils import report_page

GENERATED = '2026-12-01T00:00:00Z'


def row(host, status, days_left=None, group='workstations', failed_at=None):
    return dict(host=host, group=group, status=status, days_left=days_left, failed_at=failed_at, last_error=None)


def fleet():
    return [row('old', 'expired', -3), row('gone', 'missing', group=None, failed_at='2026-11-30T00:00:00Z'),
            row('new', 'pending', group='printers'), row('soon', 'expiring', 10, failed_at='2026-11-30T01:00:00Z'),
            row('ok-1', 'valid', 200), row('ok-2', 'valid', 201, group='printers')]


def test_tiles_groups_and_failed_runs_are_counted_once_each():
    shown = report_page.page(fleet(), GENERATED, 30, 52)
    assert shown['total'] == 6 and shown['failed'] == 2
    assert [(tile['status'], tile['count']) for tile in shown['tiles']] == [
        ('expired', 1), ('missing', 1), ('pending', 1), ('expiring', 1), ('valid', 2)]
    assert shown['groups'] == [
        dict(name='printers', hosts=2, counts=[0, 0, 1, 0, 1], failed=0),
        dict(name='unknown', hosts=1, counts=[0, 1, 0, 0, 0], failed=1),
        dict(name='workstations', hosts=3, counts=[1, 0, 0, 1, 1], failed=1)]


def test_every_charted_host_is_in_one_bar_and_the_colours_add_up_to_the_tiles():
    rows = fleet() + [row('ok-%d' % number, 'valid', number * 7) for number in range(3, 60)]
    chart = report_page.page(rows, GENERATED, 30, 52)['chart']
    totals = [sum(column['counts'][index] for column in chart['bars']) for index in range(len(report_page.CHARTED))]
    charted = [entry for entry in rows if entry['status'] in report_page.CHARTED and entry['days_left'] is not None]
    assert totals == [len([entry for entry in charted if entry['status'] == status]) for status in report_page.CHARTED]
    assert sum(column['total'] for column in chart['bars']) == len(charted)
    assert chart['hosts_without'] == 2 and len(chart['bars']) <= report_page.MAX_BARS + 2
    assert chart['bars'][0]['key'] == 'expired' and chart['bars'][0]['total'] == 1
    later = chart['bars'][-1]
    assert later['key'] == 'later' and later['total'] == len([entry for entry in charted if entry['days_left'] >= later['from_days']])


def test_a_fleet_with_a_year_left_gets_daily_bars_over_its_real_range():
    rows = [row('ok-%d' % number, 'valid', 360 + number % 6) for number in range(30)]
    chart = report_page.page(rows, GENERATED, 30, 52)['chart']
    assert chart['size_text'] == 'day'
    assert [column['from_days'] for column in chart['bars']] == ['', 360, 361, 362, 363, 364, 365]
    assert chart['warn'] is None  # 30 days is outside 360..365: the legend says so
    assert chart['bars'][1]['label'] == '2027-11-26' and chart['bars'][1]['title'].startswith('5 certificates with 360 days left')


def test_the_warning_line_sits_on_its_day():
    chart = report_page.page([row('a', 'valid', 0), row('b', 'valid', 35)], GENERATED, 30, 52)['chart']
    assert chart['size_text'] == 'day' and chart['warn'] == dict(x='722.0', text_x='725.0', days=30)


def test_a_placeholder_row_gets_every_field_and_the_json_is_safe_in_a_script():
    rows = [dict(host='ws-<odd>&', status='missing', last_error='</script><b>')]
    shown = report_page.page(rows, GENERATED, 30, 52)
    assert shown['rows'] == [dict(dict.fromkeys(report_page.FIELDS), **rows[0])]
    assert not set('<>&') & set(shown['data_json'])
    assert json.loads(shown['data_json']) == dict(generated_at=GENERATED, fields=list(report_page.FIELDS), rows=shown['rows'])
    assert [column['key'] for column in shown['chart']['bars']] == ['expired'] and shown['chart']['hosts_without'] == 1
