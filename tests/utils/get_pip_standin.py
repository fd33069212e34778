# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Stand-in for the get-pip.py bootstrap script that ansible-test downloads.

ansible-test creates every sanity-test virtual environment without pip and then runs
``get-pip-<version>.py`` fetched from https://ci-files.testing.ansible.com (cached as
``~/.ansible/test/cache/get_pip_<version>.py``). Where that host is unreachable but PyPI
is, ``make sanity`` copies this file to the cache path instead. Like get-pip.py it takes
pip-install arguments (``pip==24.2 --no-setuptools --no-wheel ...``): it installs the pip
bundled with Python (ensurepip) into the running interpreter, then lets that pip install
the requested packages from the configured package index.
"""

from __future__ import annotations

import ensurepip
import os
import subprocess
import sys


def main() -> None:
    # --no-setuptools / --no-wheel are get-pip.py options, not pip install options.
    args = [arg for arg in sys.argv[1:] if arg not in ('--no-setuptools', '--no-wheel')]
    requested = {arg.split('=')[0].lower() for arg in args if not arg.startswith('-')}
    # ensurepip removes PIP_* variables from os.environ and points PIP_CONFIG_FILE at
    # os.devnull; keep the caller's environment (index, proxy, certificates) for pip itself.
    env = dict(os.environ)
    ensurepip.bootstrap(upgrade=True)
    subprocess.check_call([sys.executable, '-m', 'pip', 'install', '--upgrade'] + args, env=env)
    # ensurepip of Python < 3.12 also installs setuptools; get-pip.py --no-setuptools would not.
    if '--no-setuptools' in sys.argv and 'setuptools' not in requested:
        subprocess.check_call([sys.executable, '-m', 'pip', 'uninstall', '--yes', '--quiet', 'setuptools'], env=env)


if __name__ == '__main__':
    main()
