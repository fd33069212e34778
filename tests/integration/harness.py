# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Integration test harness: a private SoftHSM2 per test, playbook runs with recorded results.

The fixtures in ``conftest.py`` wrap these classes; tests import the helpers directly
(``from harness import assert_four_run, four_run_tasks, random_pin``).
"""

from __future__ import annotations

import ctypes
import dataclasses
import datetime
import json
import os
import re
import secrets
import signal
import socket
import string
import subprocess
import sys
import typing as t

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COLLECTIONS_ROOT = os.path.join(REPO_ROOT, '.tmp', 'collections')
COLLECTION_LINK = os.path.join(COLLECTIONS_ROOT, 'ansible_collections', 'tokenfleet', 'pki')
CALLBACK_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'callback_plugins')
RECORD_ENV = 'TOKENFLEET_RECORD_RESULTS'
SOFTHSM_MODULE = '/usr/lib/softhsm/libsofthsm2.so'
PLAYBOOK_TIMEOUT = 900

PIN_ALPHABET = string.ascii_letters + string.digits

FOUR_RUN = ('check 1', 'run 1', 'check 2', 'run 2')
"""Task names of the four-run pattern (see four_run_tasks() and assert_four_run())."""


def random_pin(length: int = 24) -> str:
    """A random PIN of letters and digits, always containing both.

    Tests use long random PINs so that a leaked PIN cannot hide behind output masking
    of a short common value such as ``1234``.
    """
    if length < 2:
        raise ValueError('a PIN needs at least two characters')
    while True:
        pin = ''.join(secrets.choice(PIN_ALPHABET) for dummy in range(length))
        if any(c.isdigit() for c in pin) and any(c.isalpha() for c in pin):
            return pin


def ensure_collection_link() -> str:
    """Create ``.tmp/collections/ansible_collections/tokenfleet/pki`` -> repository root if missing."""
    if os.path.islink(COLLECTION_LINK) or os.path.exists(COLLECTION_LINK):
        if os.path.realpath(COLLECTION_LINK) != os.path.realpath(REPO_ROOT):
            raise RuntimeError('%s exists but does not point to %s' % (COLLECTION_LINK, REPO_ROOT))
        return COLLECTIONS_ROOT
    os.makedirs(os.path.dirname(COLLECTION_LINK), exist_ok=True)
    os.symlink(os.path.join('..', '..', '..', '..'), COLLECTION_LINK)
    return COLLECTIONS_ROOT


def venv_tool(name: str) -> str:
    """Path of a console script installed next to the running Python (the .venv's)."""
    return os.path.join(os.path.dirname(sys.executable), name)


def free_port() -> int:
    """A TCP port that is free on all interfaces now (nothing listens there until someone binds it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(('', 0))
        return sock.getsockname()[1]


def die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """``preexec_fn`` for test servers: Linux sends the child SIGTERM when the Python process that started it dies.

    prctl(PR_SET_PDEATHSIG) fires when the *thread* that forked exits, so servers must be started
    from a thread that lives as long as they do (pytest runs tests in the main thread).
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def ansible_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """os.environ (or base) plus the settings every ansible-playbook run of the tests uses."""
    env = dict(os.environ if base is None else base)
    env.update(
        ANSIBLE_COLLECTIONS_PATH=ensure_collection_link(),
        ANSIBLE_NOCOLOR='1',
        ANSIBLE_FORCE_COLOR='0',
        ANSIBLE_RETRY_FILES_ENABLED='0',
        ANSIBLE_LOCALHOST_WARNING='0',
        ANSIBLE_INVENTORY_UNPARSED_WARNING='0',
        ANSIBLE_HOST_KEY_CHECKING='0',
        PYTHONDONTWRITEBYTECODE='1',
    )
    env.pop('ANSIBLE_CONFIG', None)
    return env


class SoftHSM:
    """A SoftHSM2 configuration and token directory private to one test."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.conf = os.path.join(directory, 'softhsm2.conf')
        self.token_dir = os.path.join(directory, 'tokens')
        self.module = os.path.realpath(SOFTHSM_MODULE)
        os.makedirs(self.token_dir, exist_ok=True)
        with open(self.conf, 'w', encoding='utf-8') as conf:
            conf.write(
                'directories.tokendir = %s\n'
                'objectstore.backend = file\n'
                'log.level = ERROR\n'
                'slots.removable = false\n' % self.token_dir
            )
        self.env = ansible_env()
        self.env['SOFTHSM2_CONF'] = self.conf

    def extra_conf(self, lines: t.Iterable[str] | str) -> None:
        """Append configuration lines, e.g. ``slots.mechanisms = -CKM_EC_EDWARDS_KEY_PAIR_GEN``.

        SoftHSM reads its configuration when the library is initialised (each new
        process), so call this before the tokens are used.

        A deny list ``slots.mechanisms = -CKM_A,CKM_B`` is written as
        ``slots.mechanisms = -,CKM_A,CKM_B``: SoftHSM 2.6.1 (Debian 12) does not strip
        the ``-`` from the first name, takes ``-CKM_A`` for an unknown mechanism and
        leaves CKM_A enabled. The empty first entry is ignored by every version.
        (``ALL,-CKM_A`` is no deny list at all: it enables only the names listed, and
        neither ``ALL`` nor ``-CKM_A`` is a mechanism name, so it disables everything.)
        """
        if isinstance(lines, str):
            lines = [lines]
        with open(self.conf, 'a', encoding='utf-8') as conf:
            for line in lines:
                line = re.sub(r'^(\s*slots\.mechanisms\s*=\s*)-\s*(?=[^\s,])', r'\1-,', line.rstrip('\n'))
                conf.write(line + '\n')

    def run(self, argv: list[str], check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(
            argv, env=self.env, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=check, timeout=300,
        )

    def slots(self) -> list[dict[str, str]]:
        """Parse ``softhsm2-util --show-slots`` into one dict per slot (slot, label, serial, initialized)."""
        output = self.run(['softhsm2-util', '--show-slots']).stdout
        slots: list[dict[str, str]] = []
        for line in output.splitlines():
            match = re.match(r'^Slot (\d+)\s*$', line)
            if match:
                slots.append({'slot': match.group(1)})
                continue
            match = re.match(r'^\s+(Serial number|Label|Initialized):\s*(.*?)\s*$', line)
            if match and slots:
                key = {'Serial number': 'serial', 'Label': 'label', 'Initialized': 'initialized'}[match.group(1)]
                slots[-1][key] = match.group(2)
        return slots

    def init_token(self, label: str, so_pin: str, user_pin: str) -> str:
        """Initialise the first free token; return its serial number (16 hex digits)."""
        result = self.run([
            'softhsm2-util', '--init-token', '--free', '--label', label, '--so-pin', so_pin, '--pin', user_pin,
        ], check=False)
        if result.returncode != 0:
            raise RuntimeError('softhsm2-util --init-token failed (%d): %s%s' % (result.returncode, result.stdout, result.stderr))
        match = re.search(r'reassigned to slot (\d+)', result.stdout)
        for slot in self.slots():
            if (match and slot['slot'] == match.group(1)) or (not match and slot.get('label') == label):
                return slot['serial']
        raise RuntimeError('initialised token %r not found in softhsm2-util --show-slots' % label)

    def pkcs11_tool(self, *args: str, pin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        """Run OpenSC ``pkcs11-tool --module <SoftHSM> [--pin PIN] args...`` with this SoftHSM's environment."""
        argv = ['pkcs11-tool', '--module', self.module]
        if pin is not None:
            argv += ['--pin', pin]
        return self.run(argv + list(args), check=check)


@dataclasses.dataclass
class PlaybookRun:
    """Outcome of one ansible-playbook run."""

    rc: int
    stdout: str
    stderr: str
    results: list[dict[str, t.Any]]
    playbook: str
    command: list[str]

    def result(self, name: str) -> dict[str, t.Any]:
        """The record of the task called ``name``: {task, host, status, changed, result}."""
        matches = [record for record in self.results if record['task'] == name]
        if not matches:
            raise KeyError('no result for task %r; recorded tasks: %r\n%s' % (name, [r['task'] for r in self.results], self.output()))
        if len(matches) > 1:
            raise ValueError('%d results for task %r; give tasks unique names' % (len(matches), name))
        return matches[0]

    def output(self) -> str:
        """stdout and stderr, for assertion messages."""
        return '--- ansible-playbook rc=%d\n--- stdout:\n%s\n--- stderr:\n%s' % (self.rc, self.stdout, self.stderr)

    def assert_not_leaked(self, *secret_values: str) -> None:
        """Assert that none of the values appears in stdout, stderr or any recorded result."""
        recorded = json.dumps(self.results)
        for value in secret_values:
            for where, text in (('stdout', self.stdout), ('stderr', self.stderr), ('results', recorded)):
                if value in text:
                    at = text.index(value)
                    context = text[max(0, at - 300):at + len(value) + 100].replace(value, '<THE SECRET>')
                    raise AssertionError('a secret value appears in the %s of %s, here:\n%s' % (where, self.playbook, context))


class PlaybookRunner:
    """Writes playbooks into a test's tmp dir and runs them with the .venv's ansible-playbook."""

    def __init__(self, directory: str, env: dict[str, str]) -> None:
        self.directory = directory
        self.env = env
        self.count = 0
        self.inventory = os.path.join(directory, 'inventory.yml')
        self.config = os.path.join(directory, 'ansible.cfg')
        with open(self.inventory, 'w', encoding='utf-8') as inventory:
            yaml.safe_dump({'all': {'hosts': {'localhost': {'ansible_connection': 'local'}}}}, inventory)
        with open(self.config, 'w', encoding='utf-8') as config:
            config.write('[defaults]\n')

    def __call__(
        self,
        tasks: list[dict[str, t.Any]],
        env: dict[str, str] | None = None,
        check: bool = False,
        verbosity: int = 0,
        extra_vars: dict[str, t.Any] | None = None,
        hosts: str = 'localhost',
        handlers: list[dict[str, t.Any]] | None = None,
    ) -> PlaybookRun:
        self.count += 1
        stem = os.path.join(self.directory, 'playbook-%d' % self.count)
        playbook, results_path = stem + '.yml', stem + '.results.jsonl'
        play_tasks = []
        for task in tasks:
            task = dict(task)
            task.setdefault('ignore_errors', True)
            play_tasks.append(task)
        play = {
            'name': 'tokenfleet.pki integration test',
            'hosts': hosts,
            'connection': 'local',
            'gather_facts': False,
            'vars': {'ansible_python_interpreter': sys.executable},
            'tasks': play_tasks,
        }
        if handlers:
            play['handlers'] = handlers
        with open(playbook, 'w', encoding='utf-8') as output:
            yaml.safe_dump([play], output, sort_keys=False)

        command = [venv_tool('ansible-playbook'), '-i', self.inventory, playbook]
        if check:
            command.append('--check')
        if verbosity:
            command.append('-' + 'v' * verbosity)
        if extra_vars:
            vars_file = stem + '.vars.json'
            with open(vars_file, 'w', encoding='utf-8') as output:
                json.dump(extra_vars, output)
            command += ['--extra-vars', '@' + vars_file]

        run_env = dict(self.env)
        run_env.update(
            ANSIBLE_CONFIG=self.config,
            ANSIBLE_CALLBACK_PLUGINS=CALLBACK_DIR,
            ANSIBLE_CALLBACKS_ENABLED='record_results',
            ANSIBLE_LOCAL_TEMP=os.path.join(self.directory, 'ansible-local-tmp'),
            ANSIBLE_REMOTE_TEMP=os.path.join(self.directory, 'ansible-remote-tmp'),
        )
        run_env[RECORD_ENV] = results_path
        run_env.update(env or {})
        completed = subprocess.run(
            command, cwd=self.directory, env=run_env, stdin=subprocess.DEVNULL,
            capture_output=True, text=True, check=False, timeout=PLAYBOOK_TIMEOUT,
        )
        results = []
        if os.path.exists(results_path):
            with open(results_path, encoding='utf-8') as recorded:
                results = [json.loads(line) for line in recorded if line.strip()]
        return PlaybookRun(completed.returncode, completed.stdout, completed.stderr, results, playbook, command)


def _records(results: PlaybookRun | list[dict[str, t.Any]], names: t.Sequence[str]) -> list[dict[str, t.Any]]:
    if isinstance(results, PlaybookRun):
        return [results.result(name) for name in names]
    by_name = {record['task']: record for record in results}
    missing = [name for name in names if name not in by_name]
    assert not missing, 'no result for task(s) %r; recorded: %r' % (missing, list(by_name))
    return [by_name[name] for name in names]


def assert_four_run(results: PlaybookRun | list[dict[str, t.Any]], names: t.Sequence[str]) -> None:
    """Assert the four-run pattern: check mode, run, check mode, run.

    ``names`` are the four task names in that order; they must report changed, changed,
    unchanged, unchanged, and none of them may fail or be skipped.
    """
    assert len(names) == 4, 'assert_four_run needs exactly four task names'
    records = _records(results, names)
    summary = ['%s: status=%s changed=%s msg=%r' % (r['task'], r['status'], r['changed'], r['result'].get('msg')) for r in records]
    detail = '\n'.join(summary)
    assert [r['status'] for r in records] == ['ok'] * 4, 'a task of the four-run pattern did not succeed:\n' + detail
    assert [r['changed'] for r in records] == [True, True, False, False], (
        'expected changed, changed, unchanged, unchanged (check, run, check, run):\n' + detail
    )


# -- tasks for the collection's modules ------------------------------------------------------------------

def module_task(module: str, name: str, args: dict[str, t.Any], check: bool = False) -> dict[str, t.Any]:
    """A task ``name`` calling ``tokenfleet.pki.<module>`` with a copy of ``args``; in check mode if ``check``."""
    task: dict[str, t.Any] = {'name': name, 'tokenfleet.pki.' + module: dict(args)}
    if check:
        task['check_mode'] = True
    return task


def four_run_tasks(module: str, args: dict[str, t.Any]) -> list[dict[str, t.Any]]:
    """The four tasks of the four-run pattern, named by FOUR_RUN: the 'check *' ones in check mode."""
    return [module_task(module, name, args, check=name.startswith('check ')) for name in FOUR_RUN]


def token_args(token: dict[str, t.Any]) -> dict[str, str]:
    """Module options that select the ``token`` fixture's token and log in as its user."""
    return dict(pkcs11_module=token['hsm'].module, token_label=token['label'], user_pin=token['user'])


# -- a throwaway test CA -----------------------------------------------------------------------------------

def make_test_ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A throwaway CA 'CN=tokenfleet test CA' (P-256, valid for a year): (key, certificate)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, 'tokenfleet test CA')])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def issue_certificate(
    ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
    public_key: t.Any,
    common_name: str,
    days: int = 30,
    start_offset_days: int = 0,
) -> x509.Certificate:
    """A certificate 'CN=<common_name>' for ``public_key`` signed by the test CA ``ca`` (from make_test_ca())."""
    ca_key, ca_cert = ca
    start = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=start_offset_days)
    return (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(ca_cert.subject).public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start - datetime.timedelta(minutes=5)).not_valid_after(start + datetime.timedelta(days=days))
            .sign(ca_key, hashes.SHA256()))
