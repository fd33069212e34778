# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Jobs the way AWX runs them, for test_awx_jobs.py: ansible-runner, one private_data_dir per job with a fresh copy
of the project (``playbooks/``, as an EE checks the project out for every job), the collection from the checkout.

A simulated fleet (``Fleet``) on the local connection: workstations, each with a SoftHSM2 configuration and token of
its own that it reaches through ``token_certificate_environment`` (SOFTHSM2_CONF), and printers enrolled on the
controller with their state in one store outside every project copy. Secrets reach the jobs through the
environment, as AWX credentials inject them (PKCS11_USER_PIN, SCEP_CHALLENGE_PASSWORD, DEVICE_PKCS12_PASSPHRASE).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import sys
import time
import typing as t

import ansible_runner
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from harness import REPO_ROOT, SoftHSM, ansible_env, random_pin

PROVISION = [
    {'name': 'Workstations', 'hosts': 'workstations', 'gather_facts': False, 'roles': ['tokenfleet.pki.token_certificate']},
    {'name': 'Printers', 'hosts': 'printers', 'gather_facts': False, 'roles': ['tokenfleet.pki.device_certificate']},
]
JOB_TIMEOUT = 600
LEFTOVER = re.compile(r'(\.new$|^\.tokenfleet-)')


def public_der(public_key: t.Any) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


class Fleet:
    """``Fleet(directory, workstations, printers, url, root_pem, challenge)``: host names ws-NN and mfp-NN, in inventory order
    (workstations first, each group in name order).

    Per workstation: ``<directory>/hosts/<host>/`` with softhsm2.conf, tokens/ and pki/vpn.pem. Printers: the store
    ``<directory>/store`` (``<store>/<host>``, ``<store>/_delivery/<host>``).
    """

    def __init__(self, directory: str | os.PathLike, workstations: int, printers: int, url: str, root_pem: str,
                 challenge: str) -> None:
        self.directory = os.fspath(directory)
        self.store = os.path.join(self.directory, 'store')
        self.user_pin, self.challenge, self.passphrase = random_pin(), challenge, random_pin()
        self.url = url
        self.root_pem = root_pem
        self.workstations = ['ws-%02d' % number for number in range(1, workstations + 1)]
        self.printers = ['mfp-%02d' % number for number in range(1, printers + 1)]
        self.hsms: dict[str, SoftHSM] = {}
        self.host_vars: dict[str, dict[str, t.Any]] = {}
        for host in self.workstations:
            hsm = SoftHSM(os.path.join(self.directory, 'hosts', host))
            hsm.init_token(host, random_pin(), self.user_pin)
            self.hsms[host] = hsm
            self.host_vars[host] = dict(token_certificate_environment={'SOFTHSM2_CONF': hsm.conf},
                                        token_certificate_path=self.certificate_path(host))
        for host in self.printers:
            self.host_vars[host] = {}
        self.jobs = 0

    @property
    def hosts(self) -> list[str]:
        return self.workstations + self.printers

    def certificate_path(self, host: str) -> str:
        if host in self.printers:
            return os.path.join(self.store, host, 'cert.pem')
        return os.path.join(self.directory, 'hosts', host, 'pki', 'vpn.pem')

    def certificate(self, host: str) -> x509.Certificate | None:
        path = self.certificate_path(host)
        if not os.path.exists(path):
            return None
        with open(path, 'rb') as pem:
            return x509.load_pem_x509_certificate(pem.read())

    def serials(self) -> dict[str, int | None]:
        return {host: getattr(self.certificate(host), 'serial_number', None) for host in self.hosts}

    def state_dirs(self, host: str) -> list[str]:
        """Where a host's files are: the certificate's directory and the token directory, or the store's two."""
        if host in self.printers:
            return [os.path.join(self.store, host), os.path.join(self.store, '_delivery', host)]
        return [os.path.dirname(self.certificate_path(host)), self.hsms[host].token_dir]

    def leftovers(self) -> list[str]:
        """``.new`` files and ``.tokenfleet-*`` temp files in any host's directories."""
        found = []
        for host in self.hosts:
            for top in self.state_dirs(host):
                for root, dummy, files in os.walk(top):
                    found += [os.path.join(root, name) for name in files if LEFTOVER.search(name)]
        return sorted(found)

    def inventory(self, hosts: t.Iterable[str], **extra: t.Any) -> dict[str, t.Any]:
        """The inventory of ``hosts`` (a slice or the whole fleet); ``extra``: variables for all of them."""
        hosts = list(hosts)
        common = dict(ansible_connection='local', ansible_python_interpreter=sys.executable,
                      token_certificate_scep_url=self.url, token_certificate_ca_certificate_path=self.root_pem,
                      token_certificate_pkcs11_module=os.path.realpath('/usr/lib/softhsm/libsofthsm2.so'),
                      device_certificate_scep_url=self.url, device_certificate_ca_certificate_path=self.root_pem,
                      device_certificate_store=self.store, device_certificate_timeout=10, token_certificate_timeout=10)
        common.update(extra)
        return {'all': {'vars': common, 'children': {
            'workstations': {'hosts': {host: self.host_vars[host] for host in self.workstations if host in hosts}},
            'printers': {'hosts': {host: self.host_vars[host] for host in self.printers if host in hosts}}}}}

    def env(self) -> dict[str, str]:
        """The job's environment: the tests' ansible settings, the .venv's ansible-playbook first on PATH (ansible-runner
        looks it up there) and the credentials AWX would inject."""
        env = ansible_env()
        env.pop('SOFTHSM2_CONF', None)  # each workstation has its own, from its host variables
        env.update(PATH=os.path.dirname(sys.executable) + os.pathsep + env.get('PATH', '/usr/bin:/bin'),
                   PKCS11_USER_PIN=self.user_pin, SCEP_CHALLENGE_PASSWORD=self.challenge,
                   DEVICE_PKCS12_PASSPHRASE=self.passphrase)
        return env

    def start_job(self, playbook: str, hosts: t.Iterable[str] | None = None, extravars: dict[str, t.Any] | None = None,
                  inventory_vars: dict[str, t.Any] | None = None, plays: list[dict[str, t.Any]] | None = None) -> Job:
        """An ansible-runner job in a new private_data_dir with a fresh copy of playbooks/ as its project."""
        self.jobs += 1
        job = Job(os.path.join(self.directory, 'jobs', '%02d-%s' % (self.jobs, os.path.splitext(playbook)[0])))
        shutil.copytree(os.path.join(REPO_ROOT, 'playbooks'), os.path.join(job.directory, 'project'),
                        ignore=shutil.ignore_patterns('device-keys', 'device-certificates'))
        if plays is not None:
            with open(os.path.join(job.directory, 'project', playbook), 'w', encoding='utf-8') as output:
                yaml.safe_dump(plays, output, sort_keys=False)
        os.makedirs(os.path.join(job.directory, 'inventory'))
        with open(os.path.join(job.directory, 'inventory', 'hosts.yml'), 'w', encoding='utf-8') as output:
            yaml.safe_dump(self.inventory(self.hosts if hosts is None else hosts, **(inventory_vars or {})), output)
        job.thread, job.runner = ansible_runner.run_async(
            private_data_dir=job.directory, playbook=playbook, envvars=self.env(), extravars=extravars or {},
            quiet=True, settings={'pexpect_timeout': 1})
        return job

    def run_job(self, playbook: str, **kwargs: t.Any) -> Job:
        job = self.start_job(playbook, **kwargs)
        job.wait()
        return job


class Job:
    """An ansible-runner job: its private_data_dir, thread and Runner."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.thread: t.Any = None
        self.runner: t.Any = None

    def wait(self, timeout: float = JOB_TIMEOUT) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), 'job %s did not end within %d s' % (self.directory, timeout)

    @property
    def rc(self) -> int:
        return self.runner.rc

    def output(self) -> str:
        tail = self.runner.stdout.read()[-6000:]
        return '--- job %s rc=%s status=%s\n%s' % (self.directory, self.runner.rc, self.runner.status, tail)

    def hosts(self) -> set[str]:
        """Every host the job's events name."""
        return {event['event_data']['host'] for event in self.runner.events if event.get('event_data', {}).get('host')}

    def recap(self) -> dict[str, dict[str, t.Any]]:
        """The play recap: counter -> {host: count} (ok, changed, failures, ...)."""
        for event in self.runner.events:
            if event['event'] == 'playbook_on_stats':
                return event['event_data']
        raise AssertionError('no play recap in %s' % self.directory)

    def playbook_pid(self) -> int:
        """The ansible-playbook process ansible-runner started for this job: a child of this process whose command
        line names the job's private_data_dir (pexpect makes it the leader of its own session and process group)."""
        for entry in os.listdir('/proc'):
            if not entry.isdigit():
                continue
            try:
                with open('/proc/%s/stat' % entry, encoding='utf-8') as stat:
                    parent = int(stat.read().rsplit(')', 1)[1].split()[1])
                with open('/proc/%s/cmdline' % entry, 'rb') as cmdline:
                    argv = cmdline.read().decode('utf-8', 'replace').split('\0')
            except (OSError, ValueError, IndexError):
                continue
            if parent == os.getpid() and any(arg.endswith('ansible-playbook') for arg in argv[:2]) \
                    and any(self.directory in arg for arg in argv):
                return int(entry)
        raise AssertionError('no ansible-playbook process for %s' % self.directory)


def cancel(jobs: t.Sequence[Job], grace: float = 5.0) -> None:
    """What AWX does on cancel, for jobs running at once: SIGINT to every job's ansible-playbook process group,
    SIGKILL ``grace`` seconds later."""
    groups = [os.getpgid(job.playbook_pid()) for job in jobs]
    assert os.getpgid(0) not in groups
    for group in groups:
        os.killpg(group, signal.SIGINT)
    time.sleep(grace)
    for group in groups:
        try:
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            pass
