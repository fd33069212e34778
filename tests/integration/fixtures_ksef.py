# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Fixtures for the KSeF tests: the KSeF test double (tests/fakes/ksef_api.py) with one NIP context.

``ksef`` is a started FakeKsef whose owner holds every credential permission; after the test it must have
seen no request that breaks the official contract. ``admin_token`` is a KSeF token of that context with
CredentialsManage. Import them into a test module: ``from fixtures_ksef import admin_token, ksef``.
"""

from __future__ import annotations

import contextlib
import os
import sys
import typing as t

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'fakes'))
from ksef_api import FakeKsef  # noqa: E402  pylint: disable=wrong-import-position,import-error

NIP = '5265877635'
OWNER = ('Nip', NIP)


@contextlib.contextmanager
def started_ksef() -> t.Iterator[FakeKsef]:
    fake = FakeKsef()
    fake.start()
    fake.grant(NIP, OWNER, ['CredentialsManage', 'CredentialsRead', 'InvoiceRead', 'InvoiceWrite'])
    try:
        yield fake
        assert fake.violations() == [], 'our client broke the KSeF API contract: %r' % fake.violations()
    finally:
        fake.stop()


@pytest.fixture
def ksef() -> t.Iterator[FakeKsef]:
    with started_ksef() as fake:
        yield fake


@pytest.fixture
def admin_token(ksef) -> str:  # pylint: disable=redefined-outer-name
    dummy, secret = ksef.add_token(NIP, OWNER, ['CredentialsManage', 'InvoiceRead', 'InvoiceWrite'], 'Administrator')
    return secret
