# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Login and error handling of module_utils.token with a stand-in library.

SoftHSM never locks a PIN and never loses a token, so those paths are driven here with
stand-ins for python-pkcs11's token and library objects; everything else is tested against
SoftHSM in tests/integration.
"""

from __future__ import annotations

import pkcs11
import pytest
from pkcs11 import TokenFlag

from ansible_collections.tokenfleet.pki.plugins.module_utils import token as token_utils

SECRET_PIN = 'Qz7-unit-test-pin-9f83b2c1d4'


class FakeToken(object):
    def __init__(self, label='ws-001', serial=b'00c0ffee00000001', flags=None, open_error=None):
        self.label = label
        self.serial = serial
        self.flags = TokenFlag.TOKEN_INITIALIZED | TokenFlag.USER_PIN_INITIALIZED if flags is None else flags
        self.open_error = open_error
        self.open_calls = []

    def open(self, **kwargs):
        self.open_calls.append(kwargs)
        if self.open_error is not None:
            raise self.open_error
        return FakeSession()


class FakeSession(object):
    closed = False

    def close(self):
        self.closed = True


class FakeLibrary(object):
    def __init__(self, tokens=()):
        self.resets = 0
        self.tokens = list(tokens)

    def reset(self):
        self.resets += 1

    def initialised_tokens(self):
        return [t for t in self.tokens if t.flags & TokenFlag.TOKEN_INITIALIZED]

    find_token = token_utils.Pkcs11Library.find_token


@pytest.mark.parametrize('error, expected', [
    (pkcs11.PinIncorrect(), 'rejected by token \'ws-001\' (PIN incorrect). It was tried once and is not retried'),
    (pkcs11.PinLocked(), "the user PIN of token 'ws-001' is locked"),
    (pkcs11.PinExpired(), 'has expired'),
    (pkcs11.PinLenRange(), 'does not meet the rules'),
    (pkcs11.UserPinNotInitialized(), 'has no user PIN yet'),
    (pkcs11.TokenNotPresent(), 'the token is not present (TokenNotPresent)'),
])
def test_failed_login_is_tried_once_reset_and_reported_without_pin(error, expected):
    token = FakeToken(open_error=error)
    library = FakeLibrary([token])
    with pytest.raises(token_utils.TokenError) as caught:
        token_utils.TokenSession(library, token, rw=True, user_pin=SECRET_PIN)
    message = str(caught.value)
    assert expected in message
    assert SECRET_PIN not in message
    assert len(token.open_calls) == 1
    assert library.resets == 1


def test_locked_user_pin_is_not_tried_at_all():
    token = FakeToken(flags=TokenFlag.TOKEN_INITIALIZED | TokenFlag.USER_PIN_INITIALIZED | TokenFlag.USER_PIN_LOCKED)
    with pytest.raises(token_utils.TokenError, match="the user PIN of token 'ws-001' is locked; no login was attempted"):
        token_utils.TokenSession(FakeLibrary([token]), token, user_pin=SECRET_PIN)
    assert token.open_calls == []


def test_locked_so_pin_is_not_tried_at_all():
    token = FakeToken(flags=TokenFlag.TOKEN_INITIALIZED | TokenFlag.SO_PIN_LOCKED)
    with pytest.raises(token_utils.TokenError, match='the SO PIN .* is locked'):
        token_utils.TokenSession(FakeLibrary([token]), token, rw=True, so_pin=SECRET_PIN)
    assert token.open_calls == []


def test_successful_login_opens_one_session():
    token = FakeToken()
    session = token_utils.TokenSession(FakeLibrary([token]), token, user_pin=SECRET_PIN)
    assert session.logged_in
    assert token.open_calls == [dict(rw=False, user_pin=SECRET_PIN, so_pin=None)]


def test_find_token_lists_tokens_when_label_is_unknown():
    library = FakeLibrary([FakeToken('ws-001', b'1111'), FakeToken('ws-002', b'2222')])
    with pytest.raises(token_utils.TokenError) as caught:
        library.find_token(label='nope')
    assert str(caught.value) == ("no initialised token with label 'nope'; tokens present: "
                                 "'ws-001' (serial 1111), 'ws-002' (serial 2222)")


def test_find_token_refuses_two_tokens_with_one_label():
    library = FakeLibrary([FakeToken('same', b'1111'), FakeToken('same', b'2222')])
    with pytest.raises(token_utils.TokenError, match='2 tokens match label .same.*select one with token_label or token_serial'):
        library.find_token(label='same')


def test_find_token_by_serial_and_the_only_token():
    first, second = FakeToken('ws-001', b'1111'), FakeToken('ws-002', b'2222')
    assert FakeLibrary([first, second]).find_token(serial='2222') is second
    assert FakeLibrary([first]).find_token() is first
    with pytest.raises(token_utils.TokenError, match='2 tokens match any label'):
        FakeLibrary([first, second]).find_token()


def test_uninitialised_tokens_are_not_selected():
    empty = FakeToken('', b'', flags=TokenFlag(0))
    with pytest.raises(token_utils.TokenError, match='tokens present: none'):
        FakeLibrary([empty]).find_token()


@pytest.mark.parametrize('value, expected', [('01a2', b'\x01\xa2'), ('01:A2', b'\x01\xa2'), ('01 a2', b'\x01\xa2')])
def test_parse_hex_id(value, expected):
    assert token_utils.parse_hex_id(value) == expected


@pytest.mark.parametrize('value', ['xyz', '', '0', ':'])
def test_parse_hex_id_rejects(value):
    with pytest.raises(token_utils.TokenError, match='id must be a non-empty hexadecimal string'):
        token_utils.parse_hex_id(value)


def test_missing_module_file_is_a_clear_error(tmp_path):
    with pytest.raises(token_utils.TokenError, match='pkcs11_module .*/missing.so does not exist'):
        token_utils.Pkcs11Library(str(tmp_path / 'missing.so'))


def test_pkcs11_uri_escapes_per_rfc7512():
    uri = token_utils.pkcs11_uri(FakeToken('my token', b'ab12'), 'vpn key', b'\x01\xff', 'private')
    assert uri == 'pkcs11:token=my%20token;serial=ab12;id=%01%FF;object=vpn%20key;type=private'
