# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Run ``ansible-test sanity`` on this collection without Docker (used by ``make sanity``).

Usage: ``.venv/bin/python tests/utils/run_sanity.py [extra ansible-test sanity arguments]``

Why a copy: ansible-test only runs when its working directory is
``.../ansible_collections/<namespace>/<name>/`` and takes that directory from
``os.getcwd()``, which is the resolved path, so running it from the symlink
``.tmp/collections/ansible_collections/tokenfleet/pki`` fails with "No
'ansible_collections' parent directory was found". The files git would take
(tracked plus untracked-but-not-ignored, ``git ls-files -co --exclude-standard``)
are therefore copied into a temporary ``ansible_collections/tokenfleet/pki``
outside the repository and ansible-test runs there. Its ``tests/output`` is
copied back to ``.tmp/sanity-output``.

Why ``--controller origin`` and ``--target-python``: the controller is this
virtualenv (the ansible-core from requirements.txt), run in place (no Docker), as
``--local`` would; ``--requirements`` lets ansible-test add any controller
requirement it lacks. ansible-test still creates one virtualenv per sanity test
(pinned pylint, yamllint, ...) under ``~/.ansible/test/venv`` in every mode, so
``--venv`` would only add a further delegation virtualenv. The multi-version
tests (compile, import) run on each ``--target-python``: every Python that
``tests/config.yml`` declares for modules and that the machine has (found by
``pythons.py``; a version it does not find is named and left out, not an error).
Left to itself ansible-test would take any ``pythonX.Y`` on PATH, pyenv's shims
included, which fail when run; and even given ``--target-python X.Y@PATH`` it
makes the import test's virtualenv with the first ``pythonX.Y`` on PATH. So
ansible-test runs with a directory of links ``pythonX.Y`` to the Pythons found
first on its PATH. ``--junit`` results tell which of those tests ran
on which Python: one that was selected but skipped on a found Python (say, for
want of virtualenv support) fails the run, and the last line names the Pythons
each ran on.

Why the get-pip stand-in: those per-test virtualenvs are created without pip and
bootstrapped with ``get-pip-<version>.py`` from ci-files.testing.ansible.com.
When that script is not cached and cannot be downloaded, ``get_pip_standin.py``
is put into ansible-test's cache in its place (see that file).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import types
import urllib.request
import xml.etree.ElementTree as ET

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import pythons  # pylint: disable=wrong-import-position

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NAMESPACE = 'tokenfleet'
NAME = 'pki'
GET_PIP_URL = 'https://ci-files.testing.ansible.com/ansible-test/get-pip-{version}.py'
MULTI_VERSION_TESTS = ('compile', 'import')
NOT_APPLICABLE = 'No tests applicable.'


def log(message: str) -> None:
    print('run_sanity: ' + message, flush=True)


def collection_files() -> list[str]:
    """Return the paths (relative to the repository root) git would take into a commit."""
    output = subprocess.run(
        ['git', 'ls-files', '-z', '--cached', '--others', '--exclude-standard'],
        cwd=REPO_ROOT, check=True, stdout=subprocess.PIPE,
    ).stdout.decode('utf-8')
    paths = sorted(set(path for path in output.split('\0') if path))
    # tracked files deleted in the working tree are listed by --cached; skip them
    return [path for path in paths if os.path.lexists(os.path.join(REPO_ROOT, path))]


def copy_collection(destination: str) -> int:
    files = collection_files()
    for path in files:
        source = os.path.join(REPO_ROOT, path)
        target = os.path.join(destination, path)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if os.path.islink(source):
            os.symlink(os.readlink(source), target)
        else:
            shutil.copy2(source, target)
    return len(files)


def ansible_test_pip_version(python: pythons.Python) -> str | None:
    """Return the pip version ansible-test bootstraps into virtualenvs of ``python`` (internal API, may move)."""
    try:
        # pylint: disable-next=import-outside-toplevel
        from ansible_test._internal.python_requirements import get_venv_packages
    except ImportError as exc:
        log('cannot determine the pip version ansible-test bootstraps: %s' % exc)
        return None
    return get_venv_packages(types.SimpleNamespace(version=python.version, path=python.path))['pip']


def ensure_get_pip(version: str) -> None:
    cache_path = os.path.expanduser('~/.ansible/test/cache/get_pip_%s.py' % version.replace('.', '_'))
    if os.path.exists(cache_path):
        return
    os.makedirs(os.path.dirname(cache_path), exist_ok=True)
    url = GET_PIP_URL.format(version=version)
    try:
        with urllib.request.urlopen(url, timeout=20) as response:  # nosec - fixed https URL
            content = response.read()
        log('downloaded %s' % url)
    except OSError as exc:
        log('cannot download %s (%s); using tests/utils/get_pip_standin.py instead' % (url, exc))
        with open(os.path.join(REPO_ROOT, 'tests', 'utils', 'get_pip_standin.py'), 'rb') as standin:
            content = standin.read()
    temp_path = cache_path + '.tmp'
    with open(temp_path, 'wb') as cache_file:
        cache_file.write(content)
    os.replace(temp_path, cache_path)


def selected_tests(arguments: list[str]) -> tuple[str, ...]:
    """The multi-version tests that the extra ansible-test arguments leave selected."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument('--test', action='append', default=[])
    parser.add_argument('--skip-test', action='append', default=[])
    parser.add_argument('--list-tests', action='store_true')
    parser.add_argument('--explain', action='store_true')
    options = parser.parse_known_args(arguments)[0]
    if options.list_tests or options.explain:
        return ()
    return tuple(test for test in MULTI_VERSION_TESTS
                 if (not options.test or test in options.test) and test not in options.skip_test)


def junit_outcome(junit_dir: str, test: str, version: str) -> tuple[str, str]:
    """Return ('passed' | 'failed' | 'skipped' | 'missing', detail) from ansible-test's JUnit file."""
    path = os.path.join(junit_dir, 'ansible-test-sanity-%s-python-%s.xml' % (test, version))
    if not os.path.exists(path):
        return 'missing', 'no result'
    case = ET.parse(path).find('.//testcase')
    if case is None:
        return 'missing', 'no test case in %s' % os.path.basename(path)
    if case.find('failure') is not None or case.find('error') is not None:
        return 'failed', 'see the output above'
    skipped = case.find('skipped')
    if skipped is not None:
        return 'skipped', (skipped.text or '').strip()
    return 'passed', ''


def summarize(junit_dir: str, tests: tuple[str, ...], found: list[pythons.Python], missing: list[pythons.Missing],
              strict: bool) -> tuple[list[str], bool]:
    """Lines saying which multi-version test ran on which Python, and whether every one that should did.

    A selected test that did not run on a found Python is a failure. A skip for want of anything to
    test (extra arguments that name no module, say) is one only in a full run (``strict``).
    """
    lines, complete = [], True
    for test in tests:
        ran, not_ran = [], []
        for python in found:
            outcome, detail = junit_outcome(junit_dir, test, python.version)
            if outcome in ('passed', 'failed'):
                ran.append('%s (%s)' % (python.version, outcome))
                continue
            not_ran.append('%s (%s: %s)' % (python.version, outcome, detail))
            if strict or outcome == 'missing' or detail != NOT_APPLICABLE:
                complete = False
        line = '%s ran on Python %s' % (test, ', '.join(ran) or 'none')
        if not_ran:
            line += '; did not run on Python %s' % ', '.join(not_ran)
        lines.append(line)
    if missing:
        lines.append('not found, so not tested: Python %s' % ', '.join(item.version for item in missing))
    return lines, complete


def link_pythons(bin_dir: str, found: list[pythons.Python]) -> None:
    """Make ``bin_dir/pythonX.Y`` the Python found for X.Y, for ansible-test's own look-ups on PATH."""
    os.makedirs(bin_dir)
    for python in found:
        os.symlink(python.path, os.path.join(bin_dir, 'python' + python.version))


def ansible_test_command(ansible_test: str, found: list[pythons.Python], arguments: list[str]) -> list[str]:
    controller = 'origin:python=%d.%d@%s' % (sys.version_info[0], sys.version_info[1], sys.executable)
    command = [ansible_test, 'sanity', '--requirements', '--junit', '--controller', controller]
    for python in found:
        command += ['--target-python', '%s@%s' % (python.version, python.path)]
    return command + arguments


def main() -> int:
    ansible_test = os.path.join(os.path.dirname(sys.executable), 'ansible-test')
    if not os.path.exists(ansible_test):
        log('%s not found; run "make deps" first' % ansible_test)
        return 2
    arguments = sys.argv[1:]
    found, missing = pythons.find_pythons()
    for line in pythons.describe(found, missing):
        log(line)
    if not any(python.version == '%d.%d' % sys.version_info[:2] for python in found):
        log('%s (Python %d.%d) is not among the Pythons tests/config.yml declares' % ((sys.executable,) + sys.version_info[:2]))
        return 2
    for version in sorted(set(filter(None, (ansible_test_pip_version(python) for python in found)))):
        ensure_get_pip(version)
    workdir = tempfile.mkdtemp(prefix='tokenfleet-sanity-')
    try:
        collection = os.path.join(workdir, 'ansible_collections', NAMESPACE, NAME)
        count = copy_collection(collection)
        command = ansible_test_command(ansible_test, found, arguments)
        log('copied %d files to %s' % (count, collection))
        log('running: %s' % ' '.join(command))
        bin_dir = os.path.join(workdir, 'bin')
        link_pythons(bin_dir, found)
        env = dict(os.environ, PATH=bin_dir + os.pathsep + os.environ.get('PATH', os.defpath))
        rc = subprocess.run(command, cwd=collection, env=env, stdin=subprocess.DEVNULL, check=False).returncode
        output = os.path.join(collection, 'tests', 'output')
        lines, complete = summarize(os.path.join(output, 'junit'), selected_tests(arguments), found, missing,
                                    strict=not arguments)
        if os.path.isdir(output):
            kept = os.path.join(REPO_ROOT, '.tmp', 'sanity-output')
            shutil.rmtree(kept, ignore_errors=True)
            shutil.copytree(output, kept, symlinks=True)
        log('ansible-test sanity exited with %d' % rc)
        for line in lines:
            log(line)
        if rc == 0 and not complete:
            log('a selected test did not run on every Python found (see above)')
            return 1
        return rc
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == '__main__':
    sys.exit(main())
