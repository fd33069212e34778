# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""For the fleet report's tests, bench and screenshot: certificate, state and failure-record files of a fleet for
playbooks/report.yml; rendering playbooks/templates/fleet-report.html.j2 as the template action renders it, with
fabricated rows for fleets of any size; reading what the page shows (ReportPage); headless Chromium through Playwright,
offline.

Used by tests/integration/test_report.py, test_report_page.py and test_fleet_failures.py, bench/report_page_bench.py
(render time at 100 and 1,000 rows) and tests/utils/report_screenshot.py (the guide's screenshot)."""

from __future__ import annotations

import contextlib
import datetime
import html.parser
import json
import os
import random
import sys
import typing as t

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from harness import REPO_ROOT, ensure_collection_link

if ensure_collection_link() not in sys.path:  # render_page() uses the collection's own page model
    sys.path.insert(0, ensure_collection_link())

TEMPLATE = os.path.join(REPO_ROOT, 'playbooks', 'templates', 'fleet-report.html.j2')
TIME_FORMAT = '%Y-%m-%dT%H:%M:%SZ'
STATUS_ORDER = ('expired', 'missing', 'pending', 'expiring', 'valid')
CHROMIUM = '/usr/bin/chromium'
# Playwright waits at most this long for a page to load or an element to appear (30 s by default): a 1,000-host page on a
# busy two-core machine can take longer.
PAGE_TIMEOUT_MS = 180_000
# Keep Chromium from reaching out on its own: no background services, updates, sync, metrics, field trials,
# safe-browsing lists, DNS prefetch or QUIC; --no-sandbox because the tests run as root.
CHROMIUM_ARGS = (
    '--no-sandbox', '--disable-gpu', '--no-first-run', '--no-default-browser-check', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--disable-default-apps', '--disable-extensions',
    '--disable-domain-reliability', '--disable-client-side-phishing-detection', '--metrics-recording-only',
    '--disable-breakpad', '--disable-quic', '--dns-prefetch-disable', '--no-pings', '--safebrowsing-disable-auto-update',
    '--disable-features=OptimizationHints,MediaRouter,Translate,AutofillServerCommunication,CertificateTransparencyComponentUpdater',
)


def write_certificate(path, ca, common_name, not_after, organization='tokenfleet test', lifetime=datetime.timedelta(days=365)):
    """A certificate 'CN=<common_name>,O=<organization>' by the test CA, valid for ``lifetime`` until ``not_after``."""
    ca_key, ca_cert = ca
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization)])
    certificate = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_cert.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(not_after - lifetime).not_valid_after(not_after)
                   .sign(ca_key, hashes.SHA256()))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'wb') as output:
        output.write(certificate.public_bytes(serialization.Encoding.PEM))
        output.write(ca_cert.public_bytes(serialization.Encoding.PEM))  # a chain after it: only the first counts
    return certificate


def write_state(path, pending=None, history=()):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w', encoding='utf-8') as output:
        json.dump(dict(version=1, pending=pending, history=list(history)), output, indent=2)


def pending_request(started_at):
    return dict(transaction_id='a1' * 20, message_type='PKCSReq', request='3082', signer_certificate='',
                rekey=True, action='enroll', started_at=started_at)


def render_page(rows: list[dict[str, t.Any]], generated_at: str, warn_days: int = 30, chart_weeks: int = 52,
                template: str = TEMPLATE) -> str:
    """The page for these rows, rendered as the fleet_report action renders it (its variables, a trusted template)."""
    # pylint: disable=import-outside-toplevel
    from ansible.parsing.dataloader import DataLoader
    from ansible.template import Templar, trust_as_template

    with open(template, encoding='utf-8') as source:
        data = trust_as_template(source.read())
    from ansible_collections.tokenfleet.pki.plugins.module_utils.report_page import template_variables

    variables = template_variables(rows, generated_at, warn_days, chart_weeks)
    templar = Templar(loader=DataLoader(), variables=variables)
    return templar.template(data, escape_backslashes=False)


def fabricate_rows(count: int, generated_at: datetime.datetime, seed: int = 13) -> list[dict[str, t.Any]]:
    """``count`` rows as report.yml makes them, most urgent first: two thirds workstations, one third printers, expiry
    dates spread over a year, a few expired, expiring, missing and pending hosts, and some failed last runs."""
    rng = random.Random(seed)
    rows = []
    for number in range(1, count + 1):
        printer = number % 3 == 0
        host = ('mfp-%04d' if printer else 'ws-%04d') % number
        group = 'printers' if printer else 'workstations'
        path = ('/srv/ansible/device-keys/%s/cert.pem' % host) if printer else '/etc/pki/tokenfleet/vpn.pem'
        row = dict(host=host, group=group, certificate_path=path, on_controller=printer, subject=None, issuer=None,
                   serial=None, not_before=None, not_after=None, days_left=None, expiry_week=None,
                   fingerprint_sha256=None, status='missing', pending_transaction=None, pending_since=None,
                   failed_at=None, last_error=None)
        draw = rng.random()
        if draw < 0.03:
            row['last_error'] = 'File not found: %s' % path
        elif draw < 0.05:
            row.update(status='pending', pending_transaction='%040x' % rng.getrandbits(160),
                       pending_since=(generated_at - datetime.timedelta(hours=rng.randint(1, 72))).strftime(TIME_FORMAT))
        else:
            days = rng.randint(-5, 3) if draw < 0.07 else rng.randint(4, 29) if draw < 0.15 else rng.randint(30, 363)
            not_after = generated_at + datetime.timedelta(days=days, hours=rng.randint(0, 23))
            row.update(subject='O=Example Corp,OU=%s,CN=%s.corp.example.com' % (group, host),
                       issuer='O=Example Corp,CN=Example Issuing CA %d' % (1 + number % 2),
                       serial='%x' % rng.getrandbits(120), not_before=(not_after - datetime.timedelta(days=365)).strftime(TIME_FORMAT),
                       not_after=not_after.strftime(TIME_FORMAT), days_left=(not_after - generated_at).days,
                       expiry_week='%04d-W%02d' % not_after.isocalendar()[:2],
                       fingerprint_sha256=':'.join('%02x' % byte for byte in rng.randbytes(32)),
                       status='expired' if not_after < generated_at else 'expiring' if days < 30 else 'valid')
        if rng.random() < 0.06:
            failed_at = (generated_at - datetime.timedelta(hours=rng.randint(1, 48))).strftime(TIME_FORMAT)
            reason = 'communication error: connection to ca.corp.example.com:80 refused (is the SCEP server running?)'
            row.update(failed_at=failed_at, last_error='; '.join(filter(None, (
                'the last run failed at %s: %s' % (failed_at, reason), row['last_error']))))
        rows.append(row)
    return sorted(rows, key=lambda row: (STATUS_ORDER.index(row['status']),
                                         row['days_left'] if row['status'] in ('expired', 'expiring', 'valid') else 0,
                                         row['host']))


class ReportPage(html.parser.HTMLParser):
    """What the page shows, from its HTML (as written, or a DOM Chromium dumped): ``rows`` {host: {'status', 'failed'
    (the row's run-failed marker), 'cells' (text of each cell)}} in table order, ``tiles`` {filter: number},
    ``groups`` {group: [hosts, expired, missing, pending, expiring, valid, failed]}, ``bars`` (the chart's bars: their
    data- attributes as ints where they are numbers, and 'rects', how many rectangles each has), ``scripts``."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.rows: dict[str, dict[str, t.Any]] = {}
        self.tiles: dict[str, int] = {}
        self.groups: dict[str, list[int]] = {}
        self.bars: list[dict[str, t.Any]] = []
        self.scripts = 0
        self._row: dict[str, t.Any] | None = None
        self._group: list[str] | None = None
        self._cell: list[str] | None = None
        self._badge = False
        self._tile: str | None = None
        self._strong = False
        self.feed(page)
        self.close()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        classes = (attrs.get('class') or '').split()
        if tag == 'script':
            self.scripts += 1
        elif tag == 'tr' and 'data-host' in attrs:
            self._row = self.rows[attrs['data-host']] = dict(status=None, failed='failed' in classes, cells=[])
        elif tag == 'tr' and 'data-group' in attrs:
            self._group = [attrs['data-group']]
        elif tag == 'td' and (self._row is not None or self._group is not None):
            self._cell = []
        elif tag == 'span' and 'badge' in classes and self._row is not None:
            self._badge = 'run-failed' not in classes and self._row['status'] is None
        elif tag == 'a' and 'tile' in classes:
            self._tile = attrs.get('data-filter')
        elif tag == 'strong' and self._tile is not None:
            self._strong = True
        elif tag == 'g' and 'data-bar' in attrs:
            self.bars.append(dict((name[5:], int(value) if value.lstrip('-').isdigit() else value)
                                  for name, value in attrs.items() if name.startswith('data-')))
            self.bars[-1]['rects'] = 0
        elif tag == 'rect' and self.bars:
            self.bars[-1]['rects'] += 1

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if self._badge:
            self._row['status'] = data.strip()
            self._badge = False
        if self._strong:
            self.tiles[self._tile] = int(data)
            self._strong = False

    def handle_endtag(self, tag):
        if tag == 'td' and self._cell is not None:
            text = ''.join(self._cell)
            if self._row is not None:
                self._row['cells'].append(text)
            elif self._group is not None:
                self._group.append(text)
            self._cell = None
        elif tag == 'tr':
            if self._group is not None:
                self.groups[self._group[0]] = [int(value) for value in self._group[2:]]
            self._row = self._group = None
        elif tag == 'a':
            self._tile = None


@contextlib.contextmanager
def chromium() -> t.Iterator[t.Any]:
    """Debian's Chromium, headless, through Playwright (no browser of Playwright's own is downloaded or used)."""
    # pylint: disable=import-outside-toplevel
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=list(CHROMIUM_ARGS), headless=True)
        try:
            yield browser
        finally:
            browser.close()


@contextlib.contextmanager
def offline_context(browser: t.Any, **context_options: t.Any) -> t.Iterator[tuple[t.Any, list[str]]]:
    """A browser context that loads file:// URLs only; yields it and the list of every other URL one of its pages tried
    to load (each one was aborted)."""
    blocked: list[str] = []

    def route(request_route):
        if request_route.request.url.startswith('file://'):
            request_route.continue_()
        else:
            blocked.append(request_route.request.url)
            request_route.abort()

    context = browser.new_context(**context_options)
    context.set_default_timeout(PAGE_TIMEOUT_MS)
    try:
        context.route('**/*', route)
        yield context, blocked
    finally:
        context.close()


@contextlib.contextmanager
def offline_browser(**context_options: t.Any) -> t.Iterator[tuple[t.Any, list[str]]]:
    """chromium() and one offline_context() of it."""
    with chromium() as browser, offline_context(browser, **context_options) as (context, blocked):
        yield context, blocked
