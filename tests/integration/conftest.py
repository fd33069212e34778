# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Fixtures shared by every integration test (see harness.py for the details)."""

from __future__ import annotations

import os
import shutil

import pytest

from harness import SOFTHSM_MODULE, PlaybookRunner, SoftHSM, make_test_ca, random_pin

pytest_plugins = ['micromdm', 'stepca']


def _missing_tools() -> list[str]:
    missing = [tool for tool in ('softhsm2-util', 'pkcs11-tool') if shutil.which(tool) is None]
    if not os.path.exists(SOFTHSM_MODULE):
        missing.append(SOFTHSM_MODULE)
    return missing


@pytest.fixture
def softhsm(tmp_path) -> SoftHSM:
    """A SoftHSM2 private to this test: <tmp>/softhsm2.conf, tokens in <tmp>/tokens.

    Attributes: env, module, conf, token_dir; methods: init_token(), pkcs11_tool(), extra_conf().
    """
    missing = _missing_tools()
    if missing:
        pytest.fail('SoftHSM2/OpenSC not installed (%s); run "make deps"' % ', '.join(missing))
    return SoftHSM(str(tmp_path))


@pytest.fixture
def pin_factory():
    """Callable returning a new long random PIN (letters and digits); length defaults to 24."""
    return random_pin


@pytest.fixture
def run_playbook(tmp_path, softhsm) -> PlaybookRunner:
    """Callable run_playbook(tasks, env=None, check=False, verbosity=0, extra_vars=None, hosts='localhost').

    Runs the tasks in one play on localhost with the SoftHSM environment of this test and
    returns a harness.PlaybookRun (rc, stdout, stderr, results, result(name)).
    """
    return PlaybookRunner(str(tmp_path), softhsm.env)


@pytest.fixture
def token(softhsm) -> dict:
    """An initialised SoftHSM token 'ws-001' with long random user and SO PINs.

    A dict: hsm (the softhsm fixture), label, serial, user (the user PIN), so (the SO PIN).
    """
    pins = dict(user=random_pin(), so=random_pin())
    serial = softhsm.init_token('ws-001', pins['so'], pins['user'])
    return dict(hsm=softhsm, label='ws-001', serial=serial, **pins)


@pytest.fixture
def test_ca():
    """A throwaway CA: (key, certificate), see harness.make_test_ca() and harness.issue_certificate()."""
    return make_test_ca()
