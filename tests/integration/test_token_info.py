# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""token_info against real SoftHSM tokens, compared with what softhsm2-util and pkcs11-tool made."""

from __future__ import annotations

from harness import module_task, random_pin


def info_task(hsm, name, check=False, **options):
    return module_task('token_info', name, dict({'pkcs11_module': hsm.module}, **options), check)


def test_lists_every_token_with_state_and_the_selected_tokens_keys(softhsm, run_playbook):
    user_pin = random_pin()
    serial_1 = softhsm.init_token('ws-001', random_pin(), user_pin)
    serial_2 = softhsm.init_token('ws-002', random_pin(), random_pin())
    softhsm.pkcs11_tool('--token-label', 'ws-001', '--login', '--keypairgen', '--key-type', 'EC:secp384r1',
                        '--label', 'vpn', '--id', 'a1b2', pin=user_pin)
    run = run_playbook([info_task(softhsm, 'all'), info_task(softhsm, 'all check', True),
                        info_task(softhsm, 'one', token_label='ws-001', user_pin=user_pin),
                        info_task(softhsm, 'one by serial', token_serial=serial_2)], verbosity=3)
    assert all(r['status'] == 'ok' and r['changed'] is False for r in run.results)
    everything = run.result('all')['result']
    assert run.result('all check')['result']['tokens'] == everything['tokens']
    tokens = everything['tokens']
    # Slot order follows SoftHSM's serial-derived slot ids, so compare by label.
    assert sorted((t['label'], t['serial'], t['initialized']) for t in tokens) == [
        ('', '', False), ('ws-001', serial_1, True), ('ws-002', serial_2, True)]
    first = [t for t in tokens if t['label'] == 'ws-001'][0]
    assert first['manufacturer'] == 'SoftHSM project' and first['model'] == 'SoftHSM v2'
    assert first['user_pin'] == dict(initialized=True, count_low=False, final_try=False, locked=False,
                                     to_be_changed=False)
    assert first['min_pin_length'] == 4 and first['max_pin_length'] == 255
    assert first['free_public_memory'] is None  # SoftHSM does not report memory
    assert 'EC_KEY_PAIR_GEN' in first['mechanisms'] and 'RSA_PKCS_KEY_PAIR_GEN' in first['mechanisms']
    assert 'keys' not in first and 'certificates' not in first
    assert everything['library']['manufacturer'] == 'SoftHSM'

    one = run.result('one')['result']['tokens']
    assert len(one) == 1
    key = one[0]['keys'][0]
    assert (key['label'], key['id'], key['type'], key['size'], key['curve']) == ('vpn', 'a1b2', 'ec', 384, 'secp384r1')
    assert key['sensitive'] is True and key['extractable'] is False
    assert key['public_key'].startswith('-----BEGIN PUBLIC KEY-----')
    assert key['uri'] == 'pkcs11:token=ws-001;serial=%s;id=%%A1%%B2;object=vpn;type=private' % serial_1
    assert one[0]['certificates'] == []

    by_serial = run.result('one by serial')['result']['tokens']
    assert [t['label'] for t in by_serial] == ['ws-002']
    assert 'keys' not in by_serial[0] and by_serial[0]['certificates'] == []
    assert user_pin not in run.stdout + run.stderr


def test_unknown_token_and_wrong_pin(softhsm, run_playbook):
    serial = softhsm.init_token('ws-001', random_pin(), random_pin())
    wrong = random_pin()
    run = run_playbook([info_task(softhsm, 'unknown', token_label='nope'),
                        info_task(softhsm, 'wrong pin', token_label='ws-001', user_pin=wrong)], verbosity=3)
    unknown = run.result('unknown')
    assert unknown['status'] == 'failed'
    assert unknown['result']['msg'] == "no initialised token with label 'nope'; tokens present: 'ws-001' (serial %s)" % serial
    wrong_pin = run.result('wrong pin')
    assert wrong_pin['status'] == 'failed'
    assert wrong_pin['result']['msg'].startswith("the user PIN was rejected by token 'ws-001' (PIN incorrect)")
    assert wrong not in run.stdout + run.stderr


def test_an_empty_pin_means_no_pin_and_no_login(softhsm, run_playbook):
    """A blank AWX credential field gives user_pin ''; a login with it would be refused and cost one of the tries."""
    softhsm.init_token('ws-001', random_pin(), random_pin())
    run = run_playbook([info_task(softhsm, 'blank pin', token_label='ws-001', user_pin='')])
    blank = run.result('blank pin')
    assert blank['status'] == 'ok', run.output()
    [facts] = blank['result']['tokens']
    assert facts['label'] == 'ws-001' and facts['certificates'] == [] and 'keys' not in facts
