# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Render time of the fleet report page (playbooks/templates/fleet-report.html.j2) for fabricated fleets.

The rows come from tests/integration/report_page.py (fabricate_rows: two thirds workstations, one third printers,
expiry dates spread over a year, some expired, expiring, missing and pending hosts, some failed runs); the template is
rendered as ansible.builtin.template renders it (Ansible's Templar, trim_blocks), in this process, after one warm-up
render (so the figures leave out loading the filter plugins and compiling the template once). With --baseline-ref the
template of that git revision is rendered too, alternating with the current one round by round, so both are measured
under the same load. Prints the median seconds per size and merges them into bench/results.json (other keys kept).

  .venv/bin/python bench/report_page_bench.py [--sizes 100,1000] [--repeats 3] [--baseline-ref main] [--no-results]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, 'tests', 'integration'))

# pylint: disable=wrong-import-position
from report_page import TEMPLATE, TIME_FORMAT, fabricate_rows, render_page  # noqa: E402

RESULTS = os.path.join(REPO, 'bench', 'results.json')


def baseline_template(ref: str, directory: str) -> str:
    """The report template of git revision ``ref``, written to ``directory``."""
    source = subprocess.run(['git', 'show', '%s:playbooks/templates/fleet-report.html.j2' % ref], cwd=REPO, check=True,
                            capture_output=True, text=True).stdout
    path = os.path.join(directory, 'fleet-report-%s.html.j2' % ref.replace('/', '_'))
    with open(path, 'w', encoding='utf-8') as output:
        output.write(source)
    return path


def timed_render(rows, generated_at, template):
    start = time.perf_counter()
    page = render_page(rows, generated_at, template=template)
    elapsed = time.perf_counter() - start
    if page.count('data-host=') != len(rows):
        raise SystemExit('%s: the page has %d host rows, not %d' % (template, page.count('data-host='), len(rows)))
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n', 1)[0])
    parser.add_argument('--sizes', default='100,1000', help='comma-separated row counts (default 100,1000)')
    parser.add_argument('--repeats', type=int, default=3, help='timed rounds per size (default 3)')
    parser.add_argument('--baseline-ref', help='also time the template of this git revision, e.g. main')
    parser.add_argument('--no-results', action='store_true', help='do not write bench/results.json')
    args = parser.parse_args()
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    generated_at = now.strftime(TIME_FORMAT)
    sizes = [int(size) for size in args.sizes.split(',')]
    with tempfile.TemporaryDirectory() as directory:
        templates = dict(current=TEMPLATE)
        if args.baseline_ref:
            templates['baseline'] = baseline_template(args.baseline_ref, directory)
        for template in templates.values():
            timed_render(fabricate_rows(10, now), generated_at, template)
        figures = {}
        for size in sizes:
            rows = fabricate_rows(size, now)
            times = dict((name, []) for name in templates)
            for _round in range(args.repeats):
                for name, template in templates.items():
                    times[name].append(timed_render(rows, generated_at, template))
            for name, values in times.items():
                figures[(name, size)] = statistics.median(values)
                print('%-8s %5d rows: median %.2f s (%s)' % (name, size, figures[(name, size)],
                                                             ', '.join('%.2f' % value for value in values)), flush=True)
    print()
    print('| rows | ' + ' | '.join(templates) + ' |')
    print('| --- |' + ' --- |' * len(templates))
    for size in sizes:
        print('| %d | ' % size + ' | '.join('%.2f s' % figures[(name, size)] for name in templates) + ' |')
    if args.no_results:
        return
    results = {}
    if os.path.exists(RESULTS):
        with open(RESULTS, encoding='utf-8') as existing:
            results = json.load(existing)
    for (name, size), value in figures.items():
        key = 'report_page_render_%d_rows_seconds' % size if name == 'current' else \
            'report_page_render_%d_rows_baseline_seconds' % size
        results[key] = dict(unit='s', value=round(value, 3))
    if args.baseline_ref:
        results['report_page_render_baseline_ref'] = dict(unit='git', value=args.baseline_ref)
    with open(RESULTS + '.partial', 'w', encoding='utf-8') as output:
        json.dump(results, output, indent=2, sort_keys=True)
        output.write('\n')
    os.replace(RESULTS + '.partial', RESULTS)


if __name__ == '__main__':
    main()
