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

Why ``--local --requirements``: the controller is this virtualenv (the
ansible-core from requirements.txt); ``--requirements`` lets ansible-test add
any controller requirement it lacks. ansible-test still creates one virtualenv
per sanity test (pinned pylint, yamllint, ...) under ``~/.ansible/test/venv``
in every mode, so ``--venv`` would only add a further delegation virtualenv.

Why the get-pip stand-in: those per-test virtualenvs are created without pip and
bootstrapped with ``get-pip-<version>.py`` from ci-files.testing.ansible.com.
When that script is not cached and cannot be downloaded, ``get_pip_standin.py``
is put into ansible-test's cache in its place (see that file).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import types
import urllib.request

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NAMESPACE = 'tokenfleet'
NAME = 'pki'
GET_PIP_URL = 'https://ci-files.testing.ansible.com/ansible-test/get-pip-{version}.py'


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


def ansible_test_pip_version() -> str | None:
    """Return the pip version ansible-test bootstraps into its virtualenvs (internal API, may move)."""
    try:
        # pylint: disable-next=import-outside-toplevel
        from ansible_test._internal.python_requirements import get_venv_packages
    except ImportError as exc:
        log('cannot determine the pip version ansible-test bootstraps: %s' % exc)
        return None
    python = types.SimpleNamespace(version='%d.%d' % sys.version_info[:2], path=sys.executable)
    return get_venv_packages(python)['pip']


def ensure_get_pip() -> None:
    version = ansible_test_pip_version()
    if not version:
        return
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


def main() -> int:
    ansible_test = os.path.join(os.path.dirname(sys.executable), 'ansible-test')
    if not os.path.exists(ansible_test):
        log('%s not found; run "make deps" first' % ansible_test)
        return 2
    ensure_get_pip()
    python_version = '%d.%d' % sys.version_info[:2]
    workdir = tempfile.mkdtemp(prefix='tokenfleet-sanity-')
    try:
        collection = os.path.join(workdir, 'ansible_collections', NAMESPACE, NAME)
        count = copy_collection(collection)
        command = [ansible_test, 'sanity', '--local', '--requirements', '--python', python_version] + sys.argv[1:]
        log('copied %d files to %s' % (count, collection))
        log('running: %s' % ' '.join(command))
        rc = subprocess.run(command, cwd=collection, stdin=subprocess.DEVNULL, check=False).returncode
        output = os.path.join(collection, 'tests', 'output')
        if os.path.isdir(output):
            kept = os.path.join(REPO_ROOT, '.tmp', 'sanity-output')
            shutil.rmtree(kept, ignore_errors=True)
            shutil.copytree(output, kept, symlinks=True)
        log('ansible-test sanity exited with %d' % rc)
        return rc
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == '__main__':
    sys.exit(main())
