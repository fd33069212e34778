# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Run the unit tests (``tests/unit``) in ``.venv`` and on every Python the modules are tested on (``make units``).

Usage: ``.venv/bin/python tests/utils/run_units.py [pytest arguments]``

First pytest runs in this virtualenv (``.venv``), then once per Python that ``tests/config.yml``
declares for modules and the machine has (found by ``pythons.py``; a version not found is named and
left out, not an error), each in a virtualenv of its own, ``.tmp/units-venvs/<X.Y>``, with
``requirements.txt`` and ``tests/requirements.txt``. A virtualenv is kept while its stamp (the
interpreter, resolved, its version and the contents of both files) matches, and made anew when it does not. pip takes the
newest release of each package that supports that Python, so ``ansible-core>=2.16`` is 2.17 on
Python 3.10 (2.18 and later need 3.11); the summary names the ansible-core of each run. Every run
happens even after a failure; the exit status is 0 only when all of them passed.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import pythons  # pylint: disable=wrong-import-position

REPO_ROOT = pythons.REPO_ROOT
VENVS_DIR = os.path.join(REPO_ROOT, '.tmp', 'units-venvs')
REQUIREMENTS = ('requirements.txt', os.path.join('tests', 'requirements.txt'))
STAMP = '.requirements.stamp'
VERSION_PROBE = 'import importlib.metadata, sys; print("%d.%d.%d" % sys.version_info[:3], importlib.metadata.version("ansible-core"))'


def log(message: str) -> None:
    print('run_units: ' + message, flush=True)


def requirements_stamp(python: pythons.Python, repo_root: str = REPO_ROOT) -> str:
    """A digest of what a unit-test virtualenv is made from: the interpreter (not the path it is reached by) and the requirement files."""
    digest = hashlib.sha256()
    digest.update(('%s\0%s\0' % (os.path.realpath(python.path), python.full_version)).encode('utf-8'))
    for name in REQUIREMENTS:
        digest.update(name.encode('utf-8') + b'\0')
        with open(os.path.join(repo_root, name), 'rb') as requirements:
            digest.update(requirements.read())
        digest.update(b'\0')
    return digest.hexdigest()


def venv_is_current(venv: str, stamp: str) -> bool:
    try:
        with open(os.path.join(venv, STAMP), encoding='utf-8') as stamp_file:
            return stamp_file.read().strip() == stamp and os.access(os.path.join(venv, 'bin', 'python'), os.X_OK)
    except OSError:
        return False


def ensure_venv(python: pythons.Python, venvs_dir: str = VENVS_DIR, repo_root: str = REPO_ROOT) -> tuple[str | None, str]:
    """Return the interpreter of the unit-test virtualenv for ``python`` (made when missing or stale), or why not."""
    venv = os.path.join(venvs_dir, python.version)
    stamp = requirements_stamp(python, repo_root)
    if venv_is_current(venv, stamp):
        log('Python %s: %s is up to date' % (python.version, os.path.relpath(venv, repo_root)))
        return os.path.join(venv, 'bin', 'python'), ''
    log('Python %s: making %s with %s' % (python.version, os.path.relpath(venv, repo_root), ' and '.join(REQUIREMENTS)))
    stamp_path = os.path.join(venv, STAMP)
    if os.path.exists(stamp_path):
        os.remove(stamp_path)
    steps = [
        [python.path, '-m', 'venv', '--clear', venv],
        [os.path.join(venv, 'bin', 'python'), '-m', 'pip', 'install', '--disable-pip-version-check', '--quiet']
        + [arg for name in REQUIREMENTS for arg in ('-r', os.path.join(repo_root, name))],
    ]
    started = time.monotonic()
    for step in steps:
        rc = subprocess.run(step, cwd=repo_root, stdin=subprocess.DEVNULL, check=False).returncode
        if rc != 0:
            return None, '%s exited with %d' % (' '.join(step[:3]), rc)
    with open(stamp_path, 'w', encoding='utf-8') as stamp_file:
        stamp_file.write(stamp + '\n')
    log('Python %s: virtualenv made in %d s' % (python.version, time.monotonic() - started))
    return os.path.join(venv, 'bin', 'python'), ''


def versions_of(interpreter: str) -> str:
    """'Python X.Y.Z, ansible-core A.B.C' of an interpreter (as reported by it)."""
    completed = subprocess.run([interpreter, '-c', VERSION_PROBE], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               check=False)
    fields = completed.stdout.decode('utf-8').split()
    if completed.returncode != 0 or len(fields) != 2:
        return 'versions unknown'
    return 'Python %s, ansible-core %s' % tuple(fields)


def run_pytest(interpreter: str, arguments: list[str]) -> int:
    return subprocess.run([interpreter, '-m', 'pytest', os.path.join('tests', 'unit')] + arguments,
                          cwd=REPO_ROOT, stdin=subprocess.DEVNULL, check=False).returncode


def main() -> int:
    arguments = sys.argv[1:]
    found, missing = pythons.find_pythons()
    for line in pythons.describe(found, missing):
        log(line)
    results = []
    label = '.venv'
    log('pytest tests/unit in %s (%s)' % (label, versions_of(sys.executable)))
    rc = run_pytest(sys.executable, arguments)
    results.append((label, versions_of(sys.executable), 'passed' if rc == 0 else 'FAILED (pytest exited with %d)' % rc))
    for python in found:
        label = 'Python %s' % python.version
        interpreter, error = ensure_venv(python)
        if interpreter is None:
            results.append((label, python.full_version, 'FAILED (virtualenv not made: %s)' % error))
            continue
        versions = versions_of(interpreter)
        log('pytest tests/unit on %s (%s)' % (label, versions))
        rc = run_pytest(interpreter, arguments)
        results.append((label, versions, 'passed' if rc == 0 else 'FAILED (pytest exited with %d)' % rc))
    log('summary:')
    for label, versions, outcome in results:
        log('  %-12s %-42s %s' % (label, versions, outcome))
    passed = [label for label, dummy, outcome in results if outcome == 'passed']
    failed = [label for label, dummy, outcome in results if outcome != 'passed']
    not_found = '; not found, so not tested: Python %s' % ', '.join(item.version for item in missing) if missing else ''
    log('unit tests ran on %s: %d passed%s%s' % (
        ', '.join(label for label, dummy, dummy2 in results), len(passed),
        ', FAILED on %s' % ', '.join(failed) if failed else '', not_found))
    return 0 if not failed else 1


if __name__ == '__main__':
    sys.exit(main())
