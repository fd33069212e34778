# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""playbooks/rotate.yml and report.yml run as AWX runs them (ansible-runner, a fresh project copy per job, see
awx_jobs.py) against step-ca: a store outside the project, a failing host early in the order, three slices at the
same time, and a sliced rotation cancelled in the middle (SIGINT, SIGKILL 5 s later) followed by the next run.

What the CA did is counted from step-ca's request log (one line per request; an issued certificate carries the
certificate, so certificates are counted per common name, which is the host's name here); per slice, a proxy in
front of the CA counts the PKIOperations that slice sent. No real AWX: no container, no job scheduler, no
workflow - ansible-runner is the library AWX starts ansible-playbook with.
"""

from __future__ import annotations

import collections
import datetime
import json
import os
import subprocess
import sys
import time

from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_der_public_key

from awx_jobs import PROVISION, Fleet, cancel, public_der
from harness import REPO_ROOT, free_port
from stepca import verify_chain

sys.path.insert(0, os.path.join(REPO_ROOT, 'tests', 'fakes'))
from delay_proxy import DelayProxy  # noqa: E402  pylint: disable=wrong-import-position,import-error

ROTATE_NOW = {'rotate_splay': 0}
ALL_DUE = dict(ROTATE_NOW, token_certificate_renew_before=400, device_certificate_renew_before=400)
SLICES = 3


def issued_per_host(server, fleet):
    """host -> how many certificates step-ca has issued for its common name."""
    counts = collections.Counter(issued.certificate.subject.rfc4514_string() for issued in server.issued())
    return {host: counts['CN=%s' % host] for host in fleet.hosts}


def slices(fleet):
    """AWX's rule: host i of the inventory goes to slice i mod N."""
    return [[host for index, host in enumerate(fleet.hosts) if index % SLICES == number] for number in range(SLICES)]


def snapshot(fleet, hosts):
    """(inode, mtime, size) of every file in the hosts' directories."""
    found = {}
    for host in hosts:
        for top in fleet.state_dirs(host):
            for root, dummy, files in os.walk(top):
                for name in files:
                    status = os.stat(os.path.join(root, name))
                    found[os.path.join(root, name)] = (status.st_ino, status.st_mtime_ns, status.st_size)
    return found


def provision(fleet):
    job = fleet.run_job('provision.yml', plays=PROVISION)
    assert job.rc == 0, job.output()
    assert all(fleet.serials().values()), fleet.serials()
    return job


def test_a_second_job_from_a_fresh_project_copy_asks_the_ca_nothing(stepca, tmp_path):
    """Two EE jobs: each sees a new copy of the project; the device state lives in a store outside both."""
    server = stepca()
    fleet = Fleet(tmp_path, 0, 3, server.url, server.root_pem_path, server.challenge)
    first = fleet.run_job('rotate.yml', extravars=ROTATE_NOW)
    # A new store: the printers' directories did not exist, a rotation makes them and enrols every printer.
    assert first.rc == 0, first.output()
    assert server.pkioperation_count() == 3
    for host in fleet.printers:
        assert fleet.certificate(host).subject.rfc4514_string() == 'CN=%s' % host
        assert sorted(os.listdir(os.path.join(fleet.store, '_delivery', host))) == ['bundle.p12', 'cert.pem', 'chain.pem']
        assert oct(os.stat(os.path.join(fleet.store, host)).st_mode & 0o777) == '0o700'
    assert not os.path.exists(os.path.join(first.directory, 'project', 'device-keys'))
    serials = fleet.serials()

    second = fleet.run_job('rotate.yml', extravars=ROTATE_NOW)
    assert second.rc == 0, second.output()
    assert second.directory != first.directory
    assert server.pkioperation_count() == 3  # no request to the CA
    assert second.recap()['changed'] == {}
    assert fleet.serials() == serials


def test_a_broken_printer_early_in_the_order_stops_nobody(stepca, tmp_path):
    server = stepca()
    fleet = Fleet(tmp_path, 3, 5, server.url, server.root_pem_path, server.challenge)
    provision(fleet)
    before, issued_before = fleet.serials(), issued_per_host(server, fleet)
    closed = 'http://127.0.0.1:%d/scep/tokenfleet' % free_port()
    fleet.host_vars['mfp-01']['device_certificate_scep_url'] = closed
    fleet.host_vars['ws-01']['token_certificate_scep_url'] = closed

    job = fleet.run_job('rotate.yml', extravars=ALL_DUE)
    assert job.rc == 2, job.output()
    assert job.recap()['failures'] == {'mfp-01': 1, 'ws-01': 1}, job.output()
    after, issued_after = fleet.serials(), issued_per_host(server, fleet)
    for host in fleet.hosts:
        if host in ('mfp-01', 'ws-01'):
            assert after[host] == before[host] and issued_after[host] == issued_before[host]
            record = json.loads(open(fleet.certificate_path(host) + '.error.json', encoding='utf-8').read())
            assert 'refused' in record['reason'], record
        else:
            assert after[host] != before[host], host  # renewed
            assert issued_after[host] == issued_before[host] + 1, host


def test_three_slices_at_once_renew_every_host_once_and_the_report_is_complete(stepca, tmp_path):
    server = stepca()
    fleet = Fleet(tmp_path, 20, 10, server.url, server.root_pem_path, server.challenge)
    provision(fleet)
    before, issued_before = fleet.serials(), issued_per_host(server, fleet)
    parts = slices(fleet)
    proxies = [DelayProxy(server.http_port, hold=0, path='/scep/tokenfleet').start() for dummy in parts]
    try:
        jobs = [fleet.start_job('rotate.yml', hosts=part, extravars=ALL_DUE,
                                inventory_vars=dict(token_certificate_scep_url=proxy.url, device_certificate_scep_url=proxy.url))
                for part, proxy in zip(parts, proxies)]
        # When a slice ends, its files are taken down; no other slice may change them afterwards.
        done = {}
        while len(done) < len(jobs):
            for number, job in enumerate(jobs):
                if number not in done and not job.thread.is_alive():
                    done[number] = snapshot(fleet, parts[number])
            time.sleep(0.2)
        for job in jobs:
            job.wait()
            assert job.rc == 0, job.output()
        for job, part in zip(jobs, parts):
            assert job.hosts() - {'localhost'} == set(part)  # each job ran its own slice's hosts only
        for number, part in enumerate(parts):
            assert snapshot(fleet, part) == done[number], 'a file of slice %d changed after it ended' % number
        assert [proxy.pki_operations for proxy in proxies] == [len(part) for part in parts]
    finally:
        for proxy in proxies:
            proxy.stop()
    issued_after = issued_per_host(server, fleet)
    assert {host: issued_after[host] - issued_before[host] for host in fleet.hosts} == dict.fromkeys(fleet.hosts, 1)
    latest = {issued.certificate.subject.rfc4514_string()[3:]: issued.certificate for issued in server.issued()}
    for host in fleet.hosts:
        assert fleet.certificate(host) == latest[host] and fleet.serials()[host] != before[host], host

    report_dir = tmp_path / 'report'
    report = fleet.run_job('report.yml', extravars=dict(report_dir=str(report_dir)))
    assert report.rc == 0, report.output()
    rows = json.loads((report_dir / 'fleet-report.json').read_text())['rows']
    assert sorted(row['host'] for row in rows) == sorted(fleet.hosts)
    for row in rows:
        assert row['status'] == 'valid' and row['last_error'] is None, row
        assert int(row['serial'], 16) == latest[row['host']].serial_number, row


def token_objects(fleet, host):
    """The token's objects labelled vpn: kind -> list of DER values (public key SubjectPublicKeyInfo, certificate)."""
    hsm = fleet.hsms[host]
    listing = hsm.pkcs11_tool('--token-label', host, '--login', '--list-objects', pin=fleet.user_pin).stdout
    kinds = collections.Counter(line.split(' Object')[0] for line in listing.splitlines() if ' Object' in line)
    read = {}
    for kind in ('pubkey', 'cert'):
        path = os.path.join(hsm.directory, 'read.der')
        hsm.pkcs11_tool('--token-label', host, '--login', '--read-object', '--type', kind, '--label', 'vpn',
                        '--output-file', path, pin=fleet.user_pin)
        with open(path, 'rb') as der:
            read[kind] = der.read()
        os.unlink(path)
    return kinds, read


def openssl_public(*argv):
    return subprocess.run(['openssl'] + list(argv), capture_output=True, check=True, timeout=60).stdout


def test_a_cancelled_sliced_rotation_and_the_next_run(stepca, tmp_path):
    """Provisioned with 6-hour certificates, then the CA issues 3-day ones: with renew_before 1 day every host is due
    once, and a host renewed is not due again, as in the next scheduled run."""
    server = stepca(lifetime=datetime.timedelta(hours=6))
    fleet = Fleet(tmp_path, 8, 4, server.url, server.root_pem_path, server.challenge)
    provision(fleet)
    server.stop()
    server.lifetime = datetime.timedelta(days=3)
    server.start()
    provisioned = fleet.serials()
    due = dict(ROTATE_NOW, token_certificate_renew_before=1, device_certificate_renew_before=1)
    proxy = DelayProxy(server.http_port, hold=2.0, path='/scep/tokenfleet').start()
    try:
        via_proxy = dict(token_certificate_scep_url=proxy.url, device_certificate_scep_url=proxy.url)
        # After the 9th reply the proxy holds every reply: the cancel lands while requests are known to be in flight
        # (the CA has answered them, the hosts do not have the answers), whatever the machine's speed.
        proxy.gate_after(9)
        jobs = [fleet.start_job('rotate.yml', hosts=part, extravars=due, inventory_vars=via_proxy) for part in slices(fleet)]
        forwarded = [proxy.next_reply(120) for dummy in range(9)]
        assert None not in forwarded, [job.output() for job in jobs]
        deadline = time.monotonic() + 120
        while proxy.held == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert proxy.held > 0, [job.output() for job in jobs]
        time.sleep(max(0.0, forwarded[-1] + 0.5 - time.monotonic()))
        cancel(jobs, grace=5.0)  # AWX's cancel: SIGINT to each job's ansible-playbook group, SIGKILL 5 s later
        for job in jobs:
            job.wait(60)
        cancelled = fleet.serials()
        renewed = sorted(host for host in fleet.hosts if cancelled[host] != provisioned[host])
        assert 0 < len(renewed) < len(fleet.hosts), (renewed, [job.output() for job in jobs])
        issued_cancelled = issued_per_host(server, fleet)

        proxy.hold = 0
        proxy.open_gate()
        again = [fleet.start_job('rotate.yml', hosts=part, extravars=due, inventory_vars=via_proxy) for part in slices(fleet)]
        for job in again:
            job.wait()
            assert job.rc == 0, job.output()
    finally:
        proxy.stop()
    final, issued_final = fleet.serials(), issued_per_host(server, fleet)
    # What the cancelled and the next run did, per host (printed for the record; pytest -s shows it).
    print('certificates issued per host (provision + cancelled run, then after the next run), renewed before the '
          'cancel: %s' % dict((host, (issued_cancelled[host], issued_final[host], host in renewed)) for host in fleet.hosts))
    for host in renewed:  # renewed before the cancel: nothing asked of the CA for them
        assert issued_final[host] == issued_cancelled[host] and final[host] == cancelled[host], host
    soon = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=2)
    for host in fleet.hosts:  # every host converged: a 3-day certificate from the CA, its key beside it
        certificate = fleet.certificate(host)
        assert certificate.not_valid_after_utc > soon and final[host] != provisioned[host], host
        ok, output = verify_chain(server, fleet.certificate_path(host))
        assert ok, output
        if host in fleet.printers:
            directory = os.path.join(fleet.store, host)
            assert openssl_public('pkey', '-pubout', '-in', os.path.join(directory, 'key.pem')) == \
                openssl_public('x509', '-noout', '-pubkey', '-in', os.path.join(directory, 'cert.pem')), host
        else:
            kinds, objects = token_objects(fleet, host)
            assert kinds == {'Private Key': 1, 'Public Key': 1, 'Certificate': 1}, (host, kinds)
            assert x509.load_der_x509_certificate(objects['cert']) == certificate, host
            assert public_der(certificate.public_key()) == public_der(load_der_public_key(objects['pubkey'])), host
    # Nothing left behind by the killed jobs (needs scep_enroll to write the bundle itself and clean up: "bundle").
    assert fleet.leftovers() == []
