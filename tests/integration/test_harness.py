# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""End-to-end checks of the integration harness itself, with builtin modules only."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from harness import assert_four_run, venv_tool


def copy_task(name, dest, content, check_mode=False):
    task = {'name': name, 'ansible.builtin.copy': {'dest': dest, 'content': content, 'mode': '0600'}}
    if check_mode:
        task['check_mode'] = True
    return task


def test_four_run_pattern_and_failures_are_recorded(run_playbook, tmp_path):
    dest = str(tmp_path / 'managed.txt')
    run = run_playbook([
        copy_task('copy check', dest, 'hello\n', check_mode=True),
        copy_task('copy', dest, 'hello\n'),
        copy_task('copy check again', dest, 'hello\n', check_mode=True),
        copy_task('copy again', dest, 'hello\n'),
        {'name': 'deliberate failure', 'ansible.builtin.fail': {'msg': 'failing on purpose'}},
        {'name': 'skipped task', 'ansible.builtin.debug': {'msg': 'never'}, 'when': False},
        {'name': 'runs after the failure', 'ansible.builtin.command': {'cmd': 'true'}, 'changed_when': False},
    ])
    # ignore_errors was added to every task, so the failure does not stop the play
    assert run.rc == 0, run.output()
    assert [r['task'] for r in run.results] == [
        'copy check', 'copy', 'copy check again', 'copy again',
        'deliberate failure', 'skipped task', 'runs after the failure',
    ]
    assert_four_run(run, ['copy check', 'copy', 'copy check again', 'copy again'])
    assert_four_run(run.results, ['copy check', 'copy', 'copy check again', 'copy again'])
    with open(dest, encoding='utf-8') as managed:
        assert managed.read() == 'hello\n'
    assert oct(os.stat(dest).st_mode & 0o777) == '0o600'

    failure = run.result('deliberate failure')
    assert failure['status'] == 'failed'
    assert failure['changed'] is False
    assert failure['result']['msg'] == 'failing on purpose'
    assert run.result('skipped task')['status'] == 'skipped'
    after = run.result('runs after the failure')
    assert after['status'] == 'ok' and after['changed'] is False
    assert after['result']['rc'] == 0
    assert run.result('copy')['result']['dest'] == dest
    assert run.result('copy')['host'] == 'localhost'


def test_four_run_assertion_rejects_wrong_pattern(run_playbook, tmp_path):
    dest = str(tmp_path / 'managed.txt')
    run = run_playbook([
        copy_task('first', dest, 'a\n'),
        copy_task('second', dest, 'a\n'),
        copy_task('third', dest, 'b\n', check_mode=True),
        copy_task('fourth', dest, 'b\n'),
        {'name': 'broken', 'ansible.builtin.fail': {'msg': 'no'}},
    ])
    assert [run.result(n)['changed'] for n in ('first', 'second', 'third', 'fourth')] == [True, False, True, True]
    with pytest.raises(AssertionError, match='expected changed, changed, unchanged, unchanged'):
        assert_four_run(run, ['first', 'second', 'third', 'fourth'])
    with pytest.raises(AssertionError, match='did not succeed'):
        assert_four_run(run, ['first', 'second', 'third', 'broken'])
    with pytest.raises(KeyError):
        run.result('no such task')


def test_explicit_ignore_errors_false_stops_the_play(run_playbook):
    run = run_playbook([
        {'name': 'fails hard', 'ansible.builtin.fail': {'msg': 'stop'}, 'ignore_errors': False},
        {'name': 'never runs', 'ansible.builtin.debug': {'msg': 'unreachable'}},
    ])
    assert run.rc == 2, run.output()
    assert [r['task'] for r in run.results] == ['fails hard']
    assert run.result('fails hard')['status'] == 'failed'


def test_check_flag_verbosity_extra_vars_and_env(run_playbook, softhsm, tmp_path):
    dest = str(tmp_path / 'not-created.txt')
    run = run_playbook(
        [
            copy_task('copy in check mode', dest, 'x\n'),
            {'name': 'show vars', 'ansible.builtin.debug': {'msg': '{{ greeting }} {{ lookup("env", "SOFTHSM2_CONF") }} {{ lookup("env", "EXTRA_ENV") }}'}},
            {'name': 'interpreter', 'ansible.builtin.debug': {'msg': '{{ ansible_python_interpreter }}'}},
            {'name': 'command in check mode', 'ansible.builtin.command': {'cmd': 'true'}},
        ],
        check=True, verbosity=3, extra_vars={'greeting': 'hi there'}, env={'EXTRA_ENV': 'from-env'},
    )
    assert run.rc == 0, run.output()
    assert '--check' in run.command and '-vvv' in run.command
    assert run.result('copy in check mode')['changed'] is True
    assert not os.path.exists(dest)
    assert run.result('show vars')['result']['msg'] == 'hi there %s from-env' % softhsm.conf
    assert run.result('interpreter')['result']['msg'] == sys.executable
    # the command module does not run in check mode; the task is recorded as skipped
    assert run.result('command in check mode')['status'] == 'skipped'
    # -vvv shows connection details that plain runs do not
    assert 'ESTABLISH LOCAL CONNECTION' in run.stdout


def test_softhsm_tokens_and_pkcs11_tool(softhsm, pin_factory):
    so_pin, user_pin = pin_factory(), pin_factory()
    assert so_pin != user_pin and len(user_pin) == 24
    assert re.search(r'[0-9]', user_pin) and re.search(r'[A-Za-z]', user_pin)
    assert len(pin_factory(40)) == 40
    assert os.path.isfile(softhsm.module) and not os.path.islink(softhsm.module)
    with open(softhsm.conf, encoding='utf-8') as conf:
        assert 'directories.tokendir = %s\n' % softhsm.token_dir in conf.read()

    serial = softhsm.init_token('harness-token', so_pin, user_pin)
    assert re.fullmatch(r'[0-9a-f]{16}', serial)
    second = softhsm.init_token('second-token', pin_factory(), pin_factory())
    assert second != serial
    assert len(os.listdir(softhsm.token_dir)) == 2

    listing = softhsm.pkcs11_tool('--list-token-slots')
    assert listing.returncode == 0, listing.stderr
    assert 'harness-token' in listing.stdout and serial in listing.stdout

    keygen = softhsm.pkcs11_tool(
        '--token-label', 'harness-token', '--keypairgen', '--key-type', 'EC:prime256v1',
        '--label', 'harness-key', '--id', '01', pin=user_pin,
    )
    assert keygen.returncode == 0, keygen.stderr
    private = softhsm.pkcs11_tool('--token-label', 'harness-token', '--list-objects', '--type', 'privkey', pin=user_pin)
    assert 'harness-key' in private.stdout
    anonymous = softhsm.pkcs11_tool('--token-label', 'harness-token', '--list-objects', '--type', 'privkey')
    assert 'harness-key' not in anonymous.stdout
    wrong = softhsm.pkcs11_tool('--token-label', 'harness-token', '--list-objects', pin=pin_factory(), check=False)
    assert wrong.returncode != 0 and 'CKR_PIN_INCORRECT' in wrong.stdout + wrong.stderr


def test_extra_conf_disables_a_mechanism(softhsm):
    assert 'EC-EDWARDS-KEY-PAIR-GEN' in softhsm.pkcs11_tool('--list-mechanisms').stdout
    softhsm.extra_conf(['slots.mechanisms = -CKM_EC_EDWARDS_KEY_PAIR_GEN'])
    mechanisms = softhsm.pkcs11_tool('--list-mechanisms')
    assert mechanisms.returncode == 0, mechanisms.stderr
    assert 'EC-EDWARDS-KEY-PAIR-GEN' not in mechanisms.stdout
    assert 'ECDSA-KEY-PAIR-GEN' in mechanisms.stdout


def test_playbooks_see_the_tests_softhsm(run_playbook, softhsm, pin_factory):
    user_pin = pin_factory()
    serial = softhsm.init_token('seen-by-ansible', pin_factory(), user_pin)
    run = run_playbook([
        {'name': 'show slots', 'ansible.builtin.command': {'argv': ['softhsm2-util', '--show-slots']}},
    ])
    assert run.result('show slots')['status'] == 'ok', run.output()
    assert serial in run.result('show slots')['result']['stdout']
    run.assert_not_leaked(user_pin)
    with pytest.raises(AssertionError, match='secret value appears in the results'):
        run.assert_not_leaked(serial)


def test_collection_is_found_through_the_collections_path(softhsm):
    listing = subprocess.run(
        [venv_tool('ansible-galaxy'), 'collection', 'list', 'tokenfleet.pki'],
        env=softhsm.env, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False,
    )
    assert listing.returncode == 0, listing.stdout + listing.stderr
    assert re.search(r'^tokenfleet\.pki\s+0\.1\.0\s*$', listing.stdout, re.M), listing.stdout
