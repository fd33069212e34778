# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""renew_before: days or a share of the lifetime, and the default window (30 days, at most a third of the lifetime),
on made-up validity; the x509_facts filter of the report decides "due" with the same rule."""

from __future__ import annotations

import datetime

import pytest
from ansible.errors import AnsibleFilterError
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ansible_collections.tokenfleet.pki.plugins.filter.x509_facts import x509_facts
from ansible_collections.tokenfleet.pki.plugins.module_utils.renewal_window import RenewBefore, RenewBeforeError

ISSUED = datetime.datetime(2026, 12, 1, 8, 0, tzinfo=datetime.timezone.utc)
HOUR, DAY = datetime.timedelta(hours=1), datetime.timedelta(days=1)
SECOND = datetime.timedelta(seconds=1)


@pytest.mark.parametrize('renew_before, lifetime, due_after', [
    (None, DAY, 16 * HOUR),  # step-ca's 24-hour certificate: due after two thirds
    (None, 30 * DAY, 20 * DAY),
    (None, 365 * DAY, 335 * DAY),  # long-lived: 30 days before expiry, as before
    ('50%', DAY, 12 * HOUR),
    ('33%', 300 * DAY, 201 * DAY),
    (' 12.5 % ', 8 * DAY, 7 * DAY),
    ('100%', DAY, datetime.timedelta(0)),
    ('0%', DAY, DAY),
    (30, 365 * DAY, 335 * DAY),
    ('30', 365 * DAY, 335 * DAY),  # -e role_var=30 arrives as text
    (30.0, 365 * DAY, 335 * DAY),
    (0, DAY, DAY),  # only at expiry
    (400, 365 * DAY, -35 * DAY),  # an explicit day count is taken as it is: always due
    (30, DAY, -29 * DAY),
])
def test_when_a_certificate_becomes_due(renew_before, lifetime, due_after):
    rule = RenewBefore(renew_before)
    renew_at = ISSUED + due_after
    assert rule.renew_at(ISSUED, ISSUED + lifetime) == renew_at
    assert rule.due(ISSUED, ISSUED + lifetime, renew_at) is True
    assert rule.due(ISSUED, ISSUED + lifetime, renew_at - SECOND) is False


@pytest.mark.parametrize('renew_before, expected', [
    (None, 'renew_before is the default: 30 days, at most a third of the lifetime (8.0 h)'),
    ('50%', 'renew_before is 50% of the lifetime (12.0 h)'),
    (7, 'renew_before is 7'),
])
def test_the_window_is_described_in_the_reason(renew_before, expected):
    assert RenewBefore(renew_before).describe(ISSUED, ISSUED + DAY) == expected


@pytest.mark.parametrize('value, message', [
    (-1, 'renew_before must be zero or more days (got -1)'),
    ('101%', 'renew_before must be a share of the lifetime from 0% to 100%, not 101%'),
    ('a third', "renew_before must be a number of days (for example 30) or a share of the lifetime (for example \"33%\"), not 'a third'"),
    ('-5%', "renew_before must be a number of days (for example 30) or a share of the lifetime (for example \"33%\"), not '-5%'"),
    (True, 'renew_before must be a number of days or a share of the lifetime such as "33%", not True'),
    (2.5, 'renew_before must be a number of days (for example 30) or a share of the lifetime (for example "33%"), not 2.5'),
])
def test_bad_values_name_the_option(value, message):
    with pytest.raises(RenewBeforeError) as caught:
        RenewBefore(value)
    assert str(caught.value) == message


def _pem(not_before, not_after):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, 'ws-001.example.com')])
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(not_before).not_valid_after(not_after)
                   .sign(key, hashes.SHA256()))
    return certificate.public_bytes(serialization.Encoding.PEM).decode('ascii')


def _at(moment):
    return moment.strftime('%Y-%m-%dT%H:%M:%SZ')


def test_the_report_filter_decides_due_with_the_same_rule():
    day_certificate = _pem(ISSUED, ISSUED + DAY)
    fresh = x509_facts(day_certificate, now=_at(ISSUED + 10 * HOUR))
    assert (fresh['days_left'], fresh['expired'], fresh['renewal_due'], fresh['renew_at']) == (0, False, False, '2026-12-02T00:00:00Z')
    assert x509_facts(day_certificate, now=_at(ISSUED + 16 * HOUR))['renewal_due'] is True
    assert x509_facts(day_certificate, now=_at(ISSUED + 13 * HOUR), renew_before='50%')['renewal_due'] is True
    assert x509_facts(day_certificate, now=_at(ISSUED + 10 * HOUR), renew_before='50%')['renewal_due'] is False
    year_certificate = _pem(ISSUED, ISSUED + 365 * DAY)
    assert x509_facts(year_certificate, now=_at(ISSUED + 334 * DAY))['renewal_due'] is False
    assert x509_facts(year_certificate, now=_at(ISSUED + 335 * DAY))['renewal_due'] is True
    assert x509_facts(year_certificate, now=_at(ISSUED), renew_before=400)['renewal_due'] is True
    assert x509_facts(year_certificate, now=_at(ISSUED + 400 * DAY))['renewal_due'] is True  # expired: due as well
    broken = x509_facts('not a certificate', on_error='return')
    assert (broken['renewal_due'], broken['renew_at']) == (None, None)
    with pytest.raises(AnsibleFilterError, match='^tokenfleet.pki.x509_facts: renew_before must be a number of days'):
        x509_facts(year_certificate, renew_before='soon')
