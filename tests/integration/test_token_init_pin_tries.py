# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""token_init spends at most one user PIN try per run: every C_Login is counted with OpenSC's pkcs11-spy.

The playbooks load pkcs11-spy.so as their PKCS#11 module; it passes each call on to SoftHSM and logs
it with its result. Independent checks of the token (which PIN works, the record object) use
pkcs11-tool on SoftHSM directly, outside the spy's log.
"""

from __future__ import annotations

import json
import os
import re

import pytest

from harness import FOUR_RUN, assert_four_run, four_run_tasks, module_task, random_pin

SPY = '/usr/lib/x86_64-linux-gnu/pkcs11-spy.so'
RECORD_LABEL = 'tokenfleet.pki user PIN'


@pytest.fixture
def spy(softhsm, tmp_path):
    """Log files for pkcs11-spy, outside the directories searched for secrets (the spy logs every PIN)."""
    if not os.path.exists(SPY):
        pytest.fail('OpenSC pkcs11-spy (%s) is not installed; run "make deps" (Debian package opensc-pkcs11)' % SPY)
    directory = tmp_path / 'spy-logs'
    directory.mkdir()
    count = [0]

    def new_log():
        count[0] += 1
        log = directory / ('spy-%d.log' % count[0])
        return str(log), dict(PKCS11SPY=softhsm.module, PKCS11SPY_OUTPUT=str(log))

    return new_log


def user_logins(log):
    """The result (CKR_* name) of every C_Login as CKU_USER in a pkcs11-spy log, in order."""
    if not os.path.exists(log):
        return []
    with open(log, encoding='utf-8', errors='replace') as handle:
        text = handle.read()
    results = []
    for block in re.split(r'\n(?=\d+: C_\w+\n)', text):
        if re.match(r'\d+: C_Login\n', block) and re.search(r'userType = CKU_USER\b', block):
            results.append(re.search(r'Returned:\s+\d+ (CKR_\w+)', block).group(1))
    return results


def failed(results):
    return [rv for rv in results if rv != 'CKR_OK']


def init_args(**options):
    return dict({'pkcs11_module': SPY, 'label': 'ws-001'}, **options)


def can_log_in(hsm, pin):
    return hsm.pkcs11_tool('--token-label', 'ws-001', '--login', '--list-objects', pin=pin, check=False).returncode == 0


def record_value(hsm, tmp_path):
    """The value of the record object, read without a login (None when there is none)."""
    listing = hsm.pkcs11_tool('--token-label', 'ws-001', '--list-objects', '--type', 'data').stdout
    if RECORD_LABEL not in listing:
        return None
    out = tmp_path / 'record.bin'
    hsm.pkcs11_tool('--token-label', 'ws-001', '--read-object', '--type', 'data', '--label', RECORD_LABEL,
                    '--output-file', str(out))
    return out.read_bytes()


def token_files_hold(hsm, *secrets):
    """Secrets found in any file of the SoftHSM token directory (public objects are stored in clear there)."""
    found = []
    for root, dummy, files in os.walk(hsm.token_dir):
        for name in files:
            with open(os.path.join(root, name), 'rb') as handle:
                data = handle.read()
            found += [s for s in secrets if s.encode() in data]
    return found


def write_record(hsm, tmp_path, pin, value):
    """Put a record object on the token the way token_init would, e.g. one left by a killed run."""
    source = tmp_path / 'record-in.bin'
    source.write_bytes(value)
    hsm.pkcs11_tool('--token-label', 'ws-001', '--login', '--write-object', str(source), '--type', 'data',
                    '--label', RECORD_LABEL, '--application-label', 'tokenfleet.pki.token_init', pin=pin)


def test_wrong_current_pin_costs_one_try_and_names_user_pin(softhsm, run_playbook, spy):
    so_pin, current, wrong, new = random_pin(), random_pin(), random_pin(), random_pin()
    softhsm.init_token('ws-001', so_pin, current)
    log, env = spy()
    run = run_playbook([module_task('token_init', 'change', init_args(user_pin=wrong, new_user_pin=new))],
                       env=env, verbosity=3)
    record = run.result('change')
    assert record['status'] == 'failed'
    assert user_logins(log) == ['CKR_PIN_INCORRECT']
    assert re.match(r"user_pin was rejected by 'ws-001' \(serial \w+\) \(PIN incorrect\): one login try was spent and "
                    r'no other PIN is tried in this run', record['result']['msg']), record['result']['msg']
    run.assert_not_leaked(so_pin, current, wrong, new)
    assert can_log_in(softhsm, current)


def test_change_and_repeated_runs_spend_no_failed_login(softhsm, run_playbook, spy, tmp_path):
    so_pin, old, new = random_pin(), random_pin(), random_pin()
    softhsm.init_token('ws-001', so_pin, old)
    log, env = spy()
    run = run_playbook(four_run_tasks('token_init', init_args(user_pin=old, new_user_pin=new)), env=env, verbosity=3)
    assert_four_run(run, FOUR_RUN)
    assert run.result('run 1')['result']['actions'] == ['change user PIN']
    # run 1 logs in with the current PIN and changes it; run 2 confirms the new one; check mode never logs in
    assert user_logins(log) == ['CKR_OK', 'CKR_OK']
    assert can_log_in(softhsm, new) and not can_log_in(softhsm, old)
    assert record_value(softhsm, tmp_path) == b'{"seq":2,"state":"set","version":null}'
    run.assert_not_leaked(so_pin, old, new)
    assert token_files_hold(softhsm, so_pin, old, new) == []


def test_second_rotation_and_the_record_holds_only_the_version(softhsm, run_playbook, spy, tmp_path):
    so_pin, first, second, third = random_pin(), random_pin(), random_pin(), random_pin()
    softhsm.init_token('ws-001', so_pin, first)
    log, env = spy()
    rotation_1 = init_args(user_pin=first, new_user_pin=second, new_user_pin_version='2026-12')
    rotation_2 = init_args(user_pin=second, new_user_pin=third, new_user_pin_version='2027-06')
    run = run_playbook([module_task('token_init', 'rotation 1', rotation_1),
                        module_task('token_init', 'rotation 1 again', rotation_1),
                        module_task('token_init', 'check rotation 2', rotation_2, check=True),
                        module_task('token_init', 'rotation 2', rotation_2),
                        module_task('token_init', 'rotation 2 again', rotation_2),
                        module_task('token_init', 'rotation 1 once more', rotation_1, check=True)],
                       env=env, verbosity=3)
    assert [(r['task'], r['status'], r['changed']) for r in run.results] == [
        ('rotation 1', 'ok', True), ('rotation 1 again', 'ok', False), ('check rotation 2', 'ok', True),
        ('rotation 2', 'ok', True), ('rotation 2 again', 'ok', False), ('rotation 1 once more', 'ok', True)]
    assert user_logins(log) == ['CKR_OK'] * 4
    assert can_log_in(softhsm, third)
    value = record_value(softhsm, tmp_path)
    assert value == b'{"seq":4,"state":"set","version":"2027-06"}'
    assert json.loads(value) == {'seq': 4, 'state': 'set', 'version': '2027-06'}
    listing = softhsm.pkcs11_tool('--token-label', 'ws-001', '--list-objects', '--type', 'data').stdout
    assert listing.count(RECORD_LABEL) == 1
    run.assert_not_leaked(so_pin, first, second, third)
    assert token_files_hold(softhsm, so_pin, first, second, third) == []


@pytest.mark.parametrize('rotated_before', [False, True], ids=['no record', 'record says new_user_pin'])
def test_both_pins_wrong_cost_exactly_one_failed_login(softhsm, run_playbook, spy, rotated_before):
    so_pin, current, new = random_pin(), random_pin(), random_pin()
    softhsm.init_token('ws-001', so_pin, current)
    if rotated_before:
        run = run_playbook([module_task('token_init', 'rotate', init_args(user_pin=current, new_user_pin=new))], env=spy()[1])
        assert run.result('rotate')['changed'] and can_log_in(softhsm, new)
        current = new
    log, env = spy()
    wrong_current, wrong_new = random_pin(), random_pin()
    run = run_playbook([module_task('token_init', 'both wrong', init_args(user_pin=wrong_current, new_user_pin=wrong_new))],
                       env=env, verbosity=3)
    record = run.result('both wrong')
    assert record['status'] == 'failed'
    assert user_logins(log) == ['CKR_PIN_INCORRECT']
    tried = 'new_user_pin' if rotated_before else 'user_pin'
    assert record['result']['msg'].startswith('%s was rejected by ' % tried)
    assert 'one login try was spent' in record['result']['msg']
    run.assert_not_leaked(so_pin, current, wrong_current, wrong_new)
    assert can_log_in(softhsm, current)


def test_pin_changed_outside_token_init_costs_one_try_then_a_new_rotation_works(softhsm, run_playbook, spy):
    so_pin, old, new, outside, newest = random_pin(), random_pin(), random_pin(), random_pin(), random_pin()
    softhsm.init_token('ws-001', so_pin, old)
    rotation = init_args(user_pin=old, new_user_pin=new, new_user_pin_version='v1')
    assert run_playbook([module_task('token_init', 'rotate', rotation)], env=spy()[1]).result('rotate')['changed']
    softhsm.pkcs11_tool('--token-label', 'ws-001', '--login', '--change-pin', '--new-pin', outside, pin=new)
    log, env = spy()
    run = run_playbook([module_task('token_init', 'stale', rotation),
                        module_task('token_init', 'next rotation',
                                    init_args(user_pin=outside, new_user_pin=newest, new_user_pin_version='v2'))],
                       env=env, verbosity=3)
    stale = run.result('stale')
    assert stale['status'] == 'failed'
    assert stale['result']['msg'].startswith('new_user_pin was rejected by ')
    assert "token_init keeps on the token says it set new_user_pin (new_user_pin_version 'v1')" in stale['result']['msg']
    assert run.result('next rotation')['changed']
    assert user_logins(log) == ['CKR_PIN_INCORRECT', 'CKR_OK']
    assert can_log_in(softhsm, newest)
    run.assert_not_leaked(so_pin, old, new, outside, newest)


def test_removed_record_costs_one_try_and_confirming_the_pin_records_it(softhsm, run_playbook, spy, tmp_path):
    so_pin, old, new = random_pin(), random_pin(), random_pin()
    softhsm.init_token('ws-001', so_pin, old)
    rotation = init_args(user_pin=old, new_user_pin=new, new_user_pin_version='v1')
    assert run_playbook([module_task('token_init', 'rotate', rotation)], env=spy()[1]).result('rotate')['changed']
    softhsm.pkcs11_tool('--token-label', 'ws-001', '--login', '--delete-object', '--type', 'data', '--label', RECORD_LABEL,
                        pin=new)
    assert record_value(softhsm, tmp_path) is None
    log, env = spy()
    run = run_playbook([module_task('token_init', 'no record', rotation),
                        module_task('token_init', 'confirm', init_args(user_pin=new, new_user_pin=new, new_user_pin_version='v1')),
                        module_task('token_init', 'rotation again', rotation)], env=env, verbosity=3)
    assert run.result('no record')['status'] == 'failed'
    assert run.result('no record')['result']['msg'].startswith('user_pin was rejected by ')
    assert run.result('confirm')['changed'] and run.result('confirm')['result']['actions'] == ['record user PIN version']
    assert (run.result('rotation again')['status'], run.result('rotation again')['changed']) == ('ok', False)
    assert user_logins(log) == ['CKR_PIN_INCORRECT', 'CKR_OK', 'CKR_OK']
    assert record_value(softhsm, tmp_path) == b'{"seq":1,"state":"set","version":"v1"}'
    run.assert_not_leaked(so_pin, old, new)


@pytest.mark.parametrize('pin_was_changed', [False, True], ids=['killed before C_SetPIN', 'killed after C_SetPIN'])
def test_interrupted_change_is_completed_or_recorded(softhsm, run_playbook, spy, tmp_path, pin_was_changed):
    """A run killed between writing the 'changing' record and finishing: both states it can leave."""
    so_pin, old, new = random_pin(), random_pin(), random_pin()
    softhsm.init_token('ws-001', so_pin, old)
    write_record(softhsm, tmp_path, old, b'{"seq":7,"state":"changing","version":"v1"}')
    if pin_was_changed:
        softhsm.pkcs11_tool('--token-label', 'ws-001', '--login', '--change-pin', '--new-pin', new, pin=old)
    rotation = init_args(user_pin=old, new_user_pin=new, new_user_pin_version='v1')
    log, env = spy()
    run = run_playbook([module_task('token_init', 'after the kill', rotation),
                        module_task('token_init', 'next', rotation)], env=env, verbosity=3)
    first, second = run.result('after the kill'), run.result('next')
    if pin_was_changed:
        assert first['status'] == 'failed'
        assert first['result']['msg'].startswith('user_pin was rejected by ')
        assert 'interrupted while changing the user PIN' in first['result']['msg']
        assert user_logins(log) == ['CKR_PIN_INCORRECT', 'CKR_OK']
    else:
        assert (first['status'], first['changed'], first['result']['actions']) == ('ok', True, ['change user PIN'])
        assert user_logins(log) == ['CKR_OK', 'CKR_OK']
    assert (second['status'], second['changed']) == ('ok', False)
    assert can_log_in(softhsm, new)
    seq = 8 if pin_was_changed else 9  # 'set' over the left 'changing' (7), or 'changing' (8) and 'set' (9)
    assert record_value(softhsm, tmp_path) == b'{"seq":%d,"state":"set","version":"v1"}' % seq
    run.assert_not_leaked(so_pin, old, new)


def test_check_mode_never_logs_in(softhsm, run_playbook, spy):
    so_pin, current, new = random_pin(), random_pin(), random_pin()
    softhsm.init_token('ws-001', so_pin, current)
    log, env = spy()
    run = run_playbook([module_task('token_init', 'check change', init_args(user_pin=current, new_user_pin=new), check=True),
                        module_task('token_init', 'check wrong', init_args(user_pin=random_pin(), new_user_pin=new), check=True),
                        module_task('token_init', 'check as SO', init_args(so_pin=so_pin, new_user_pin=new), check=True)],
                       env=env)
    assert [(r['task'], r['status'], r['changed']) for r in run.results] == [
        ('check change', 'ok', True), ('check wrong', 'ok', True), ('check as SO', 'ok', True)]
    assert user_logins(log) == []
    assert can_log_in(softhsm, current)


@pytest.mark.parametrize('options, message', [
    (dict(new_user_pin_version='v1'), 'new_user_pin_version names new_user_pin; give new_user_pin too'),
    (dict(new_user_pin='{new}', new_user_pin_version='{new}'),
     'new_user_pin_version is stored on the token for anyone to read, so it must not be a PIN'),
    (dict(new_user_pin='{new}', new_user_pin_version='x' * 65), 'new_user_pin_version must be at most 64 printable characters'),
])
def test_bad_version_is_refused_before_any_login(softhsm, run_playbook, spy, options, message):
    so_pin, current, new = random_pin(), random_pin(), random_pin()
    softhsm.init_token('ws-001', so_pin, current)
    args = dict((k, v.format(new=new)) for k, v in options.items())
    log, env = spy()
    run = run_playbook([module_task('token_init', 'bad', init_args(user_pin=current, **args))], env=env)
    assert run.result('bad')['status'] == 'failed'
    assert run.result('bad')['result']['msg'] == message
    assert user_logins(log) == []
    run.assert_not_leaked(new, current)


def test_so_reset_and_first_pin_spend_no_failed_login(softhsm, run_playbook, spy, tmp_path):
    """The SO sets new_user_pin (forgotten PIN; a new token): no user login fails, reruns confirm the PIN once."""
    so_pin, forgotten, new, other_so, first, other_new = (random_pin() for dummy in range(6))
    softhsm.init_token('ws-001', so_pin, forgotten)
    new_token = init_args(label='ws-002', so_pin=other_so, user_pin=first, new_user_pin=other_new)
    log, env = spy()
    run = run_playbook(four_run_tasks('token_init', init_args(so_pin=so_pin, new_user_pin=new))
                       + [module_task('token_init', 'new token', new_token),
                          module_task('token_init', 'new token again', new_token)],
                       env=env, verbosity=3)
    assert_four_run(run, FOUR_RUN)
    assert run.result('run 1')['result']['actions'] == ['reset user PIN as SO']
    assert run.result('new token')['result']['actions'] == ['initialise token', 'set user PIN']
    assert (run.result('new token again')['status'], run.result('new token again')['changed']) == ('ok', False)
    assert user_logins(log) == ['CKR_OK', 'CKR_OK']
    assert can_log_in(softhsm, new)
    assert softhsm.pkcs11_tool('--token-label', 'ws-002', '--login', '--list-objects', pin=other_new, check=False).returncode == 0
    run.assert_not_leaked(so_pin, forgotten, new, other_so, first, other_new)
