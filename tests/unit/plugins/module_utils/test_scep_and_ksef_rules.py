# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Rules with no server involved: SCEP algorithm choice and pins, KSeF identifiers and error texts."""

from __future__ import annotations

import json

import pytest

from ansible_collections.tokenfleet.pki.plugins.module_utils.ksef.auth import context_identifier, nip_is_valid
from ansible_collections.tokenfleet.pki.plugins.module_utils.ksef.client import KsefError, _error_details
from ansible_collections.tokenfleet.pki.plugins.module_utils.scep.client import choose_algorithms, normalise_fingerprint
from ansible_collections.tokenfleet.pki.plugins.module_utils.scep.message import ScepError


@pytest.mark.parametrize('caps, expected', [
    (['SCEPStandard'], ('sha256', 'aes128', True)),
    (['AES', 'SHA-256', 'POSTPKIOperation'], ('sha256', 'aes128', True)),
    (['aes', 'sha-256'], ('sha256', 'aes128', False)),  # keywords are case-insensitive (RFC 8894 3.5.2)
    (['DES3', 'SHA-1'], ('sha1', '3des', False)),
    (['SHA-512', 'DES3', 'POSTPKIOperation'], ('sha512', '3des', True)),
    ([], ('sha1', '3des', False)),
])
def test_algorithms_from_capabilities(caps, expected):
    assert choose_algorithms(caps) == expected


def test_overrides_and_legacy_consent():
    assert choose_algorithms(['SCEPStandard'], 'sha512', '3des') == ('sha512', '3des', True)
    with pytest.raises(ScepError, match='encryption_algorithm des .* allow_legacy_algorithms=true'):
        choose_algorithms([], encryption_algorithm='des')
    with pytest.raises(ScepError, match='signature_algorithm md5 is broken'):
        choose_algorithms([], signature_algorithm='md5')
    assert choose_algorithms([], 'md5', 'des', allow_legacy=True) == ('md5', 'des', False)


@pytest.mark.parametrize('value, expected', [
    ('AB:CD:' + 'ef' * 30, ('sha256', 'abcd' + 'ef' * 30)),
    ('71AC3A84 DAAEC5B5 ' + '00' * 8, ('md5', '71ac3a84daaec5b5' + '00' * 8)),
    ('aa' * 20, ('sha1', 'aa' * 20)),
])
def test_fingerprints(value, expected):
    assert normalise_fingerprint(value) == expected


@pytest.mark.parametrize('value', ['', 'zz' * 32, 'ab' * 31])
def test_bad_fingerprints(value):
    with pytest.raises(ScepError, match='ca_fingerprint must be the hexadecimal SHA-256'):
        normalise_fingerprint(value)


@pytest.mark.parametrize('nip, valid', [('5265877635', True), ('5265877636', False), ('0265877635', False),
                                        ('526587763', False), ('1234567890', False)])
def test_nip_checksum(nip, valid):
    assert nip_is_valid(nip) is valid


def test_context_identifiers():
    assert context_identifier(dict(type='nip', value='5265877635')) == {'type': 'Nip', 'value': '5265877635'}
    assert context_identifier(dict(type='internal_id', value='5265877635-12345')) == {
        'type': 'InternalId', 'value': '5265877635-12345'}
    with pytest.raises(KsefError, match="context.value '5265877636' is not a valid NIP"):
        context_identifier(dict(type='nip', value='5265877636'))
    with pytest.raises(KsefError, match='is not a valid InternalId'):
        context_identifier(dict(type='internal_id', value='5265877635-123'))


def test_error_details_from_problem_details_and_legacy_bodies():
    problem = {'title': 'Bad Request', 'status': 400, 'errors': [
        {'code': 26001, 'description': 'Brak uprawnień', 'details': ['Brakujące uprawnienia: SubunitManage.']}]}
    assert _error_details(json.dumps(problem).encode()) == (
        '26001 Brak uprawnień (Brakujące uprawnienia: SubunitManage.)', [26001])
    legacy = {'exception': {'exceptionDetailList': [{'exceptionCode': 21470, 'exceptionDescription': 'Unknown key'}]}}
    assert _error_details(json.dumps(legacy).encode()) == ('21470 Unknown key', [21470])
    forbidden = {'title': 'Forbidden', 'status': 403, 'reasonCode': 'missing-permissions',
                 'security': {'requiredAnyOfPermissions': ['CredentialsManage']}}
    assert _error_details(json.dumps(forbidden).encode()) == (
        "missing-permissions (requiredAnyOfPermissions: ['CredentialsManage'])", [])
    assert _error_details(b'') == ('', [])
