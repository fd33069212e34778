# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Certificate and public-key facts, private to the collection."""

from __future__ import annotations

import traceback

from ansible.module_utils.basic import missing_required_lib

try:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
except ImportError:
    HAS_CRYPTOGRAPHY = False
    CRYPTOGRAPHY_IMPORT_ERROR = traceback.format_exc()
else:
    HAS_CRYPTOGRAPHY = True
    CRYPTOGRAPHY_IMPORT_ERROR = None


class CertificateError(Exception):
    """Input that is not a usable certificate; the message is safe to show."""


def require_cryptography(module):
    if not HAS_CRYPTOGRAPHY:
        module.fail_json(msg=missing_required_lib('cryptography'), exception=CRYPTOGRAPHY_IMPORT_ERROR)


def colon_hex(data):
    return ':'.join('%02x' % b for b in data)


def public_key_der(public_key):
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def public_key_pem(public_key):
    return public_key.public_bytes(serialization.Encoding.PEM,
                                   serialization.PublicFormat.SubjectPublicKeyInfo).decode('ascii')


def public_key_fingerprint(public_key):
    """SHA-256 of the DER SubjectPublicKeyInfo, as colon-separated hex."""
    digest = hashes.Hash(hashes.SHA256())
    digest.update(public_key_der(public_key))
    return colon_hex(digest.finalize())


def subject_key_identifier(public_key):
    """RFC 5280 method 1 key identifier (SHA-1 of the subjectPublicKey bits)."""
    return x509.SubjectKeyIdentifier.from_public_key(public_key).digest


def load_certificate(data, source='certificate'):
    """An x509.Certificate from PEM or DER bytes; a clear error names ``source`` otherwise."""
    try:
        if b'-----BEGIN' in data:
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise CertificateError('%s is not a PEM or DER X.509 certificate: %s' % (source, exc))


def certificate_der(certificate):
    return certificate.public_bytes(serialization.Encoding.DER)


def certificate_pem(certificate):
    return certificate.public_bytes(serialization.Encoding.PEM).decode('ascii')


def certificate_facts(certificate):
    """What users compare certificates by: names, serial, validity, fingerprint."""
    return dict(
        subject=certificate.subject.rfc4514_string(),
        issuer=certificate.issuer.rfc4514_string(),
        serial_number='%x' % certificate.serial_number,
        not_before=certificate.not_valid_before_utc.strftime('%Y-%m-%dT%H:%M:%SZ'),
        not_after=certificate.not_valid_after_utc.strftime('%Y-%m-%dT%H:%M:%SZ'),
        fingerprint_sha256=colon_hex(certificate.fingerprint(hashes.SHA256())),
    )
