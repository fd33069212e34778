# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The KSeF client's rules for Retry-After, the backoff floor, JSON shapes and server text."""

from __future__ import annotations

import datetime
import json

import pytest

from ansible_collections.tokenfleet.pki.plugins.module_utils.ksef import client as ksef_client
from ansible_collections.tokenfleet.pki.plugins.module_utils.ksef.client import (
    REFERENCE,
    KsefApiError,
    KsefClient,
    KsefError,
    _error_details,
    check_shape,
    retry_after_seconds,
)

NOW = datetime.datetime(2026, 12, 2, 8, 0, 0, tzinfo=datetime.timezone.utc)


@pytest.mark.parametrize('value, seconds', [
    ('30', 30.0), (' 2.5 ', 2.5), ('0', 0.0), ('0.001', 0.001), ('inf', float('inf')), ('99999999', 99999999.0),
    ('-5', None), ('nan', None), ('soon', None), ('', None), (None, None),
    ('Wed, 02 Dec 2026 08:00:30 GMT', 30.0), ('Wed, 21 Oct 2015 07:28:00 GMT', 0.0),
])
def test_retry_after_seconds(value, seconds):
    assert retry_after_seconds(value, now=NOW) == seconds


def test_the_floor_grows_and_the_waits_stay_within_max_wait(monkeypatch):
    slept = []
    monkeypatch.setattr(ksef_client.time, 'sleep', slept.append)
    client = KsefClient('https://ksef.example/v2', max_wait=20)
    with pytest.raises(KsefApiError, match=r'^KSeF kept answering GET /tokens with HTTP 429 \(rate limit\) \(Retry-After: 0\)'):
        for dummy in range(100):
            client._wait_retry_after({'Retry-After': '0'}, 'GET /tokens')
    assert slept == [1.0, 2.0, 4.0, 8.0] and client.waited == 15.0


def test_the_number_of_429_retries_is_capped(monkeypatch):
    monkeypatch.setattr(ksef_client.time, 'sleep', lambda seconds: None)
    client = KsefClient('https://ksef.example/v2', max_wait=100000)
    with pytest.raises(KsefApiError, match='11 times in this run, the most the module retries'):
        for dummy in range(100):
            client._wait_retry_after({}, 'GET /tokens')
    assert client.rate_limited == 11


def test_a_retry_after_longer_than_max_wait_ends_at_once(monkeypatch):
    monkeypatch.setattr(ksef_client.time, 'sleep', pytest.fail)
    client = KsefClient('https://ksef.example/v2', max_wait=120)
    with pytest.raises(KsefApiError, match=r'\(Retry-After: 3600\): waited 0 of max_wait=120 seconds'):
        client._wait_retry_after({'Retry-After': '3600'}, 'DELETE /tokens/x')


@pytest.mark.parametrize('value, shape, problem', [
    ([], {'tokens': [dict]}, 'the answer is a list, not an object'),
    ({'tokens': [{'a': 1}]}, {'tokens': [{'referenceNumber': str}]}, 'tokens[0] has no referenceNumber'),
    ({'a': {'b': None}}, {'a': {'b': int}}, 'a.b is null'),
    ({'a': True}, {'a': int}, 'a is true or false, not a whole number'),
    ({'r': 'x y\n'}, {'r': REFERENCE}, 'r is a string of another form'),
    ({'token': 12345}, {'token': str}, 'token is a whole number, not a string'),
])
def test_check_shape_names_the_endpoint_and_the_place_never_the_value(value, shape, problem):
    with pytest.raises(KsefError) as caught:
        check_shape(value, shape, 'GET /tokens')
    assert str(caught.value) == 'KSeF answered GET /tokens with JSON of an unexpected shape: %s' % problem


def test_check_shape_allows_missing_optional_and_unknown_keys():
    value = {'tokens': [], 'continuationToken': None, 'new': 1}
    assert check_shape(value, {'tokens': [dict], 'continuationToken?': str}, 'GET /tokens') is value


@pytest.mark.parametrize('body', [b'[1, 2]', b'{"errors": {"code": 1}}', b'{"exception": []}', b'{"errors": [5, null]}'])
def test_error_details_of_any_shape_do_not_crash(body):
    text, codes = _error_details(body)
    assert isinstance(text, str) and codes == []


def test_error_details_are_cut_and_cleaned():
    text, codes = _error_details(json.dumps({'errors': [{'code': 21405, 'description': '\x1b[31mred\x1b[0m\n' * 500}]}).encode())
    assert codes == [21405] and text.startswith('21405 red red') and len(text) <= 203 and '\x1b' not in text
