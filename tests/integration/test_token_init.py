# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""token_init against real SoftHSM slots; PINs are checked by logging in with pkcs11-tool."""

from __future__ import annotations

import os
import re
import stat

import pytest

from harness import FOUR_RUN, assert_four_run, four_run_tasks, module_task, random_pin


def init_task(hsm, name, check=False, **options):
    return module_task('token_init', name, dict({'pkcs11_module': hsm.module}, **options), check)


def can_log_in(hsm, label, pin):
    return hsm.pkcs11_tool('--token-label', label, '--login', '--list-objects', pin=pin, check=False).returncode == 0


def token_labels(hsm):
    return [slot['label'] for slot in hsm.slots() if slot.get('initialized') == 'yes']


def serial_of(hsm, label):
    return [slot['serial'] for slot in hsm.slots() if slot.get('label') == label][0]


def test_initialise_free_slot_with_random_digit_pin(softhsm, run_playbook, tmp_path):
    so_pin = random_pin()
    pin_file = tmp_path / 'user-pin'
    run = run_playbook(four_run_tasks('token_init', dict(pkcs11_module=softhsm.module, label='ws-001', so_pin=so_pin,
                                                         user_pin='random', user_pin_length=12, user_pin_digits_only=True,
                                                         user_pin_path=str(pin_file))), verbosity=3)
    assert_four_run(run.results, FOUR_RUN)
    assert run.result('check 1')['result']['actions'] == ['initialise token', 'set user PIN']
    assert run.result('check 1')['result']['serial'] is None
    assert token_labels(softhsm) == ['ws-001']
    assert stat.S_IMODE(os.stat(pin_file).st_mode) == 0o600
    pin = pin_file.read_text().strip()
    assert re.fullmatch(r'[0-9]{12}', pin)
    assert can_log_in(softhsm, 'ws-001', pin)
    assert run.result('run 1')['result']['serial'] == run.result('run 2')['result']['serial']
    output = run.stdout + run.stderr
    assert pin not in output and so_pin not in output


def test_initialise_with_given_pin_and_change_it(softhsm, run_playbook):
    so_pin, old_pin, new_pin = random_pin(), random_pin(), random_pin()
    run = run_playbook([init_task(softhsm, 'init', label='ws-001', so_pin=so_pin, user_pin=old_pin)]
                       + four_run_tasks('token_init', dict(pkcs11_module=softhsm.module, label='ws-001', user_pin=old_pin,
                                                           new_user_pin=new_pin)), verbosity=3)
    assert run.result('init')['changed']
    assert_four_run(run.results[1:], FOUR_RUN)
    assert run.result('run 1')['result']['actions'] == ['change user PIN']
    assert can_log_in(softhsm, 'ws-001', new_pin)
    output = run.stdout + run.stderr
    for secret in (so_pin, old_pin, new_pin):
        assert secret not in output


def test_so_resets_user_pin_without_the_current_one(softhsm, run_playbook):
    so_pin, forgotten, new_pin = random_pin(), random_pin(), random_pin()
    softhsm.init_token('ws-001', so_pin, forgotten)
    run = run_playbook(four_run_tasks('token_init', dict(pkcs11_module=softhsm.module, label='ws-001', so_pin=so_pin,
                                                         new_user_pin=new_pin)))
    assert_four_run(run.results, FOUR_RUN)
    assert run.result('run 1')['result']['actions'] == ['reset user PIN as SO']
    assert can_log_in(softhsm, 'ws-001', new_pin)


def test_initialised_token_is_left_alone_and_force_wipes_it(softhsm, run_playbook):
    so_pin, user_pin = random_pin(), random_pin()
    softhsm.init_token('ws-001', so_pin, user_pin)
    softhsm.pkcs11_tool('--token-label', 'ws-001', '--login', '--keypairgen', '--key-type', 'EC:prime256v1',
                        '--label', 'keep', pin=user_pin)
    run = run_playbook([init_task(softhsm, 'same label', label='ws-001', so_pin=so_pin, user_pin=random_pin())])
    assert run.result('same label')['changed'] is False
    assert re.search(r'label:\s+keep', softhsm.pkcs11_tool('--token-label', 'ws-001', '--login', '--list-objects', pin=user_pin).stdout)

    new_user = random_pin()
    run = run_playbook([
        init_task(softhsm, 'other label', label='ws-002', token_serial=serial_of(softhsm, 'ws-001'), so_pin=so_pin,
                  user_pin=new_user),
        init_task(softhsm, 'force', label='ws-001', so_pin=so_pin, user_pin=new_user, force=True),
    ])
    refused = run.result('other label')
    assert refused['status'] == 'failed'
    assert re.match(r"token 'ws-001' \(serial \w+\) is initialised with another label; initialising it as 'ws-002' "
                    r'wipes every key and certificate on it, so it needs force=true$', refused['result']['msg'])
    assert run.result('force')['changed']
    assert run.result('force')['result']['actions'] == ['wipe and re-initialise token', 'set user PIN']
    assert can_log_in(softhsm, 'ws-001', new_user)
    assert 'Object' not in softhsm.pkcs11_tool('--token-label', 'ws-001', '--login', '--list-objects', pin=new_user).stdout


def test_wrong_so_pin_on_reinitialise_leaves_token_as_it_was(softhsm, run_playbook):
    so_pin, user_pin, wrong = random_pin(), random_pin(), random_pin()
    softhsm.init_token('ws-001', so_pin, user_pin)
    softhsm.pkcs11_tool('--token-label', 'ws-001', '--login', '--keypairgen', '--key-type', 'EC:prime256v1',
                        '--label', 'keep', pin=user_pin)
    run = run_playbook([init_task(softhsm, 'wrong', label='ws-001', so_pin=wrong, user_pin=random_pin(), force=True)],
                       verbosity=3)
    record = run.result('wrong')
    assert record['status'] == 'failed'
    assert re.match(r'the SO PIN was rejected when initialising the token in slot \d+ \(PIN incorrect\)\. '
                    r'It was tried once and is not retried$', record['result']['msg'])
    assert wrong not in run.stdout + run.stderr
    assert re.search(r'label:\s+keep', softhsm.pkcs11_tool('--token-label', 'ws-001', '--login', '--list-objects', pin=user_pin).stdout)


@pytest.mark.parametrize('options, message', [
    (dict(user_pin='random'), 'a generated user PIN needs user_pin_path: the PIN is only ever written to that file'),
    (dict(user_pin='random', user_pin_path='/tmp/x', user_pin_length=3), 'user_pin_length must be between 4 and 31 (got 3)'),
    (dict(user_pin='random', user_pin_path='/tmp/x', user_pin_length=32), 'user_pin_length must be between 4 and 31 (got 32)'),
    (dict(user_pin='random', user_pin_path='/nonexistent-dir/pin'), 'the directory of user_pin_path (/nonexistent-dir) does not exist'),
    (dict(user_pin='random', user_pin_path='{tmp}'), 'user_pin_path {tmp} is a directory, not a file'),
    (dict(label='x' * 33, user_pin='12345678'), 'label must be at most 32 bytes long'),
    (dict(user_pin='12345678', token_serial='nope'), "no token with serial 'nope'; tokens present: an uninitialised token"),
    (dict(user_pin='12345678', so_pin=None), 'so_pin is required to initialise a token (or set PKCS11_SO_PIN)'),
    (dict(), 'user_pin is required when a token is initialised (a PIN, or "random" to generate one)'),
])
def test_bad_input_is_a_clear_error_and_initialises_nothing(softhsm, run_playbook, tmp_path, options, message):
    args = dict(label='ws-001', so_pin=random_pin())
    args.update(options)
    if args.get('user_pin_path') == '{tmp}':
        args['user_pin_path'] = str(tmp_path)
        message = message.format(tmp=tmp_path)
    args = dict((k, v) for k, v in args.items() if v is not None)
    record = run_playbook([init_task(softhsm, 'bad', **args)]).result('bad')
    assert record['status'] == 'failed'
    assert message in record['result']['msg']
    assert token_labels(softhsm) == []


def test_a_pin_file_a_killed_run_was_writing_is_removed(softhsm, run_playbook, tmp_path):
    """A kill between staging the generated PIN and its rename leaves the PIN in a temp file: the next run removes it."""
    pin_file = tmp_path / 'user-pin'
    leftover = tmp_path / '.tokenfleet-user-pin-x1y2z3_4'
    leftover.write_text('12345678\n')
    run = run_playbook([init_task(softhsm, 'init', label='ws-001', so_pin=random_pin(), user_pin='random',
                                  user_pin_path=str(pin_file))])
    assert run.result('init')['changed'], run.output()
    assert not leftover.exists()
    assert sorted(os.listdir(tmp_path)) == sorted(name for name in os.listdir(tmp_path)
                                                  if not name.startswith('.tokenfleet-'))
    assert can_log_in(softhsm, 'ws-001', pin_file.read_text().strip())
