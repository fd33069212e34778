# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Fleet figures: wall time of playbooks/rotate.yml over simulated hosts when nothing is due and when
everything is due, against the Ansible floor on this machine: the same inventory running the same number
of ansible.builtin.ping tasks per host, in the same plays (hosts, serial, max_fail_percentage, no facts).

step-ca (smallstep, the binary ``make deps`` builds, see tests/integration/stepca.py) is the CA, with a
fresh RSA root and intermediate and its default 24-hour certificates; every host pins the root by file
(``*_ca_certificate_path``), since step-ca sends only its intermediate. micromdm's scepserver is not used
here: its file depot races on its serial file when it signs for several hosts at once and aborted this
bench ("could not convert to serial number"). Two thirds of the hosts are workstations (token_certificate role), each
with its own SoftHSM2 token directory; one third are printers (device_certificate role, enrolled on the
controller). All hosts use the local connection. Every host is provisioned once (not timed), then rounds
alternate: rotate with nothing due, ping with as many tasks per host, rotate with everything due
(renew_before=400 days > the certificates' lifetime), ping with as many tasks per host. Each timed figure is
the median over the rounds; each ratio is rotate / ping.

What is counted as a task of a host: every task result the record_results callback records for it that
is not skipped (ok, changed or failed), including the roles' argument validation, which runs on the
controller; a looped task counts once per item that was not skipped. Skipped tasks (the provisioning
tasks, the printer's packaging when nothing changed) are not counted. The ping playbook runs exactly
that many ping tasks per host; it gets the same inventory, extra vars, forks, callbacks and environment.

Each rotate run is checked (outside the timing): with nothing due no host changes, no certificate file
changes and the CA gets no PKIOperation; with everything due the CA gets one PKIOperation per host, every
host reports a change and holds a new certificate from the CA, and the CA's log has a new one for each.
Prints a table and merges the figures into bench/results.json (other keys are kept).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import yaml
from cryptography import x509

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, 'tests', 'integration'))

# pylint: disable=wrong-import-position
from harness import CALLBACK_DIR, RECORD_ENV, SOFTHSM_MODULE, SoftHSM, ansible_env, random_pin  # noqa: E402
from stepca import StepCaServer, make_pki, missing_tools  # noqa: E402

ROTATE = os.path.join(REPO, 'playbooks', 'rotate.yml')
ANSIBLE_PLAYBOOK = os.path.join(os.path.dirname(sys.executable), 'ansible-playbook')
PLAYBOOK_TIMEOUT = 3600
ALL_DUE = ['-e', 'token_certificate_renew_before=400', '-e', 'device_certificate_renew_before=400']


def run_in_own_group(command, **kwargs):
    """Run command in a process group of its own and wait; returns its exit status. On a timeout or any
    interruption (Ctrl-C, SIGTERM, an error) the whole group (ansible-playbook and its workers) is ended."""
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stderr=subprocess.STDOUT,  # pylint: disable=consider-using-with
                               start_new_session=True, **kwargs)
    try:
        return process.wait(timeout=PLAYBOOK_TIMEOUT)
    except BaseException:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(process.pid, sig)
                process.wait(timeout=10)
                break
            except subprocess.TimeoutExpired:
                continue
            except ProcessLookupError:
                break
        raise


class Fleet:
    """The simulated hosts, their inventory and the settings every ansible-playbook run shares."""

    def __init__(self, work, server, hosts, forks):
        self.work = work
        self.server = server
        self.forks = forks
        self.runs = 0
        printers = max(1, hosts // 3)
        self.workstations = ['ws-%03d' % number for number in range(1, hosts - printers + 1)]
        self.printers = ['mfp-%03d' % number for number in range(1, printers + 1)]
        self.hosts = self.workstations + self.printers
        self.groups = {'workstations': self.workstations, 'printers': self.printers}
        self.inventory = os.path.join(work, 'inventory.yml')
        self.config = os.path.join(work, 'ansible.cfg')
        with open(self.config, 'w', encoding='utf-8') as config:
            config.write('[defaults]\nforks = %d\n' % forks)
        self.env = ansible_env()
        self.env.update(ANSIBLE_CONFIG=self.config, ANSIBLE_CALLBACK_PLUGINS=CALLBACK_DIR,
                        ANSIBLE_CALLBACKS_ENABLED='record_results',
                        ANSIBLE_LOCAL_TEMP=os.path.join(work, 'ansible-local-tmp'),
                        ANSIBLE_REMOTE_TEMP=os.path.join(work, 'ansible-remote-tmp'))
        workstation_hosts, printer_hosts = {}, {}
        for name in self.workstations:
            workstation_hosts[name] = self._workstation(name)
        for name in self.printers:
            directory = os.path.join(work, 'hosts', name)
            # no ansible_host: the role's default common name is then the inventory name
            printer_hosts[name] = dict(ansible_python_interpreter=sys.executable, device_certificate_dir=directory,
                                       device_certificate_pkcs12_passphrase=random_pin())
        common = dict(ansible_connection='local')
        inventory = {'all': {'vars': common, 'children': {
            'workstations': {'hosts': workstation_hosts, 'vars': dict(
                token_certificate_pkcs11_module=os.path.realpath(SOFTHSM_MODULE),
                token_certificate_scep_url=server.url, token_certificate_ca_certificate_path=server.root_pem_path,
                token_certificate_challenge_password=server.challenge)},
            'printers': {'hosts': printer_hosts, 'vars': dict(
                device_certificate_scep_url=server.url, device_certificate_ca_certificate_path=server.root_pem_path,
                device_certificate_challenge_password=server.challenge,
                device_certificate_out_dir=os.path.join(work, 'printer-bundles'))},
        }}}
        with open(self.inventory, 'w', encoding='utf-8') as output:
            yaml.safe_dump(inventory, output, sort_keys=False)

    def _workstation(self, name):
        """A SoftHSM2 of its own (configuration, token directory, one token labelled like the host) and an
        interpreter wrapper that points SOFTHSM2_CONF at it, as a real workstation has its one token."""
        directory = os.path.join(self.work, 'hosts', name)
        hsm = SoftHSM(directory)
        user_pin = random_pin()
        hsm.init_token(name, random_pin(), user_pin)
        interpreter = os.path.join(directory, 'python3')
        with open(interpreter, 'w', encoding='utf-8') as wrapper:
            wrapper.write('#!/bin/sh\nSOFTHSM2_CONF=%s exec %s "$@"\n' % (shlex.quote(hsm.conf), shlex.quote(sys.executable)))
        os.chmod(interpreter, 0o755)
        return dict(ansible_python_interpreter=interpreter, token_certificate_user_pin=user_pin,
                    token_certificate_path=os.path.join(directory, 'vpn.pem'))

    def certificate_path(self, host):
        if host in self.printers:
            return os.path.join(self.work, 'hosts', host, 'cert.pem')
        return os.path.join(self.work, 'hosts', host, 'vpn.pem')

    def run(self, name, playbook, extra_args=()):
        """Run a playbook over the fleet; returns (seconds, records). Fails loudly if it fails."""
        self.runs += 1
        stem = os.path.join(self.work, 'runs', '%02d-%s' % (self.runs, name))
        os.makedirs(os.path.dirname(stem), exist_ok=True)
        env = dict(self.env)
        env[RECORD_ENV] = stem + '.jsonl'
        command = [ANSIBLE_PLAYBOOK, '-i', self.inventory, playbook, '-e', 'rotate_splay=0'] + list(extra_args)
        with open(stem + '.log', 'w', encoding='utf-8') as log:
            started = time.monotonic()
            returncode = run_in_own_group(command, cwd=self.work, env=env, stdout=log)
            seconds = time.monotonic() - started
        with open(stem + '.log', encoding='utf-8', errors='replace') as log:
            output = log.read()
        if returncode != 0:
            raise SystemExit('%s failed (rc=%d): %s\n%s' % (name, returncode, ' '.join(command), output[-4000:]))
        records = []
        if os.path.exists(stem + '.jsonl'):
            with open(stem + '.jsonl', encoding='utf-8') as recorded:
                records = [json.loads(line) for line in recorded if line.strip()]
        problems = [record for record in records if record['status'] in ('failed', 'unreachable')]
        if problems:
            raise SystemExit('%s: %d task results failed or unreachable, e.g. %s' % (name, len(problems), problems[0]))
        return seconds, records


def executions(record):
    """How many times a recorded (not skipped) task ran: once, or once per item of a loop not skipped."""
    items = record['result'].get('results')
    if isinstance(items, list) and items:
        return sum(1 for item in items if not (isinstance(item, dict) and item.get('skipped')))
    return 1


def tasks_per_host(fleet, records):
    counts = {host: 0 for host in fleet.hosts}
    for record in records:
        if record['status'] != 'skipped':
            counts[record['host']] += executions(record)
    return counts


def breakdown(records):
    """task name -> (hosts that ran it, hosts that skipped it), in the order of the first result."""
    ran, skipped = collections.OrderedDict(), collections.OrderedDict()
    for record in records:
        ran.setdefault(record['task'], set())
        skipped.setdefault(record['task'], set())
        (skipped if record['status'] == 'skipped' else ran)[record['task']].add(record['host'])
    return [(task, len(ran[task]), len(skipped[task])) for task in ran]


def write_ping_playbook(fleet, path, counts):
    """rotate.yml's plays (hosts, serial, max_fail_percentage, gather_facts) with ping tasks instead of
    the roles: as many per host as counts says (hosts of a play with fewer get the rest skipped by when)."""
    with open(ROTATE, encoding='utf-8') as rotate:
        plays = yaml.safe_load(rotate)
    ping_plays = []
    for play in plays:
        group = play['hosts']
        ping = {key: play[key] for key in ('hosts', 'gather_facts', 'serial', 'max_fail_percentage') if key in play}
        ping['name'] = 'Ping floor: %s' % play.get('name', group)
        group_counts = [counts[host] for host in fleet.groups[group]]
        uniform = len(set(group_counts)) <= 1
        ping['tasks'] = []
        for number in range(max(group_counts, default=0)):
            task = {'name': 'ping %d' % (number + 1), 'ansible.builtin.ping': None}
            if not uniform:
                task['when'] = 'bench_ping_counts[inventory_hostname] > %d' % number
            ping['tasks'].append(task)
        if not uniform:
            ping['vars'] = {'bench_ping_counts': counts}
        ping_plays.append(ping)
    with open(path, 'w', encoding='utf-8') as output:
        yaml.safe_dump(ping_plays, output, sort_keys=False)


def issued_names(server):
    """(common name, serial) of every certificate the CA has issued, from its request log."""
    return frozenset((issued.subject, issued.serial) for issued in server.issued())


def host_certificates(fleet):
    """host -> (serial number, issuer) of the certificate file on the host, None where there is none."""
    found = {}
    for host in fleet.hosts:
        path = fleet.certificate_path(host)
        certificate = None
        if os.path.exists(path):
            with open(path, 'rb') as pem:
                certificate = x509.load_pem_x509_certificate(pem.read())
        found[host] = None if certificate is None else (certificate.serial_number, certificate.issuer)
    return found


def check_certificates(fleet, name, before, issued_before):
    """Every host has a certificate from the CA that differs from `before`'s, and the CA's depot has a new
    certificate for every host; returns how many hosts were renewed."""
    ca = fleet.server.intermediate_certificate.subject
    after = host_certificates(fleet)
    stale = [host for host in fleet.hosts if after[host] is None or after[host][1] != ca or after[host] == before.get(host)]
    new_files = issued_names(fleet.server) - issued_before
    common_names = sorted(common_name for common_name, dummy in new_files)
    if stale or common_names != sorted(fleet.hosts):
        raise SystemExit('%s: expected a new certificate from the CA on each of %d hosts; not renewed: %s; the CA issued %d '
                         'certificates, for %s' % (name, len(fleet.hosts), stale[:5], len(new_files), common_names[:5]))
    return len(fleet.hosts) - len(stale)


def check_rotate(fleet, name, records, all_due, state_before):
    """Nothing due: no host changed and no PKIOperation reached the CA. Everything due: one PKIOperation per
    host, every host changed, and every host has a new certificate (check_certificates)."""
    pkioperations_before, certificates_before, issued_before = state_before
    changed = sorted({record['host'] for record in records if record['changed']})
    requests = fleet.server.pkioperation_count() - pkioperations_before
    if not all_due:
        if changed or requests or host_certificates(fleet) != certificates_before:
            raise SystemExit('%s: nothing was due, yet %d hosts changed (%s) and the CA got %d PKIOperations'
                             % (name, len(changed), ', '.join(changed[:5]), requests))
        return 0
    if requests != len(fleet.hosts) or changed != sorted(fleet.hosts):
        raise SystemExit('%s: everything was due, yet the CA got %d PKIOperations for %d hosts and %d hosts reported a change'
                         % (name, requests, len(fleet.hosts), len(changed)))
    return check_certificates(fleet, name, certificates_before, issued_before)


def merge_results(path, results):
    """Read-modify-write: the other benches' keys stay."""
    existing = {}
    if os.path.exists(path):
        with open(path, encoding='utf-8') as handle:
            existing = json.load(handle)
    existing.update(results)
    with open(path, 'w', encoding='utf-8') as handle:
        json.dump(existing, handle, indent=2, sort_keys=True)
        handle.write('\n')


def print_breakdown(title, records):
    print('%s (task: hosts that ran it / skipped it):' % title)
    for task, ran, skipped in breakdown(records):
        print('  %-78s %4d / %d' % (task[:78], ran, skipped))


def group_counts(fleet, counts):
    """'2' when every host ran as many tasks, else 'workstations 2, printers 9' or a range."""
    def describe(hosts):
        values = sorted({counts[host] for host in hosts})
        return '-'.join(str(value) for value in (values[0], values[-1])) if len(values) > 1 else str(values[0])
    parts = [(label, describe(hosts)) for label, hosts in (('ws', fleet.workstations), ('mfp', fleet.printers)) if hosts]
    if len({value for dummy, value in parts}) == 1:
        return parts[0][1]
    return ', '.join('%s %s' % part for part in parts)


def bench(options, work):
    missing = missing_tools()
    if missing:
        raise SystemExit('step-ca missing (%s); run "make deps"' % ', '.join(missing))
    pki = make_pki(os.path.join(work, 'pki'))
    with StepCaServer(os.path.join(work, 'ca'), pki) as server:
        fleet = Fleet(work, server, options.hosts, options.forks)
        provision = os.path.join(work, 'provision.yml')
        with open(provision, 'w', encoding='utf-8') as output:
            yaml.safe_dump([{'name': 'Provision the workstations', 'hosts': 'workstations', 'gather_facts': False,
                             'roles': ['tokenfleet.pki.token_certificate']},
                            {'name': 'Provision the printers', 'hosts': 'printers', 'gather_facts': False,
                             'roles': ['tokenfleet.pki.device_certificate']}], output, sort_keys=False)
        started = time.monotonic()
        dummy, records = fleet.run('provision', provision)
        if server.pkioperation_count() != len(fleet.hosts):
            raise SystemExit('provisioning: expected one PKIOperation for each of %d hosts, the CA got %d'
                             % (len(fleet.hosts), server.pkioperation_count()))
        check_certificates(fleet, 'provisioning', {}, frozenset())
        print('provisioned %d hosts (%d workstations with a SoftHSM2 token each, %d printers) in %.1f s, not timed'
              % (len(fleet.hosts), len(fleet.workstations), len(fleet.printers), time.monotonic() - started))

        seconds = collections.defaultdict(list)
        counts, renewed = {}, []
        for number in range(1, options.repeats + 1):
            for case, extra in (('none_due', []), ('all_due', ALL_DUE)):
                state_before = server.pkioperation_count(), host_certificates(fleet), issued_names(server)
                elapsed, records = fleet.run('rotate-%s-%d' % (case, number), ROTATE, extra)
                result = check_rotate(fleet, 'rotate %s round %d' % (case, number), records, bool(extra), state_before)
                if extra:
                    renewed.append(result)
                per_host = tasks_per_host(fleet, records)
                if case not in counts:
                    counts[case] = per_host
                    print_breakdown('rotate.yml, %s' % case.replace('_', ' '), records)
                    write_ping_playbook(fleet, os.path.join(work, 'ping-%s.yml' % case), per_host)
                elif per_host != counts[case]:
                    raise SystemExit('rotate %s round %d ran other task counts per host than round 1' % (case, number))
                seconds['rotate', case].append(elapsed)

                elapsed, records = fleet.run('ping-%s-%d' % (case, number), os.path.join(work, 'ping-%s.yml' % case), extra)
                if tasks_per_host(fleet, records) != counts[case]:
                    raise SystemExit('the ping playbook for %s did not run the expected tasks per host' % case)
                seconds['ping', case].append(elapsed)
                print('round %d %-8s rotate %7.2f s   ping %7.2f s\n'
                      % (number, case.replace('_', ' '), seconds['rotate', case][-1], elapsed))
    return fleet, seconds, counts, renewed


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--hosts', type=int, default=100, help='simulated hosts, a third of them printers (default 100)')
    parser.add_argument('--repeats', type=int, default=3, help='timed rounds; the medians are reported (default 3)')
    parser.add_argument('--forks', type=int, default=5, help='ansible forks of every run (default 5, ansible\'s own)')
    parser.add_argument('--output', default=os.path.join(REPO, 'bench', 'results.json'))
    parser.add_argument('--keep', help='work in this directory and keep it (logs, inventory, recorded results)')
    options = parser.parse_args()
    if options.hosts < 2 or options.repeats < 1:
        parser.error('--hosts must be at least 2 (a workstation and a printer) and --repeats at least 1')
    # make's SIGTERM ends the run through the context managers, which stop step-ca
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if options.keep:
        os.makedirs(options.keep, exist_ok=True)
        fleet, seconds, counts, renewed = bench(options, os.path.abspath(options.keep))
    else:
        with tempfile.TemporaryDirectory(prefix='fleet-bench-') as work:
            fleet, seconds, counts, renewed = bench(options, work)

    median = {key: statistics.median(values) for key, values in seconds.items()}
    results = {
        'fleet_hosts': {'value': len(fleet.hosts), 'unit': 'count'},
        'fleet_forks': {'value': options.forks, 'unit': 'count'},
        'fleet_repeats': {'value': options.repeats, 'unit': 'count'},
        'rotate_all_due_renewed_hosts': {'value': min(renewed), 'unit': 'count'},
    }
    print()
    print('fleet: %d hosts (%d workstations, %d printers), local connection, forks %d, rotate.yml\'s serial, '
          'median of %d rounds' % (len(fleet.hosts), len(fleet.workstations), len(fleet.printers), options.forks, options.repeats))
    print('%-10s %10s %10s %16s %8s' % ('', 'rotate s', 'ping s', 'tasks per host', 'ratio'))
    for case in ('none_due', 'all_due'):
        rotate, ping = median['rotate', case], median['ping', case]
        ratio = rotate / ping
        print('%-10s %10.2f %10.2f %16s %8.2f' % (case.replace('_', ' '), rotate, ping, group_counts(fleet, counts[case]), ratio))
        results.update({
            'rotate_%s_seconds' % case: {'value': round(rotate, 2), 'unit': 's'},
            'ping_%s_seconds' % case: {'value': round(ping, 2), 'unit': 's'},
            'rotate_%s_to_ping_ratio' % case: {'value': round(ratio, 2), 'unit': 'x'},
            'rotate_%s_tasks' % case: {'value': sum(counts[case].values()), 'unit': 'count'},
        })
    print('every all-due run renewed all %d hosts (one PKIOperation and a new certificate each)' % len(fleet.hosts))
    merge_results(options.output, results)
    print('written: %s' % options.output)


if __name__ == '__main__':
    main()
