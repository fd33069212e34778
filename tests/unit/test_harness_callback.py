# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Unit tests of the integration-test harness: the recording callback and the pure helpers."""

from __future__ import annotations

import importlib.util
import json
import os
import string
import sys

import pytest

from ansible.plugins.loader import callback_loader

INTEGRATION_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'integration')


def load_harness():
    spec = importlib.util.spec_from_file_location('tokenfleet_test_harness', os.path.join(INTEGRATION_DIR, 'harness.py'))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up in sys.modules
    spec.loader.exec_module(module)
    return module


harness = load_harness()


class FakeHost:
    def get_name(self):
        return 'localhost'


class OldTaskResult:
    """Shape of a callback's task result before ansible-core 2.19 (only ``_result``)."""

    def __init__(self, name, data):
        self.task_name = name
        self._host = FakeHost()
        self._result = data


class NewTaskResult(OldTaskResult):
    """Shape since ansible-core 2.19 (``result`` and ``host`` properties)."""

    def __init__(self, name, data):
        super().__init__(name, {'not': 'used'})
        self.result = data
        self.host = FakeHost()


@pytest.fixture
def recorder(tmp_path):
    callback_loader.add_directory(os.path.join(INTEGRATION_DIR, 'callback_plugins'))
    callback = callback_loader.get('record_results')
    assert callback is not None
    path = tmp_path / 'results.jsonl'
    callback.set_options(direct={'path': str(path)})
    return callback, path


def read_records(path):
    with open(path, encoding='utf-8') as recorded:
        return [json.loads(line) for line in recorded]


def test_callback_records_every_status_in_order(recorder):
    callback, path = recorder
    callback.v2_runner_on_ok(NewTaskResult('made a change', {'changed': True, 'dest': '/x'}))
    callback.v2_runner_on_failed(OldTaskResult('broke', {'failed': True, 'msg': 'boom'}), ignore_errors=True)
    callback.v2_runner_on_skipped(NewTaskResult('not needed', {'skipped': True}))
    callback.v2_runner_on_unreachable(OldTaskResult('gone', {'unreachable': True}))
    callback.v2_runner_on_ok(OldTaskResult('no change', {}))
    records = read_records(path)
    assert [(r['task'], r['status'], r['changed']) for r in records] == [
        ('made a change', 'ok', True),
        ('broke', 'failed', False),
        ('not needed', 'skipped', False),
        ('gone', 'unreachable', False),
        ('no change', 'ok', False),
    ]
    assert records[0]['result'] == {'changed': True, 'dest': '/x'}
    assert records[1]['result']['msg'] == 'boom'
    assert all(r['host'] == 'localhost' for r in records)


def test_callback_serialises_unusual_values(recorder):
    callback, path = recorder
    callback.v2_runner_on_ok(NewTaskResult('odd', {'data': b'bytes', 'when': object(), 'items': ('a', 'b')}))
    record = read_records(path)[0]
    assert record['result']['data'] == 'bytes'
    assert record['result']['items'] == ['a', 'b']
    assert record['result']['when'].startswith('<object object')


def test_callback_without_path_records_nothing(tmp_path):
    callback_loader.add_directory(os.path.join(INTEGRATION_DIR, 'callback_plugins'))
    callback = callback_loader.get('record_results')
    callback.set_options(direct={'path': None})
    callback.v2_runner_on_ok(NewTaskResult('ignored', {'changed': True}))
    assert not list(tmp_path.iterdir())


def test_random_pin():
    pins = {harness.random_pin() for dummy in range(50)}
    assert len(pins) == 50
    for pin in pins:
        assert len(pin) == 24
        assert set(pin) <= set(string.ascii_letters + string.digits)
        assert any(c.isdigit() for c in pin) and any(c.isalpha() for c in pin)
    assert len(harness.random_pin(64)) == 64
    with pytest.raises(ValueError):
        harness.random_pin(1)


def record(name, status='ok', changed=False):
    return {'task': name, 'host': 'localhost', 'status': status, 'changed': changed, 'result': {}}


def test_assert_four_run():
    names = ['check', 'run', 'check again', 'run again']
    good = [record('check', changed=True), record('run', changed=True), record('check again'), record('run again')]
    harness.assert_four_run(good, names)
    run = harness.PlaybookRun(0, '', '', good, 'playbook.yml', [])
    harness.assert_four_run(run, names)

    with pytest.raises(AssertionError, match='expected changed, changed, unchanged, unchanged'):
        harness.assert_four_run(good[:3] + [record('run again', changed=True)], names)
    with pytest.raises(AssertionError, match='did not succeed'):
        harness.assert_four_run(good[:1] + [record('run', status='failed', changed=True)] + good[2:], names)
    with pytest.raises(AssertionError, match='no result'):
        harness.assert_four_run(good[:3], names)


def test_playbook_run_lookup_and_leak_check():
    run = harness.PlaybookRun(0, 'out PUBLIC', 'err', [record('a'), record('b'), record('b')], 'p.yml', [])
    assert run.result('a')['task'] == 'a'
    with pytest.raises(KeyError):
        run.result('missing')
    with pytest.raises(ValueError):
        run.result('b')
    run.assert_not_leaked('secret-value')
    with pytest.raises(AssertionError, match='stdout'):
        run.assert_not_leaked('PUBLIC')


def test_extra_conf_rewrites_deny_lists(tmp_path):
    softhsm = harness.SoftHSM(str(tmp_path))
    softhsm.extra_conf(['slots.mechanisms = -CKM_EC_EDWARDS_KEY_PAIR_GEN,CKM_RSA_X_509', 'library.reset_on_fork = false'])
    softhsm.extra_conf('log.level = INFO\n')
    with open(softhsm.conf, encoding='utf-8') as conf:
        lines = conf.read().splitlines()
    assert lines[0] == 'directories.tokendir = %s' % softhsm.token_dir
    assert lines[-3:] == [
        'slots.mechanisms = -,CKM_EC_EDWARDS_KEY_PAIR_GEN,CKM_RSA_X_509',
        'library.reset_on_fork = false',
        'log.level = INFO',
    ]
    assert softhsm.env['SOFTHSM2_CONF'] == softhsm.conf
