# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""What fleet-report.html shows besides the host table, worked out in Python in one pass over the rows: the tiles,
the counts per group, the expiry chart (bars, their colours, labels and geometry) and the rows' JSON block.
Private to the collection; used by the fleet_report action and the report's tests.

The template only draws what this gives it. Counting and bucketing in Jinja under Ansible's templar cost about
3 ms per row (lazy containers around every value); here they cost microseconds, so the page is cheap at 1,000 hosts.
"""

from __future__ import annotations

import datetime
import json

STATUSES = ('expired', 'missing', 'pending', 'expiring', 'valid')
STATUS_TEXT = dict((status, status.capitalize()) for status in STATUSES)
CHARTED = ('expired', 'pending', 'expiring', 'valid')
"""The statuses the chart colours: those of hosts with a certificate."""
FIELDS = ('host', 'group', 'certificate_path', 'on_controller', 'subject', 'issuer', 'serial', 'not_before', 'not_after',
          'days_left', 'expiry_week', 'fingerprint_sha256', 'status', 'pending_transaction', 'pending_since', 'failed_at',
          'last_error')
"""The fields of a row on the page, in the CSV's column order; a row without some (a placeholder) gets None."""
BAR_SIZES = ((1, 'day'), (7, 'week'), (14, '2 weeks'), (30, '30 days'), (91, '91 days'), (182, '182 days'), (365, '365 days'))
MAX_BARS = 40
STEP, BAR_WIDTH, LEFT, TOP, PLOT, BOTTOM = 22, 16, 40, 16, 150, 70
"""The chart's geometry in px: a bar every STEP, BAR_WIDTH wide, the plot PLOT high between margins."""
HOSTS_IN_TITLE = 12
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def _px(value):
    return '%.1f' % value


def _day(generated, days):
    return (generated + datetime.timedelta(days=days)).strftime('%Y-%m-%d')


def _group(row):
    return row.get('group') or 'unknown'


def _bar_range(lo, top_day):
    """The bar width in days: the smallest of a day, a week, ... that needs fewer than MAX_BARS bars."""
    for size, text in BAR_SIZES:
        if top_day // size - lo // size < MAX_BARS:
            return size, text
    size = (top_day - lo) // (MAX_BARS - 1) + 1
    return size, '%d days' % size


def _bar_text(key, size, last, generated):
    """(label, from_days, to_days, what) of the bar ``key``: 'expired', 'later' or the number of a bar of days left."""
    if key == 'expired':
        return 'expired', '', -1, 'already expired'
    if key == 'later':
        from_days = (last + 1) * size
        return 'later', from_days, '', 'with %d days left or more (expiring from %s)' % (from_days, _day(generated, from_days))
    from_days = key * size
    to_days = from_days + size - 1
    label = _day(generated, from_days)
    what = 'with %d days left' % from_days if size == 1 else 'with %d to %d days left' % (from_days, to_days)
    return label, from_days, to_days, what + ' (expiring %s to %s)' % (label, _day(generated, to_days + 1))


def chart(rows, generated, warn_days, chart_weeks):
    """The expiry chart: bars of days left, from the earliest unexpired certificate to the latest, at most
    ``chart_weeks`` weeks after the earliest (later ones share a last "later" bar); expired ones share a first bar.
    Each bar is split by the hosts' status, so the segments of one colour add up to that status' tile."""
    charted = [(row['host'], int(row['days_left']), row['status']) for row in rows
               if row['status'] in CHARTED and isinstance(row['days_left'], int) and not isinstance(row['days_left'], bool)]
    unexpired = [days for dummy, days, dummy in charted if days >= 0]
    lo = min(unexpired) if unexpired else 0
    top_day = min(max(unexpired) if unexpired else 0, lo + max(chart_weeks, 1) * 7 - 1)
    size, size_text = _bar_range(lo, top_day)
    first, last = lo // size, top_day // size
    keys = ['expired'] + (list(range(first, last + 1)) if unexpired else [])
    bars = dict((key, dict(dict.fromkeys(CHARTED, 0), hosts=[])) for key in keys + ['later'])
    for host, days, status in charted:
        column = bars['expired' if days < 0 else 'later' if days // size > last else days // size]
        column[status] += 1
        column['hosts'].append(host)
    if bars['later']['hosts']:
        keys.append('later')
    highest = max([1] + [len(bars[key]['hosts']) for key in keys])
    width = LEFT + len(keys) * STEP + 16
    ticks = [dict(value=value, y=_px(TOP + PLOT - value * PLOT / highest), text_y=_px(TOP + PLOT - value * PLOT / highest + 3))
             for value in range(0, highest + 1, (highest + 3) // 4)]
    drawn = []
    for index, key in enumerate(keys):
        column = bars[key]
        total = len(column['hosts'])
        x = LEFT + index * STEP + (STEP - BAR_WIDTH) / 2
        label, from_days, to_days, what = _bar_text(key, size, last, generated)
        counts = ', '.join('%s %d' % (status, column[status]) for status in CHARTED if column[status])
        title = '%d certificate%s %s' % (total, '' if total == 1 else 's', what) + (': ' + counts if counts else '')
        if total:
            title += '\n' + ', '.join(column['hosts'][:HOSTS_IN_TITLE]) + (
                ' and %d more' % (total - HOSTS_IN_TITLE) if total > HOSTS_IN_TITLE else '')
        rects, y = [], TOP + PLOT
        for status in CHARTED:
            if column[status]:
                height = column[status] * PLOT / highest
                rects.append(dict(status=status, x=_px(x), y=_px(y - height), height=_px(height)))
                y -= height
        drawn.append(dict(key=key, from_days=from_days, to_days=to_days, total=total, counts=[column[status] for status in CHARTED],
                          title=title, rects=rects, count_x=_px(x + BAR_WIDTH / 2), count_y=_px(y - 3) if total else None,
                          label=label, label_x=_px(x + BAR_WIDTH / 2 + 3)))
    warn = None
    if first * size <= warn_days <= (last + 1) * size:
        warn_x = LEFT + STEP * (1 + (warn_days - first * size) / size)
        warn = dict(x=_px(warn_x), text_x=_px(warn_x + 3), days=warn_days)
    return dict(size_text=size_text, width=width, height=TOP + PLOT + BOTTOM, top=TOP, baseline=TOP + PLOT, left=LEFT,
                label_y=TOP + PLOT + 8, bar_width=BAR_WIDTH, ticks=ticks, bars=drawn, statuses=list(CHARTED), warn=warn,
                warn_days=warn_days, hosts_without=len(rows) - len(charted))


def data_json(generated_at, rows):
    """The rows as the page's script reads them, safe inside <script>: <, > and & as JSON escapes."""
    text = json.dumps(dict(generated_at=generated_at, fields=list(FIELDS), rows=rows), ensure_ascii=False)
    return text.replace('<', '\\u003c').replace('>', '\\u003e').replace('&', '\\u0026')


def page(rows, generated_at, warn_days, chart_weeks):
    """The template's ``report_page``: the rows with every field, the tiles, the groups, the chart and the JSON."""
    rows = [row if all(field in row for field in FIELDS) else dict(dict.fromkeys(FIELDS), **row) for row in rows]
    generated = datetime.datetime.strptime(generated_at, '%Y-%m-%dT%H:%M:%SZ').replace(tzinfo=datetime.timezone.utc)
    counts = dict((status, 0) for status in STATUSES)
    groups = {}
    failed = 0
    for row in rows:
        status = row.get('status') or 'missing'
        counts[status] = counts.get(status, 0) + 1
        group = groups.setdefault(_group(row), dict((name, 0) for name in STATUSES + ('hosts', 'failed')))
        group['hosts'] += 1
        group[status] = group.get(status, 0) + 1
        if isinstance(row.get('failed_at'), str):
            failed += 1
            group['failed'] += 1
    return dict(
        rows=rows, total=len(rows), failed=failed,
        tiles=[dict(status=status, text=STATUS_TEXT[status], count=counts[status]) for status in STATUSES],
        groups=[dict(name=name, hosts=groups[name]['hosts'], counts=[groups[name][status] for status in STATUSES],
                     failed=groups[name]['failed']) for name in sorted(groups)],
        chart=chart(rows, generated, int(warn_days), int(chart_weeks)),
        data_json=data_json(generated_at, rows),
        generated_text='%s %s UTC' % (generated_at[:10], generated_at[11:19]),
    )


def template_variables(rows, generated_at, warn_days, chart_weeks):
    """The variables fleet-report.html.j2 is rendered with (besides the task's own): the inputs and ``report_page``."""
    return dict(report_rows=rows, report_generated_at=generated_at, report_warn_days=warn_days,
                report_chart_weeks=chart_weeks, report_page=page(rows, generated_at, warn_days, chart_weeks))
