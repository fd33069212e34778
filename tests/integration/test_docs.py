# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Every module renders with ansible-doc, with examples and return values, and is in the action group."""

from __future__ import annotations

import os
import subprocess

import pytest
import yaml

from harness import REPO_ROOT, ansible_env, venv_tool

MODULES = sorted(name[:-3] for name in os.listdir(os.path.join(REPO_ROOT, 'plugins', 'modules'))
                 if name.endswith('.py') and not name.startswith('_'))


def test_the_token_modules_are_all_there():
    assert {'token_info', 'token_init', 'token_key', 'token_cert'} <= set(MODULES)


@pytest.mark.parametrize('module', MODULES)
def test_ansible_doc_renders(module):
    completed = subprocess.run([venv_tool('ansible-doc'), 'tokenfleet.pki.' + module], env=ansible_env(),
                               capture_output=True, text=True, check=False, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert 'WARNING' not in completed.stderr, completed.stderr
    text = completed.stdout
    assert text.startswith('> MODULE tokenfleet.pki.%s' % module) or ('tokenfleet.pki.%s' % module) in text.splitlines()[0]
    assert 'EXAMPLES:' in text and ('tokenfleet.pki.%s:' % module) in text
    assert 'RETURN VALUES:' in text


def test_every_module_is_in_the_action_group():
    with open(os.path.join(REPO_ROOT, 'meta', 'runtime.yml'), encoding='utf-8') as runtime:
        groups = yaml.safe_load(runtime)['action_groups']
    assert sorted(groups['pki']) == MODULES
