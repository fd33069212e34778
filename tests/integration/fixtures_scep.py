# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Fixtures for SCEP tests: our fake SCEP responder (tests/fakes/scep_responder.py) and a private certmonger.

Register in conftest.py with::

    from fixtures_scep import fake_scep, scep_ca  # pylint: disable=unused-import

``fake_scep(**kwargs)`` starts a ``FakeScepServer`` on 127.0.0.1 (port 0) and stops it after the
test; ``scep_ca`` is one RSA CA (key, certificate) shared by the session, so that servers start
fast and messages made for one server can be replayed to another.

``Certmonger`` runs certmonger's session daemon with everything in a temporary directory (HOME,
TMPDIR, a private listening socket instead of D-Bus) and drives it with ``getcert``; the
``certmonger`` fixture starts one and stops it (and every helper it spawned) after the test.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import typing as t

import pytest
from cryptography.hazmat.primitives import serialization

FAKES_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'fakes')
if FAKES_DIR not in sys.path:
    sys.path.insert(0, FAKES_DIR)

from scep_responder import FakeScepServer, make_ca  # noqa: E402  pylint: disable=wrong-import-position

CERTMONGER_SESSION = '/usr/lib/certmonger/certmonger-session'
SCEP_SUBMIT = '/usr/lib/certmonger/scep-submit'
GETCERT = '/usr/bin/getcert'
COMMAND_TIMEOUT = 60


def missing_certmonger() -> list[str]:
    return [path for path in (CERTMONGER_SESSION, SCEP_SUBMIT, GETCERT) if not os.path.exists(path)]


@pytest.fixture(scope='session')
def scep_ca():
    """(RSA key, certificate) of a CA shared by the fake SCEP servers of this session."""
    return make_ca(subject_cn='tokenfleet fake SCEP CA (tests)')


_CONSTRUCTOR = frozenset(inspect.signature(FakeScepServer.__init__).parameters) - {'self'}


@pytest.fixture
def fake_scep(scep_ca) -> t.Iterator[t.Callable[..., FakeScepServer]]:
    """Callable fake_scep(**settings) -> a started FakeScepServer.

    Settings FakeScepServer takes go to it (``ca`` defaults to scep_ca), the others to ``configure()``.
    Every server started this way is stopped after the test (socket closed, hanging handlers woken).
    """
    servers: list[FakeScepServer] = []

    def start(**settings: t.Any) -> FakeScepServer:
        construct = dict((name, settings.pop(name)) for name in list(settings) if name in _CONSTRUCTOR)
        construct.setdefault('ca', scep_ca)
        server = FakeScepServer(**construct)
        server.configure(**settings)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()


@contextlib.contextmanager
def approving_when_pending(server: FakeScepServer) -> t.Iterator[None]:
    """Approve the server's pending request as soon as it has arrived (a fixed delay would race a slow start)."""
    done = threading.Event()

    def approve_once_pending() -> None:
        while not done.wait(0.1):
            if server.pending_transactions:
                server.approve()
                return

    approver = threading.Thread(target=approve_once_pending, daemon=True)
    approver.start()
    try:
        yield
    finally:
        done.set()
        approver.join(5)


def write_pem(path: str, *certificates: t.Any) -> str:
    with open(path, 'wb') as handle:
        for certificate in certificates:
            handle.write(certificate.public_bytes(serialization.Encoding.PEM))
    return path


def wait_for(predicate: t.Callable[[], t.Any], timeout: float, what: str, interval: float = 0.1) -> t.Any:
    """Poll predicate until it returns something true; fail the test after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail('timed out after %.0f s waiting for %s' % (timeout, what))
        time.sleep(interval)


class Certmonger:
    """certmonger's session daemon in a private directory, reached through a private socket (no D-Bus)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.home = os.path.join(directory, 'home')
        self.tmp = os.path.join(directory, 'tmp')
        # a short path: AF_UNIX socket paths are limited to 107 bytes, pytest's tmp_path can be longer
        self.socket_dir = tempfile.mkdtemp(prefix='tfcm-')
        self.socket = os.path.join(self.socket_dir, 'sock')
        self.log_path = os.path.join(directory, 'certmonger.log')
        for path in (self.home, self.tmp):
            os.makedirs(path, exist_ok=True)
        self.env = dict(os.environ)
        for name in list(self.env):
            if name.startswith('CERTMONGER_') or name == 'DBUS_SESSION_BUS_ADDRESS':
                del self.env[name]
        self.env.update(HOME=self.home, TMPDIR=self.tmp, CERTMONGER_PVT_ADDRESS='unix:path=' + self.socket)
        self.process: subprocess.Popen | None = None
        self._log = None

    def start(self) -> Certmonger:
        # -n: no fork, -L: only the private socket (no bus), -d 2: debug log to stderr
        self._log = open(self.log_path, 'wb')  # pylint: disable=consider-using-with
        self.process = subprocess.Popen(  # pylint: disable=consider-using-with
            [CERTMONGER_SESSION, '-n', '-L', '-P', self.socket, '-d', '2'],
            env=self.env, cwd=self.directory, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for(lambda: os.path.exists(self.socket) or self.process.poll() is not None, 20, 'certmonger socket')
        if self.process.poll() is not None:
            pytest.fail('certmonger exited with %s:\n%s' % (self.process.returncode, self.log()))
        wait_for(lambda: self.getcert('list-cas').returncode == 0, 20, 'certmonger to answer getcert list-cas')
        return self

    def stop(self) -> None:
        """Stop the daemon and every helper it spawned (its own process group), bounded in time."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            # the daemon leads its own process group (start_new_session): the signal reaches its helpers too
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(process.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    process.wait(timeout=10)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if self._log is not None:
            self._log.close()
            self._log = None
        shutil.rmtree(self.socket_dir, ignore_errors=True)

    def log(self) -> str:
        with open(self.log_path, 'rb') as handle:
            return handle.read().decode('utf-8', 'replace')

    def getcert(self, *args: str, timeout: float = COMMAND_TIMEOUT) -> subprocess.CompletedProcess:
        return subprocess.run([GETCERT] + list(args), env=self.env, cwd=self.directory, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout, check=False)

    def add_scep_ca(self, name: str, server: FakeScepServer, signing_ca_file: str | None = None) -> None:
        """getcert add-scep-ca, then wait until certmonger has fetched the capabilities and CA certificates."""
        args = ['add-scep-ca', '-c', name, '-u', server.url]
        if signing_ca_file:
            args += ['-N', signing_ca_file]
        result = self.getcert(*args)
        assert result.returncode == 0, result.stdout + result.stderr
        wait_for(lambda: {'GetCACaps', 'GetCACert'} <= {entry.operation for entry in server.request_log}
                 and 'thumbprint' in self.getcert('list-cas', '-c', name).stdout, 30, 'certmonger to fetch the SCEP CA data')

    def request(self, ca: str, request_id: str, key_file: str, cert_file: str, subject: str, *extra: str,
                wait_timeout: int = 30) -> subprocess.CompletedProcess:
        return self.getcert('request', '-c', ca, '-I', request_id, '-k', key_file, '-f', cert_file, '-N', subject,
                            *extra, '-w', '--wait-timeout=%d' % wait_timeout, timeout=wait_timeout + 30)

    def status(self, request_id: str) -> dict[str, str]:
        """Fields of `getcert list -i ID` (status, ca-error, CA, ...)."""
        result = self.getcert('list', '-i', request_id)
        fields = {}
        for line in result.stdout.splitlines():
            match = re.match(r'^\t([a-zA-Z -]+): (.*)$', line)
            if match:
                fields.setdefault(match.group(1), match.group(2))
        return fields

    def wait_status(self, request_id: str, statuses: t.Iterable[str], timeout: float = 30) -> dict[str, str]:
        wanted = set(statuses)

        def reached() -> dict[str, str] | None:
            fields = self.status(request_id)
            return fields if fields.get('status') in wanted else None

        return wait_for(reached, timeout, 'request %s to reach %s' % (request_id, ', '.join(sorted(wanted))), interval=0.2)

    def request_state(self, request_id: str) -> dict[str, str]:
        """certmonger's saved state of a request (its requests/ file: key=value, continuation lines start with a space)."""
        directory = os.path.join(self.home, '.config', 'certmonger', 'requests')
        for name in sorted(os.listdir(directory)):
            fields: dict[str, str] = {}
            key = None
            with open(os.path.join(directory, name), encoding='utf-8') as handle:
                for line in handle.read().splitlines():
                    if line.startswith(' ') and key is not None:
                        fields[key] += '\n' + line[1:]
                    elif '=' in line:
                        key, value = line.split('=', 1)
                        fields[key] = value
            if fields.get('id') == request_id:
                return fields
        raise KeyError('certmonger has no request %s' % request_id)


@pytest.fixture
def certmonger(tmp_path) -> t.Iterator[Certmonger]:
    """A started Certmonger (see above) private to this test; stopped with its helpers afterwards."""
    missing = missing_certmonger()
    if missing:
        pytest.fail('certmonger not installed (%s); run "make deps"' % ', '.join(missing))
    daemon = Certmonger(str(tmp_path / 'certmonger'))
    try:
        yield daemon.start()
    finally:
        daemon.stop()
