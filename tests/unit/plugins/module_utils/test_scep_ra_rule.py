# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The RA rule on certificates alone (who receives the request, who may sign the reply), and GetCACaps parsing."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ansible_collections.tokenfleet.pki.plugins.module_utils.scep.client import CaCertificates, normalise_ra_fingerprints
from ansible_collections.tokenfleet.pki.plugins.module_utils.scep.message import ScepError
from ansible_collections.tokenfleet.pki.plugins.module_utils.scep.transport import ScepCapsError, parse_caps

NOW = datetime.datetime.now(datetime.timezone.utc)
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
CRA = x509.ObjectIdentifier('1.3.6.1.4.1.311.20.2.1')


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ca(cn='Test CA'):
    return (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn)).public_key(KEY.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(NOW - datetime.timedelta(days=1))
            .not_valid_after(NOW + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(KEY, hashes.SHA256()))


CA = _ca()
OTHER_CA = _ca('Other CA')


def _issue(cn, eku=None, encipher=True, sign=True, usage=True, issuer=CA, start=-1, end=365):
    builder = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(issuer.subject).public_key(KEY.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(NOW + datetime.timedelta(days=start))
               .not_valid_after(NOW + datetime.timedelta(days=end)))
    if usage:
        builder = builder.add_extension(x509.KeyUsage(sign, False, encipher, False, False, False, False, False, False),
                                        critical=True)
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    return builder.sign(KEY, hashes.SHA256())


def _fingerprint(cert):
    return cert.fingerprint(hashes.SHA256()).hex()


@pytest.mark.parametrize('cert, roles, reason', [
    (_issue('no eku'), ('encryption', 'signing'), None),
    (_issue('no key usage', usage=False), ('encryption', 'signing'), None),
    (_issue('ndes enc', eku=[CRA], sign=False), ('encryption',), None),
    (_issue('ndes sign', eku=[CRA], encipher=False), ('signing',), None),
    (_issue('any', eku=[x509.ObjectIdentifier('2.5.29.37.0')]), ('encryption', 'signing'), None),
    (_issue('device', eku=[ExtendedKeyUsageOID.CLIENT_AUTH]), (),
     "its extended key usage (clientAuth) limits it to other uses than an RA's; pin it with ra_fingerprint if it is the CA's RA"),
    (_issue('mail', eku=[ExtendedKeyUsageOID.EMAIL_PROTECTION, ExtendedKeyUsageOID.SERVER_AUTH]), (),
     "its extended key usage (emailProtection, serverAuth) limits it to other uses than an RA's; pin it with ra_fingerprint if it "
     "is the CA's RA"),
    (_issue('foreign', issuer=OTHER_CA), (), 'not issued by the pinned CA'),
    (_issue('old', start=-30, end=-1), (), 'expired on '),
    (_issue('future', start=2), (), 'not valid before '),
    (_issue('neither', encipher=False, sign=False), (), 'its key usage allows neither keyEncipherment nor digitalSignature'),
])
def test_the_ra_rule(cert, roles, reason):
    certificates = CaCertificates([CA, cert], [CA])
    got_roles, got_reason = certificates.role_of(cert)
    assert got_roles == roles
    assert (got_reason or '').startswith(reason or '') and (got_reason is None) == (reason is None)
    assert certificates.encryption_certificates() == ([cert] if 'encryption' in roles else [CA])
    assert certificates.signing_certificates() == [CA] + ([cert] if 'signing' in roles else [])


def test_ra_fingerprint_pins_exclusively_and_needs_the_pinned_certificates():
    tls_ra, plain_ra = _issue('tls ra', eku=[ExtendedKeyUsageOID.SERVER_AUTH]), _issue('plain ra')
    pinned = CaCertificates([CA, tls_ra, plain_ra], [CA], normalise_ra_fingerprints(_fingerprint(tls_ra).upper()))
    assert pinned.role_of(tls_ra) == (('encryption', 'signing'), None)
    assert pinned.role_of(plain_ra) == ((), 'not pinned by ra_fingerprint')
    pinned.check_ra_fingerprints()
    with pytest.raises(ScepError, match='^ra_fingerprint %s matches none of the certificates the SCEP server sent' % ('ab' * 32)):
        CaCertificates([CA, plain_ra], [CA], ['ab' * 32]).check_ra_fingerprints()
    foreign = _issue('foreign', issuer=OTHER_CA)
    with pytest.raises(ScepError, match='is not an RA: not issued by the pinned CA; an RA certificate must be issued by'):
        CaCertificates([CA, foreign], [CA], [_fingerprint(foreign)]).check_ra_fingerprints()


@pytest.mark.parametrize('value', ['zz', 'ab' * 20, ['ab' * 32, 'x'], []])
def test_bad_ra_fingerprints_name_the_option(value):
    with pytest.raises(ScepError, match='^ra_fingerprint '):
        normalise_ra_fingerprints(value)


@pytest.mark.parametrize('data, expected', [
    (b'Renewal\nSHA-1\nSHA-256\nAES\nDES3\nSCEPStandard\nPOSTPKIOperation', None),
    (b'POSTPKIOperation\r\nRenewal\r\nSHA-512\r\nX-Vendor-Thing\r\n', None),
    (b'', 'the GetCACaps answer is empty'),
    (b' \r\n ', 'the GetCACaps answer is empty'),
    (b'<html><body>It works!</body></html>', 'the GetCACaps answer is not a list of capabilities: <html>'),
    (b'foo\nbar', 'the GetCACaps answer names no SCEP capability: foo bar'),
    (b'\xff\xfe\x00garbage', 'the GetCACaps answer is not text (10 bytes): '),
])
def test_get_ca_caps_answers(data, expected):
    if expected is None:
        assert parse_caps(data) == data.decode('ascii').split()
    else:
        with pytest.raises(ScepCapsError, match='^' + expected.replace('(', r'\(').replace(')', r'\)')):
            parse_caps(data)
