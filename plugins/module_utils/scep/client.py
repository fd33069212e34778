# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A SCEP client: CA discovery and pinning, algorithm choice, request and reply. Private to the collection."""

from __future__ import annotations

import datetime
import hashlib
import os
import re

from ansible_collections.tokenfleet.pki.plugins.module_utils.bounded_http import server_text
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
from ansible_collections.tokenfleet.pki.plugins.module_utils.scep.transport import ScepCapsError
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


OID_CERTIFICATE_REQUEST_AGENT = '1.3.6.1.4.1.311.20.2.1'
OID_CMC_RA = '1.3.6.1.5.5.7.3.28'
OID_ANY_EXTENDED_KEY_USAGE = '2.5.29.37.0'
RA_EXTENDED_KEY_USAGES = {
    OID_CERTIFICATE_REQUEST_AGENT: 'Certificate Request Agent',
    OID_CMC_RA: 'CMC Registration Authority',
    OID_ANY_EXTENDED_KEY_USAGE: 'anyExtendedKeyUsage',
}
_EKU_NAMES = {
    '1.3.6.1.5.5.7.3.1': 'serverAuth', '1.3.6.1.5.5.7.3.2': 'clientAuth', '1.3.6.1.5.5.7.3.3': 'codeSigning',
    '1.3.6.1.5.5.7.3.4': 'emailProtection', '1.3.6.1.5.5.7.3.8': 'timeStamping', '1.3.6.1.5.5.7.3.9': 'OCSPSigning',
    '1.3.6.1.5.5.7.3.17': 'ipsecIKE',
}
RA_RULE = ('an RA certificate must be issued by the pinned CA (when a CA above it is pinned, such as the root: by the '
           'issuing CA that chains to the pin), be valid now, allow keyEncipherment (to receive the request) or '
           'digitalSignature (to sign the reply) in its key usage, and be pinned with ra_fingerprint or, when '
           'ra_fingerprint is not set, carry the Certificate Request Agent, CMC RA or anyExtendedKeyUsage extended key '
           'usage, or none at all')
_ROLE_USAGES = (('encryption', 'key_encipherment'), ('signing', 'digital_signature'))


def _extended_key_usages(certificate):
    """Dotted OIDs of the certificate's extended key usage, None when it has no such extension."""
    try:
        return [oid.dotted_string for oid in certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value]
    except x509.ExtensionNotFound:
        return None


def normalise_ra_fingerprints(values):
    """Lowercase hex SHA-256 fingerprints of ``ra_fingerprint`` (a list, or one string)."""
    if values is None:
        return None
    if isinstance(values, str):
        values = [values]
    cleaned = []
    for value in values:
        text = re.sub(r'[\s:]', '', value or '').lower()
        if not re.match(r'^[0-9a-f]{64}$', text):
            raise ScepError('ra_fingerprint must list SHA-256 fingerprints of RA certificates in hexadecimal, as '
                            'scep_ca_info returns them (got %r)' % server_text(value, 80))
        cleaned.append(text)
    if not cleaned:
        raise ScepError('ra_fingerprint is empty; leave it out to accept RA certificates marked as RAs')
    return cleaned


def subject_text(certificate):
    return server_text(certificate.subject.rfc4514_string()) or '(no subject)'


def _validity_problem(certificate, now):
    """Why ``certificate`` is not valid at ``now``, or None."""
    if certificate.not_valid_before_utc > now:
        return 'not valid before %s' % certificate.not_valid_before_utc.strftime('%Y-%m-%dT%H:%M:%SZ')
    if certificate.not_valid_after_utc < now:
        return 'expired on %s' % certificate.not_valid_after_utc.strftime('%Y-%m-%dT%H:%M:%SZ')
    return None


class CaCertificates(object):
    """What GetCACert returned, judged against the pins: the CA chain, its RA certificates, who signs and who decrypts.

    A pin (ca_certificate_path, or the certificate ca_fingerprint names) may be the root or any CA of the chain.
    A certificate the server sent belongs to the chain when it is a pin, or when it is a CA (CA:TRUE), valid now
    and signed by a certificate of the chain. The issuing CA is the chain's CA that issued no other CA of the
    chain: requests are encrypted to it (or to an RA), never to a root above it, which cannot decrypt them.
    The RA rule (RA_RULE) keeps a certificate the CA issued to some device from receiving requests
    (and their challenge) or vouching for replies: only the chain's CAs and RA certificates of the issuing CA count.
    """

    def __init__(self, certificates, pinned, ra_fingerprints=None, now=None):
        self.all = certificates
        self.ra_fingerprints = ra_fingerprints
        self.now = now or datetime.datetime.now(datetime.timezone.utc)
        pinned_der = set(certificate_der(cert) for cert in pinned)
        self.pinned = [cert for cert in certificates if certificate_der(cert) in pinned_der]
        self.trusted = list(pinned) + [cert for cert in self._chained(certificates, pinned) if cert not in self.pinned]
        self.ca = [cert for cert in certificates if cert in self.pinned or cert in self.trusted]
        if not self.ca:
            raise ScepError('the SCEP server\'s CA certificate (%s) does not match the pinned CA; refusing to talk to it'
                            % ', '.join(subject_text(cert) for cert in certificates))
        self.issuing = [ca for ca in self.ca if not any(other is not ca and _issued_by(other, ca) for other in self.ca)]
        self.issuing = self.issuing or self.ca[-1:]
        self.roles = []  # (certificate, roles, reason it is no RA or None), for every certificate not in the chain
        for cert in certificates:
            if cert not in self.ca:
                roles, reason = self._judge(cert)
                self.roles.append((cert, roles, reason))
        self.ra = [cert for cert, roles, reason in self.roles if roles]

    def _chained(self, certificates, pinned):
        """The sent CA certificates that chain to a pin, each valid now (at most one pass per certificate)."""
        trusted, chained = list(pinned), []
        for dummy in certificates:
            found = [cert for cert in certificates if cert not in chained and cert not in self.pinned and _is_ca(cert)
                     and _validity_problem(cert, self.now) is None and any(_issued_by(cert, ca) for ca in trusted)]
            if not found:
                break
            chained += found
            trusted += found
        return chained

    def _judge(self, cert):
        """(roles, None) for an RA certificate, ((), why not) for any other."""
        if not any(_issued_by(cert, ca) for ca in self.issuing):
            if any(_issued_by(cert, ca) for ca in self.trusted):
                return (), 'not issued by the issuing CA (%s)' % ', '.join(subject_text(ca) for ca in self.issuing)
            return (), 'not issued by the pinned CA'
        problem = _validity_problem(cert, self.now)
        if problem is not None:
            return (), problem
        if self.ra_fingerprints is not None:
            if fingerprint(cert) not in self.ra_fingerprints:
                return (), 'not pinned by ra_fingerprint'
        else:
            usages = _extended_key_usages(cert)
            if usages is not None and not any(oid in RA_EXTENDED_KEY_USAGES for oid in usages):
                return (), ('its extended key usage (%s) limits it to other uses than an RA\'s; pin it with '
                            'ra_fingerprint if it is the CA\'s RA' % ', '.join(_EKU_NAMES.get(oid, oid) for oid in usages))
        roles = tuple(role for role, usage in _ROLE_USAGES if _has_usage(cert, usage) is not False)
        if not roles:
            return (), 'its key usage allows neither keyEncipherment nor digitalSignature'
        return roles, None

    def role_of(self, cert):
        for known, roles, reason in self.roles:
            if known == cert:
                return roles, reason
        return (), None

    def check_ra_fingerprints(self):
        """Every pinned RA must be among the RA certificates the server sent (else its RA changed: stop)."""
        if self.ra_fingerprints is None:
            return
        for value in self.ra_fingerprints:
            matching = [cert for cert in self.all if fingerprint(cert) == value]
            if not matching:
                raise ScepError('ra_fingerprint %s matches none of the certificates the SCEP server sent (%s)'
                                % (value, ', '.join(subject_text(cert) for cert in self.all)))
            roles, reason = self.role_of(matching[0])
            if not roles:
                raise ScepError('ra_fingerprint %s is the certificate %s, which is not an RA: %s; %s'
                                % (value, subject_text(matching[0]), reason or 'it is the pinned CA', RA_RULE))

    def _with_role(self, role):
        return [cert for cert, roles, reason in self.roles if role in roles]

    def encryption_certificates(self):
        """The RA certificate for key encipherment (NDES has a separate one), else the issuing CA."""
        chosen = [cert for cert in self._with_role('encryption') if not _is_ca(cert)]
        return chosen[:1] or self.issuing[:1]

    def signing_certificates(self):
        """Who may sign a CertRep: the CAs of the pinned chain the server sent and the RA certificates for signing."""
        return self.ca + self._with_role('signing')

    def why_not_signer(self, cert):
        """Why ``cert`` (None: not among the server's certificates) may not sign a CertRep."""
        if cert is None or cert not in self.all:
            return 'it is not among the certificates the server sent in GetCACert'
        roles, reason = self.role_of(cert)
        if reason is not None:
            return reason
        return 'its key usage lacks digitalSignature'

    def issuer(self):
        """The CA that issues end-entity certificates (named in CertPoll)."""
        for ra in self.ra:
            for ca in self.issuing:
                if _issued_by(ra, ca):
                    return ca
        return self.issuing[0]

    def describe(self):
        encryption, signing = self.encryption_certificates(), self.signing_certificates()
        result = []
        for cert in self.ca:
            summary = certificate_summary(cert, 'ca')
            summary.update(matches_pin=cert in self.pinned, issuing=cert in self.issuing)
            result.append(summary)
        for cert, roles, reason in self.roles:
            if not roles:
                summary = certificate_summary(cert, 'not-ra')
                summary['not_ra_reason'] = reason
            else:
                chosen = [name for name, certs in (('encryption', encryption), ('signing', signing)) if cert in certs]
                summary = certificate_summary(cert, 'ra-' + '+'.join(chosen) if chosen else 'ra')
            summary['extended_key_usage'] = [_EKU_NAMES.get(oid, RA_EXTENDED_KEY_USAGES.get(oid, oid))
                                             for oid in _extended_key_usages(cert) or []] or None
            result.append(summary)
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
    """One SCEP conversation: discovery (caps, CA and RA certificates), then checked exchanges."""

    def __init__(self, transport, ca_identifier=None, pinned=None, pinned_fingerprint=None,
                 signature_algorithm='auto', encryption_algorithm='auto', allow_legacy=False, ra_fingerprint=None):
        self.transport = transport
        self.ca_identifier = ca_identifier
        self.pinned = pinned or []
        self.pinned_fingerprint = pinned_fingerprint
        self.signature_algorithm = signature_algorithm
        self.encryption_algorithm = encryption_algorithm
        self.allow_legacy = allow_legacy
        self.ra_fingerprints = normalise_ra_fingerprints(ra_fingerprint)
        self.caps = None
        self.ca_certificates = None

    def _caps(self):
        """GetCACaps, or None when it failed and both algorithms were set (a failure is no licence to downgrade)."""
        try:
            return self.transport.get_ca_caps(self.ca_identifier)
        except ScepCapsError as exc:
            if self.signature_algorithm != 'auto' and self.encryption_algorithm != 'auto':
                return None
            raise ScepError('%s; without the server\'s capabilities SCEP falls back to SHA-1, 3DES and GET, so the run '
                            'stops here: repair GetCACaps on the server, or set signature_algorithm and '
                            'encryption_algorithm (requests then go by GET)' % exc)

    def discover(self):
        self.caps = self._caps()
        content_type, data = self.transport.get_ca_cert(self.ca_identifier)
        certificates = parse_ca_certificates(content_type, data)
        pinned = list(self.pinned)
        if self.pinned_fingerprint is not None:
            name, value = self.pinned_fingerprint
            pinned += [cert for cert in certificates if fingerprint(cert, name) == value]
        self.ca_certificates = CaCertificates(certificates, pinned, self.ra_fingerprints)
        self.ca_certificates.check_ra_fingerprints()
        self.digest, self.cipher, self.use_post = choose_algorithms(
            self.caps or [], self.signature_algorithm, self.encryption_algorithm, self.allow_legacy)
        return self.ca_certificates

    def exchange(self, message_type, message_data, signer_key, signer_cert, transaction_id):
        """Send one pkiMessage and return the CertRep, checked against the pinned CA and its RA certificates."""
        nonce = os.urandom(16)
        message = pki_message(message_type, message_data, signer_key, signer_cert,
                              self.ca_certificates.encryption_certificates(), transaction_id, nonce,
                              self.digest, self.cipher)
        reply = self.transport.pki_operation(message, self.use_post)
        return check_cert_rep(reply, self.ca_certificates.signing_certificates(), transaction_id, nonce,
                              known=self.ca_certificates.all, refusal=self._refusal)

    def _refusal(self, signer):
        """The message for a CertRep signed by ``signer`` (None: a certificate nobody sent), which is no RA."""
        who = subject_text(signer) if signer is not None else 'a certificate the server did not send'
        return ('the SCEP reply is not signed by the pinned CA or an RA certificate it issued: its signer %s is not an '
                'RA for signing (%s); refused, because %s' % (who, self.ca_certificates.why_not_signer(signer), RA_RULE))

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
        pinned = self.ca_certificates.trusted
        issuers = [ca for ca in pinned if _issued_by(certificate, ca)]
        if not issuers:
            intermediates = [cert for cert in known if _is_ca(cert) and any(_issued_by(cert, ca) for ca in pinned)]
            issuers = [cert for cert in intermediates if _issued_by(certificate, cert)]
        if not issuers:
            raise ScepError('the certificate in the SCEP reply is not issued by the pinned CA')
        chain = [cert for cert in known if cert is not certificate and _is_ca(cert)]
        return certificate, chain
