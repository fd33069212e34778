# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A SCEP client: CA discovery and pinning, algorithm choice, request and reply. Private to the collection."""

from __future__ import annotations

import hashlib
import os
import re

from ansible_collections.tokenfleet.pki.plugins.module_utils.files import read_file
from ansible_collections.tokenfleet.pki.plugins.module_utils.scep.message import (
    CIPHERS,
    DIGESTS,
    ScepError,
    certificates_from_pkcs7,
    check_cert_rep,
    open_envelope,
    pki_message,
)
from ansible_collections.tokenfleet.pki.plugins.module_utils.x509 import (
    HAS_CRYPTOGRAPHY,
    certificate_der,
    colon_hex,
    load_certificate,
    public_key_der,
)

if HAS_CRYPTOGRAPHY:
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
    from cryptography.hazmat.primitives.serialization import Encoding

LEGACY_DIGESTS = ('md5',)
LEGACY_CIPHERS = ('des',)
_FINGERPRINT_HASHES = {64: 'sha256', 40: 'sha1', 32: 'md5'}


def normalise_fingerprint(value, option='ca_fingerprint'):
    """(hash name, lowercase hex) of a fingerprint such as 'AB:CD:...' or 'abcd...' (SHA-256; SHA-1/MD5 for NDES)."""
    cleaned = re.sub(r'[\s:]', '', value or '').lower()
    if not re.match(r'^[0-9a-f]+$', cleaned) or len(cleaned) not in _FINGERPRINT_HASHES:
        raise ScepError('%s must be the hexadecimal SHA-256 (or, for old NDES, SHA-1 or MD5) fingerprint of the CA '
                        'certificate, as scep_ca_info returns it' % option)
    return _FINGERPRINT_HASHES[len(cleaned)], cleaned


def fingerprint(certificate, name='sha256'):
    return hashlib.new(name, certificate_der(certificate)).hexdigest()


def certificate_summary(certificate, role=None):
    usage = None
    try:
        ku = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
        usage = [name for name in ('digital_signature', 'key_encipherment', 'data_encipherment', 'key_cert_sign')
                 if getattr(ku, name)]
    except x509.ExtensionNotFound:
        pass
    summary = dict(subject=certificate.subject.rfc4514_string(), issuer=certificate.issuer.rfc4514_string(),
                   not_after=certificate.not_valid_after_utc.strftime('%Y-%m-%dT%H:%M:%SZ'),
                   fingerprint_sha256=colon_hex(bytes.fromhex(fingerprint(certificate))), key_usage=usage,
                   pem=certificate.public_bytes(Encoding.PEM).decode('ascii'))
    if role is not None:
        summary['role'] = role
    return summary


def _issued_by(certificate, issuer):
    if certificate.issuer != issuer.subject:
        return False
    public_key = issuer.public_key()
    try:
        if isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(certificate.signature, certificate.tbs_certificate_bytes, padding.PKCS1v15(),
                              certificate.signature_hash_algorithm)
        elif isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(certificate.signature, certificate.tbs_certificate_bytes,
                              ec.ECDSA(certificate.signature_hash_algorithm))
        else:
            return False
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def _has_usage(certificate, name):
    try:
        return getattr(certificate.extensions.get_extension_for_class(x509.KeyUsage).value, name)
    except x509.ExtensionNotFound:
        return None


def _is_ca(certificate):
    try:
        return certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


class CaCertificates(object):
    """What GetCACert returned, checked against the pin: the CA, its RA certificates, who signs and who decrypts."""

    def __init__(self, certificates, pinned):
        self.all = certificates
        pinned_der = set(certificate_der(cert) for cert in pinned)
        self.ca = [cert for cert in certificates if certificate_der(cert) in pinned_der]
        if not self.ca:
            raise ScepError('the SCEP server\'s CA certificate (%s) does not match the pinned CA; refusing to talk to it'
                            % ', '.join(cert.subject.rfc4514_string() or '(no subject)' for cert in certificates))
        self.ra = [cert for cert in certificates if cert not in self.ca and any(_issued_by(cert, ca) for ca in self.ca)]
        self.trusted = self.ca + self.ra

    def encryption_certificates(self):
        """The RA certificate for key encipherment (NDES has a separate one), else the CA."""
        for usage in ('key_encipherment', 'data_encipherment'):
            chosen = [cert for cert in self.ra if not _is_ca(cert) and _has_usage(cert, usage)]
            if chosen:
                return chosen[:1]
        plain = [cert for cert in self.ra if not _is_ca(cert) and _has_usage(cert, 'key_encipherment') is None]
        return plain[:1] or self.ca[:1]

    def signing_certificates(self):
        return [cert for cert in self.ra if _has_usage(cert, 'digital_signature')] or self.ca[:1]

    def issuer(self):
        """The CA that issues end-entity certificates (named in CertPoll)."""
        for ra in self.ra:
            for ca in self.ca:
                if ra.issuer == ca.subject:
                    return ca
        return self.ca[0]

    def describe(self):
        encryption, signing = self.encryption_certificates(), self.signing_certificates()
        result = [certificate_summary(cert, 'ca') for cert in self.ca]
        for cert in self.ra:
            roles = [name for name, chosen in (('encryption', encryption), ('signing', signing)) if cert in chosen]
            result.append(certificate_summary(cert, 'ra-' + '+'.join(roles) if roles else 'ra'))
        return result


def parse_ca_certificates(content_type, data):
    """Certificates from a GetCACert reply: one DER certificate or a degenerate PKCS#7 (parsed by content)."""
    if not data:
        raise ScepError('the SCEP server sent an empty GetCACert reply')
    try:
        return [x509.load_der_x509_certificate(data)]
    except ValueError:
        pass
    if b'-----BEGIN CERTIFICATE' in data:
        return x509.load_pem_x509_certificates(data)
    return certificates_from_pkcs7(data)


def load_pinned_certificates(path):
    data = read_file(path, 'ca_certificate_path')
    try:
        if b'-----BEGIN' in data:
            return x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise ScepError('ca_certificate_path %s holds no PEM certificate: %s' % (path, exc))
    return [load_certificate(data, 'ca_certificate_path %s' % path)]


def choose_algorithms(caps, signature_algorithm='auto', encryption_algorithm='auto', allow_legacy=False):
    """(digest, cipher, use POST) from GetCACaps and the overrides (RFC 8894 section 3.5.2)."""
    upper = set(cap.upper() for cap in caps)
    standard = 'SCEPSTANDARD' in upper
    if signature_algorithm == 'auto':
        digest = 'sha256' if standard or 'SHA-256' in upper else 'sha512' if 'SHA-512' in upper else 'sha1'
    else:
        digest = signature_algorithm
    if encryption_algorithm == 'auto':
        cipher = 'aes128' if standard or 'AES' in upper else '3des'
    else:
        cipher = encryption_algorithm
    if not allow_legacy:
        if digest in LEGACY_DIGESTS:
            raise ScepError('signature_algorithm md5 is broken; set allow_legacy_algorithms=true if the server needs it')
        if cipher in LEGACY_CIPHERS:
            raise ScepError('encryption_algorithm des (single DES) is broken; set allow_legacy_algorithms=true if the '
                            'server needs it')
    if digest not in DIGESTS or cipher not in CIPHERS:
        raise ScepError('unsupported algorithms %s/%s' % (digest, cipher))
    return digest, cipher, standard or 'POSTPKIOPERATION' in upper


class ScepClient(object):
    def __init__(self, transport, ca_identifier=None, pinned=None, pinned_fingerprint=None,
                 signature_algorithm='auto', encryption_algorithm='auto', allow_legacy=False):
        self.transport = transport
        self.ca_identifier = ca_identifier
        self.pinned = pinned or []
        self.pinned_fingerprint = pinned_fingerprint
        self.signature_algorithm = signature_algorithm
        self.encryption_algorithm = encryption_algorithm
        self.allow_legacy = allow_legacy
        self.caps = None
        self.ca_certificates = None

    def discover(self):
        self.caps = self.transport.get_ca_caps(self.ca_identifier)
        content_type, data = self.transport.get_ca_cert(self.ca_identifier)
        certificates = parse_ca_certificates(content_type, data)
        pinned = list(self.pinned)
        if self.pinned_fingerprint is not None:
            name, value = self.pinned_fingerprint
            pinned += [cert for cert in certificates if fingerprint(cert, name) == value]
        self.ca_certificates = CaCertificates(certificates, pinned)
        self.digest, self.cipher, self.use_post = choose_algorithms(
            self.caps, self.signature_algorithm, self.encryption_algorithm, self.allow_legacy)
        return self.ca_certificates

    def exchange(self, message_type, message_data, signer_key, signer_cert, transaction_id):
        """Send one pkiMessage and return the checked CertRep."""
        nonce = os.urandom(16)
        message = pki_message(message_type, message_data, signer_key, signer_cert,
                              self.ca_certificates.encryption_certificates(), transaction_id, nonce,
                              self.digest, self.cipher)
        reply = self.transport.pki_operation(message, self.use_post)
        return check_cert_rep(reply, self.ca_certificates.trusted, transaction_id, nonce)

    def issued_certificate(self, cert_rep, decrypt_key, request_public_key):
        """(certificate, chain) from a SUCCESS reply, checked against the request's key and the CA."""
        inner = open_envelope(cert_rep.envelope_der, decrypt_key)
        certificates = certificates_from_pkcs7(inner)
        wanted = public_key_der(request_public_key)
        issued = [cert for cert in certificates if public_key_der(cert.public_key()) == wanted]
        if not issued:
            raise ScepError('the SCEP reply holds no certificate for the requested key')
        certificate = issued[0]
        known = self.ca_certificates.all + certificates
        pinned = self.ca_certificates.ca
        issuers = [ca for ca in pinned if _issued_by(certificate, ca)]
        if not issuers:
            intermediates = [cert for cert in known if _is_ca(cert) and any(_issued_by(cert, ca) for ca in pinned)]
            issuers = [cert for cert in intermediates if _issued_by(certificate, cert)]
        if not issuers:
            raise ScepError('the certificate in the SCEP reply is not issued by the pinned CA')
        chain = [cert for cert in known if cert is not certificate and _is_ca(cert)]
        return certificate, chain
