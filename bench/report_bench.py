# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Report figures: wall time of playbooks/report.yml over fabricated fleets (100 and 1,000 hosts by default) against
the Ansible floor on this machine, one ansible.builtin.ping per host over the same inventory.

Each fleet is two thirds workstations, read on the host through the local connection, each with its own files,
and one third printers, read on the controller. The certificates are made with cryptography (one CA, one key
shared by all leaves, so the fleet is made in seconds) with a spread of expiry dates: some expired, some due for
renewal, most valid; some hosts have a pending scep_enroll state file, some a failure record of a failed run,
some printers no certificate at all. Every run gets the same inventory, forks, callbacks and environment.

Runs alternate per round: report, ping, and with ``--baseline-ref REV`` the report.yml of that git revision
(``git archive`` of its collection into the work directory, run against the same fleet) - A B C A B C. With
``--split`` the report and the ping also run limited to the workstations and to the printers, so that each kind of
host gets its own ratio. The figures are the medians over the rounds; the ratios are report / ping. The
``step_times`` callback (bench/callback_plugins) gives each step's wall time: the gap from its start to the next
step's (the first is start-up: inventory and playbook loading), and the controller steps tokenfleet.pki.fleet_report
times itself (collecting the rows, sorting, JSON, the HTML template, Prometheus text, writing).

Each report run is checked (outside the timing): fleet-report.json has one row per host with the status the
bench expects of it, and the current report's tokenfleet.prom has a status series per host. Prints a table per
size and merges the figures into bench/results.json (other keys are kept).
"""

from __future__ import annotations

import argparse
import collections
import datetime
import io
import json
import os
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, 'tests', 'integration'))
sys.path.insert(0, os.path.join(REPO, 'bench'))

# pylint: disable=wrong-import-position
from fleet_bench import merge_results, run_in_own_group  # noqa: E402
from harness import ansible_env  # noqa: E402

REPORT = os.path.join(REPO, 'playbooks', 'report.yml')
CALLBACKS = os.path.join(REPO, 'bench', 'callback_plugins')
ANSIBLE_PLAYBOOK = os.path.join(os.path.dirname(sys.executable), 'ansible-playbook')
TIME_FORMAT = '%Y-%m-%dT%H:%M:%SZ'
LIFETIME = datetime.timedelta(days=365)
HALF_DAY = datetime.timedelta(hours=12)


class Fleet:
    """The fabricated hosts, their files, the inventory and what the report should say of each host."""

    def __init__(self, work, hosts, forks):
        self.work = work
        os.makedirs(work)
        printers = max(1, hosts // 3)
        self.workstations = ['ws-%04d' % number for number in range(1, hosts - printers + 1)]
        self.printers = ['mfp-%04d' % number for number in range(1, printers + 1)]
        self.hosts = self.workstations + self.printers
        self.expected = {}
        self.config = os.path.join(work, 'ansible.cfg')
        with open(self.config, 'w', encoding='utf-8') as config:
            config.write('[defaults]\nforks = %d\n' % forks)
        self.env = ansible_env()
        self.env.update(ANSIBLE_CONFIG=self.config, ANSIBLE_CALLBACK_PLUGINS=CALLBACKS, ANSIBLE_CALLBACKS_ENABLED='step_times',
                        ANSIBLE_LOCAL_TEMP=os.path.join(work, 'ansible-local-tmp'),
                        ANSIBLE_REMOTE_TEMP=os.path.join(work, 'ansible-remote-tmp'))
        now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, 'tokenfleet bench CA')])
        leaf_key = ec.generate_private_key(ec.SECP256R1()).public_key()
        workstations, printers = {}, {}
        for index, host in enumerate(self.hosts):
            directory = os.path.join(work, 'hosts', host)
            os.makedirs(directory)
            printer = host in self.printers
            path = os.path.join(directory, 'cert.pem' if printer else 'vpn.pem')
            # a spread from 20 days expired to 399 days left, half a day off whole days so days_left is exact
            days = (index * 37) % 420 - 20
            certificate = not (printer and index % 29 == 0)
            if certificate:
                subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host + '.example.com')])
                not_after = now + datetime.timedelta(days=days) + HALF_DAY
                issued = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_name).public_key(leaf_key)
                          .serial_number(x509.random_serial_number()).not_valid_before(not_after - LIFETIME)
                          .not_valid_after(not_after).sign(ca_key, hashes.SHA256()))
                with open(path, 'wb') as output:
                    output.write(issued.public_bytes(serialization.Encoding.PEM))
            pending = index % 17 == 5
            if pending or index % 5 == 0:
                state = dict(version=1, history=[], pending=dict(
                    transaction_id='%040x' % index, message_type='RenewalReq', started_at=now.strftime(TIME_FORMAT),
                    action='renew') if pending else None)
                with open(path + '.scep.json', 'w', encoding='utf-8') as output:
                    json.dump(state, output)
            if index % 13 == 7:
                with open(path + '.error.json', 'w', encoding='utf-8') as output:
                    json.dump(dict(time=now.strftime(TIME_FORMAT), task='Enroll the certificate',
                                   reason='communication error: connection to ca.example.com:80 refused'), output)
            if pending:
                self.expected[host] = 'pending'
            elif not certificate:
                self.expected[host] = 'missing'
            elif days < 0:
                self.expected[host] = 'expired'
            elif days < 30:  # scep_enroll's default window for a year's certificate: 30 days
                self.expected[host] = 'expiring'
            else:
                self.expected[host] = 'valid'
            if printer:
                printers[host] = dict(device_certificate_dir=directory)
            else:
                workstations[host] = dict(token_certificate_path=path)
        self.inventory = os.path.join(work, 'inventory.yml')
        with open(self.inventory, 'w', encoding='utf-8') as output:
            yaml.safe_dump({'all': {
                'vars': dict(ansible_connection='local', ansible_python_interpreter=sys.executable),
                'children': {'workstations': {'hosts': workstations}, 'printers': {'hosts': printers}}}},
                output, sort_keys=False)
        self.ping = os.path.join(work, 'ping.yml')
        with open(self.ping, 'w', encoding='utf-8') as output:
            yaml.safe_dump([{'name': 'Ping floor', 'hosts': 'workstations:printers', 'gather_facts': False,
                             'tasks': [{'name': 'ping', 'ansible.builtin.ping': None}]}], output, sort_keys=False)
        self.runs = 0

    def run(self, name, playbook, collections_path=None, extra_args=()):
        """Run a playbook over the fleet; (seconds, steps). Fails loudly if it fails."""
        self.runs += 1
        stem = os.path.join(self.work, 'runs', '%02d-%s' % (self.runs, name))
        os.makedirs(os.path.dirname(stem), exist_ok=True)
        env = dict(self.env, TOKENFLEET_STEP_TIMES=stem + '.steps.json')
        if collections_path:
            env['ANSIBLE_COLLECTIONS_PATH'] = collections_path
        command = [ANSIBLE_PLAYBOOK, '-i', self.inventory, playbook] + list(extra_args)
        with open(stem + '.log', 'w', encoding='utf-8') as log:
            started = time.monotonic()
            returncode = run_in_own_group(command, cwd=self.work, env=env, stdout=log)
            seconds = time.monotonic() - started
        if returncode != 0:
            with open(stem + '.log', encoding='utf-8', errors='replace') as log:
                raise SystemExit('%s failed (rc=%d): %s\n%s' % (name, returncode, ' '.join(command), log.read()[-4000:]))
        with open(stem + '.steps.json', encoding='utf-8') as recorded:
            timed = json.load(recorded)
        marks = timed['steps']
        steps = [('(start-up: inventory, playbook)', marks[0][1])] if marks else []
        steps += [(marks[number][0], marks[number + 1][1] - marks[number][1]) for number in range(len(marks) - 1)]
        return seconds, steps + [('  ' + name, value) for name, value in timed['inner']]

    def check_report(self, name, out, hosts, prometheus):
        """One row per host with the expected status; with ``prometheus`` a status series of value 1 for each."""
        with open(os.path.join(out, 'fleet-report.json'), encoding='utf-8') as data:
            rows = json.load(data)['rows']
        found = dict((row['host'], row['status']) for row in rows)
        wanted = dict((host, self.expected[host]) for host in hosts)
        if len(rows) != len(hosts) or found != wanted:
            wrong = sorted(host for host in wanted if found.get(host) != wanted[host])
            raise SystemExit('%s: %d rows for %d hosts; wrong status for %s' % (name, len(rows), len(hosts), wrong[:5]))
        if prometheus:
            with open(os.path.join(out, 'tokenfleet.prom'), encoding='utf-8') as text:
                current = [line for line in text if line.startswith('tokenfleet_certificate_status{') and line.endswith(' 1\n')]
            if len(current) != len(hosts):
                raise SystemExit('%s: tokenfleet.prom has %d current status series for %d hosts' % (name, len(current), len(hosts)))


def baseline_collection(work, ref):
    """``git archive`` of ``ref`` as ansible_collections/tokenfleet/pki under work; the collections path."""
    root = os.path.join(work, 'baseline')
    target = os.path.join(root, 'ansible_collections', 'tokenfleet', 'pki')
    os.makedirs(target)
    archive = subprocess.run(['git', '-C', REPO, 'archive', '--format=tar', ref], capture_output=True, check=False)
    if archive.returncode != 0:
        raise SystemExit('git archive %s failed: %s' % (ref, archive.stderr.decode(errors='replace')))
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(target, filter='data')
    return root


def bench_size(options, work, hosts, baseline_root):
    fleet = Fleet(os.path.join(work, 'fleet-%d' % hosts), hosts, options.forks)
    print('fleet of %d hosts (%d workstations read on the host, %d printers read on the controller); expected: %s'
          % (len(fleet.hosts), len(fleet.workstations), len(fleet.printers),
             dict(collections.Counter(fleet.expected.values()))), flush=True)
    cases = [('report', 'all', None), ('ping', 'all', None)]
    if baseline_root:
        cases.append(('baseline', 'all', None))
    if options.split:
        cases += [(kind, group, group) for group in ('workstations', 'printers') for kind in ('report', 'ping')]
    seconds, steps = collections.defaultdict(list), collections.defaultdict(list)
    for number in range(1, options.repeats + 1):
        for kind, group, limit in cases:
            out = os.path.join(fleet.work, 'out-%s-%s' % (kind, group))
            extra = ['-e', 'report_dir=%s' % out] if kind != 'ping' else []
            if limit:
                extra += ['--limit', limit]
            playbook = fleet.ping if kind == 'ping' else REPORT
            collections_path = None
            if kind == 'baseline':
                playbook = os.path.join(baseline_root, 'ansible_collections', 'tokenfleet', 'pki', 'playbooks', 'report.yml')
                collections_path = baseline_root
            elapsed, run_steps = fleet.run('%s-%s-%d' % (kind, group, number), playbook, collections_path, extra)
            if kind != 'ping':
                fleet.check_report('%s %s round %d' % (kind, group, number), out,
                                   getattr(fleet, limit) if limit else fleet.hosts, kind == 'report')
            seconds[kind, group].append(elapsed)
            for step, step_seconds in run_steps:
                steps[kind, group, step].append(step_seconds)
            print('%d hosts round %d %-8s %-12s %8.2f s' % (hosts, number, kind, group, elapsed), flush=True)
    return fleet, seconds, steps


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--sizes', default='100,1000', help='fleet sizes, comma-separated (default 100,1000)')
    parser.add_argument('--repeats', type=int, default=3, help='timed rounds; the medians are reported (default 3)')
    parser.add_argument('--forks', type=int, default=5, help='ansible forks of every run (default 5, ansible\'s own)')
    parser.add_argument('--baseline-ref', help='also run the report.yml of this git revision (for example main)')
    parser.add_argument('--split', action='store_true', help='also time workstations and printers each on their own')
    parser.add_argument('--output', default=os.path.join(REPO, 'bench', 'results.json'))
    parser.add_argument('--keep', help='work in this directory and keep it (fleets, logs, reports, step times)')
    options = parser.parse_args()
    sizes = [int(size) for size in options.sizes.split(',') if size.strip()]
    if not sizes or min(sizes) < 2 or options.repeats < 1:
        parser.error('--sizes must be at least 2 hosts each (a workstation and a printer) and --repeats at least 1')
    # a SIGTERM (make, a CI timeout) ends the run through run_in_own_group, which ends the playbook run too
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if options.keep:
        os.makedirs(options.keep, exist_ok=True)
        work = os.path.abspath(options.keep)
        figures = bench(options, sizes, work)
    else:
        with tempfile.TemporaryDirectory(prefix='report-bench-') as work:
            figures = bench(options, sizes, work)
    report(options, figures)


def bench(options, sizes, work):
    baseline_root = baseline_collection(work, options.baseline_ref) if options.baseline_ref else None
    figures = []
    for hosts in sizes:
        fleet, seconds, steps = bench_size(options, work, hosts, baseline_root)
        figures.append((hosts, fleet, dict((key, statistics.median(values)) for key, values in seconds.items()),
                        dict((key, statistics.median(values)) for key, values in steps.items())))
    return figures


def report(options, figures):
    results = {'report_bench_forks': {'value': options.forks, 'unit': 'count'},
               'report_bench_repeats': {'value': options.repeats, 'unit': 'count'}}
    for hosts, fleet, median, steps in figures:
        ping = median['ping', 'all']
        print()
        print('%d hosts (%d workstations, %d printers), local connection, forks %d, median of %d rounds'
              % (hosts, len(fleet.workstations), len(fleet.printers), options.forks, options.repeats))
        print('%-34s %10s %10s %8s' % ('', 'seconds', 'ping s', 'ratio'))
        rows = [('report.yml', 'report', 'all')]
        if ('baseline', 'all') in median:
            rows.append(('report.yml of %s (before)' % options.baseline_ref, 'baseline', 'all'))
        for label, kind, group in rows:
            print('%-34s %10.2f %10.2f %8.2f' % (label, median[kind, group], ping, median[kind, group] / ping))
            results['report_%d_%s_seconds' % (hosts, kind)] = {'value': round(median[kind, group], 2), 'unit': 's'}
            results['report_%d_%s_to_ping_ratio' % (hosts, kind)] = {'value': round(median[kind, group] / ping, 2), 'unit': 'x'}
        results['report_%d_ping_seconds' % hosts] = {'value': round(ping, 2), 'unit': 's'}
        for group in ('workstations', 'printers'):
            if ('report', group) in median:
                ratio = median['report', group] / median['ping', group]
                label = 'report.yml, %s only' % group
                print('%-34s %10.2f %10.2f %8.2f' % (label, median['report', group], median['ping', group], ratio))
                results['report_%d_%s_to_ping_ratio' % (hosts, group)] = {'value': round(ratio, 2), 'unit': 'x'}
        for kind in ('report', 'baseline'):
            kind_steps = [(step, value) for (step_kind, group, step), value in steps.items()
                          if step_kind == kind and group == 'all']
            if kind_steps:
                print('  steps of %s (median seconds):' % ('report.yml' if kind == 'report' else options.baseline_ref))
                for step, value in kind_steps:
                    print('    %-100s %8.2f' % (step, value))
    sizes = [hosts for hosts, dummy, dummy, dummy in figures]
    if len(sizes) > 1:
        print()
        print('side by side (seconds): %s' % '   '.join('%d hosts' % hosts for hosts in sizes))
        by_size = dict((hosts, steps) for hosts, dummy, dummy, steps in figures)
        for kind in ('report', 'baseline'):
            names = [step for (step_kind, group, step) in by_size[sizes[0]] if step_kind == kind and group == 'all']
            for step in names:
                values = [by_size[hosts].get((kind, 'all', step)) for hosts in sizes]
                columns = ['%8.2f' % value if value is not None else '%8s' % '-' for value in values]
                print('  %-8s %-70s %s' % (kind, step[:70], '  '.join(columns)))
    merge_results(options.output, results)
    print('written: %s' % options.output)


if __name__ == '__main__':
    main()
