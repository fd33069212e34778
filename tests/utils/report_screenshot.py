# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Remake docs/images/fleet-report.png, the fleet report in docs/guide-fleet-rotation.md.

Makes a fleet in a temporary directory (workstations read on the host through the local connection, printers read on
the controller) with a spread of expiry dates over a year: a few expired and expiring certificates, hosts without a
certificate, a printer pending its first enrollment, and failure records of the roles (one on a host whose certificate
is still valid). Runs playbooks/report.yml over it, opens the page in headless Chromium (Playwright, offline, as the
tests do) and saves a screenshot of the top of the page: tiles, group counts, chart and the first rows.

  .venv/bin/python tests/utils/report_screenshot.py [--output docs/images/fleet-report.png] [--workstations 32]
      [--printers 16] [--keep NEW_DIR]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import subprocess
import sys
import tempfile

import yaml

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, 'tests', 'integration'))

# pylint: disable=wrong-import-position
from harness import ansible_env, make_test_ca, venv_tool  # noqa: E402
from report_page import TIME_FORMAT, offline_browser, pending_request, write_certificate, write_state  # noqa: E402

REASONS = ('communication error: connection to ca.example.com:80 refused (is the SCEP server running?)',
           'no token with the label "vpn" in the PKCS#11 library /usr/lib/softhsm/libsofthsm2.so',
           'the delivery tasks failed: the printer did not answer on 192.0.2.44:443')


def make_fleet(directory: str, workstations: int, printers: int, seed: int = 2026) -> str:
    """Certificates, state files and failure records for the fleet; returns the inventory's path."""
    rng = random.Random(seed)
    ca = make_test_ca()
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    hosts = dict(workstations={}, printers={})
    for number in range(1, workstations + printers + 1):
        printer = number > workstations
        name = 'mfp-%03d' % (number - workstations) if printer else 'ws-%03d' % number
        base = os.path.join(directory, 'device-keys', name) if printer else os.path.join(directory, name)
        os.makedirs(base)
        path = os.path.join(base, 'cert.pem' if printer else 'vpn.pem')
        if printer:
            hosts['printers'][name] = dict(ansible_host='192.0.2.%d' % (number - workstations), device_certificate_dir=base)
        else:
            hosts['workstations'][name] = dict(token_certificate_path=path, ansible_connection='local',
                                               ansible_python_interpreter=venv_tool('python'))
        draw = rng.random()
        if number in (7, workstations + 3):
            pass  # never enrolled: no certificate
        elif number == workstations + 5:
            write_state(path + '.scep.json', pending=pending_request((now - datetime.timedelta(hours=5)).strftime(TIME_FORMAT)))
        else:
            days = rng.randint(-6, -1) if number in (11, workstations + 9) else rng.randint(2, 29) if draw < 0.15 else rng.randint(30, 364)
            common_name = '192.0.2.%d' % (number - workstations) if printer else '%s.corp.example.com' % name
            write_certificate(path, ca, common_name, now + datetime.timedelta(days=days, hours=rng.randint(1, 23)),
                              organization='Example Corp')
        if number in (4, 7, 19, workstations + 2):
            failed_at = (now - datetime.timedelta(hours=rng.randint(2, 30))).strftime(TIME_FORMAT)
            with open(path + '.error.json', 'w', encoding='utf-8') as record:
                json.dump(dict(time=failed_at, task='Enroll', reason=REASONS[number % len(REASONS)]), record)
    inventory = os.path.join(directory, 'inventory.yml')
    with open(inventory, 'w', encoding='utf-8') as output:
        yaml.safe_dump({'all': {'children': dict((group, {'hosts': members}) for group, members in hosts.items())}}, output)
    return inventory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n', 1)[0])
    parser.add_argument('--output', default=os.path.join(REPO, 'docs', 'images', 'fleet-report.png'))
    parser.add_argument('--workstations', type=int, default=32)
    parser.add_argument('--printers', type=int, default=16)
    parser.add_argument('--keep', help='make the fleet and the report in this new directory and keep them')
    args = parser.parse_args()
    if args.workstations < 20 or args.printers < 6:
        parser.error('--workstations must be at least 20 and --printers at least 6 (the fleet names hosts up to those)')
    with tempfile.TemporaryDirectory() as scratch:
        directory = args.keep or scratch
        os.makedirs(directory, exist_ok=not args.keep)
        inventory = make_fleet(directory, args.workstations, args.printers)
        out = os.path.join(directory, 'report')
        env = ansible_env()
        env.update(ANSIBLE_LOCAL_TEMP=os.path.join(directory, '.ansible-local'), ANSIBLE_REMOTE_TEMP=os.path.join(directory, '.ansible-remote'),
                   ANSIBLE_FORKS='10')
        completed = subprocess.run([venv_tool('ansible-playbook'), '-i', inventory, os.path.join(REPO, 'playbooks', 'report.yml'),
                                    '-e', 'report_dir=%s' % out], cwd=directory, env=env, stdin=subprocess.DEVNULL,
                                   capture_output=True, text=True, check=False, timeout=1800)
        if completed.returncode != 0:
            raise SystemExit('report.yml failed:\n' + completed.stdout[-6000:] + completed.stderr[-3000:])
        with offline_browser(viewport={'width': 1400, 'height': 1060}) as (context, blocked):
            page = context.new_page()
            page.goto('file://' + os.path.join(out, 'fleet-report.html'))
            page.screenshot(path=args.output)
        if blocked:
            raise SystemExit('the page asked for %s' % blocked)
    print('%s: the report of %d workstations and %d printers' % (args.output, args.workstations, args.printers))


if __name__ == '__main__':
    main()
