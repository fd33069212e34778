# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Find the Pythons the modules are tested on (used by run_sanity.py and run_units.py).

Which versions: those ansible-test takes from ``tests/config.yml`` (``modules.python_requires``)
among the versions it supports, so the declaration there is the only place they are named.

Where: an interpreter counts only when it runs, reports the version asked for and has ``venv``
and ``ensurepip`` (both runners make virtualenvs from it). A pyenv shim is on PATH for every
version pyenv has installed but fails unless that version is selected, so it is tried like
any other candidate, then the interpreters under ``$PYENV_ROOT/versions`` (newest patch
release first) and every ``pythonX.Y`` on PATH are.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONTENT_CONFIG = os.path.join(REPO_ROOT, 'tests', 'config.yml')
PROBE = (
    'import ensurepip, json, sys, venv; '
    'print(json.dumps({"version": "%d.%d.%d" % sys.version_info[:3], "executable": sys.executable}))'
)


@dataclasses.dataclass(frozen=True)
class Python:
    version: str       # X.Y
    full_version: str  # X.Y.Z
    path: str


@dataclasses.dataclass(frozen=True)
class Missing:
    version: str
    reason: str


def module_python_versions(config_path: str = CONTENT_CONFIG) -> tuple[str, ...]:
    """Return the X.Y versions ansible-test reads from tests/config.yml, oldest first."""
    # pylint: disable-next=import-outside-toplevel
    from ansible_test._internal.content_config import load_config
    config = load_config(config_path)
    if config is None:
        raise ValueError('%s could not be parsed (see the warning above)' % config_path)
    return tuple(config.modules.python_versions)


def candidates(version: str, environ: dict[str, str]) -> list[str]:
    """Paths that may be Python ``version``, in the order they are tried (duplicates removed)."""
    paths = []
    if '%d.%d' % sys.version_info[:2] == version:
        paths.append(sys.executable)
    name = 'python' + version
    for directory in environ.get('PATH', '').split(os.pathsep):
        if directory:
            paths.append(os.path.join(directory, name))
    pyenv_root = environ.get('PYENV_ROOT') or os.path.join(environ.get('HOME') or os.path.expanduser('~'), '.pyenv')
    versions_dir = os.path.join(pyenv_root, 'versions')
    pattern = re.compile(r'^%s\.(\d+)$' % re.escape(version))
    releases = []
    if os.path.isdir(versions_dir):
        for entry in os.listdir(versions_dir):
            match = pattern.match(entry)
            if match:
                releases.append((int(match.group(1)), entry))
    for dummy, entry in sorted(releases, reverse=True):
        paths.append(os.path.join(versions_dir, entry, 'bin', name))
    unique = []
    for path in paths:
        if path not in unique and os.path.isfile(path) and os.access(path, os.X_OK):
            unique.append(path)
    return unique


def probe(path: str, version: str, environ: dict[str, str]) -> tuple[Python | None, str]:
    """Run ``path``; return the Python it is when it is ``version`` with venv support, else why not."""
    env = {key: value for key, value in environ.items() if key not in ('PYTHONPATH', 'PYTHONHOME')}
    try:
        completed = subprocess.run([path, '-c', PROBE], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, '%s: %s' % (path, exc)
    if completed.returncode != 0:
        first_line = (completed.stderr.decode('utf-8', 'replace').strip().splitlines() or ['no output'])[0]
        return None, '%s exited with %d (%s)' % (path, completed.returncode, first_line)
    try:
        facts = json.loads(completed.stdout.decode('utf-8').strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None, '%s: unexpected output' % path
    full_version = facts['version']
    if '.'.join(full_version.split('.')[:2]) != version:
        return None, '%s is Python %s' % (path, full_version)
    return Python(version=version, full_version=full_version, path=path), ''


def find_pythons(versions: tuple[str, ...] | None = None,
                 environ: dict[str, str] | None = None) -> tuple[list[Python], list[Missing]]:
    """Return the first working interpreter of each version, and the versions without one (with why)."""
    environ = dict(os.environ if environ is None else environ)
    found, missing = [], []
    for version in module_python_versions() if versions is None else versions:
        reasons = []
        for path in candidates(version, environ):
            python, reason = probe(path, version, environ)
            if python:
                found.append(python)
                break
            reasons.append(reason)
        else:
            missing.append(Missing(version, '; '.join(reasons) or 'no python%s on PATH or under pyenv' % version))
    return found, missing


def describe(found: list[Python], missing: list[Missing]) -> list[str]:
    """Lines naming the Pythons found (with their paths) and those not found (with why)."""
    lines = ['Python %s: %s (%s)' % (python.version, python.path, python.full_version) for python in found]
    lines += ['Python %s: not found (%s)' % (item.version, item.reason) for item in missing]
    return lines
