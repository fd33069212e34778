# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""SCEP (RFC 8894) messages: pkiMessage building and CertRep checking with asn1crypto CMS.

Private to the collection. cryptography's PKCS#7 builders cannot add SCEP's signed
attributes nor encrypt with 3DES, so the CMS structures are assembled here and every
cryptographic operation goes through cryptography (and through the token for token keys).
"""

from __future__ import annotations

import datetime
import hashlib
import os

from ansible_collections.tokenfleet.pki.plugins.module_utils.bounded_http import server_text
from ansible_collections.tokenfleet.pki.plugins.module_utils.common import PkiError
from ansible_collections.tokenfleet.pki.plugins.module_utils.x509 import HAS_CRYPTOGRAPHY, public_key_der

try:
    from asn1crypto import cms, core, parser, x509 as asn1_x509
except ImportError:  # asn1crypto comes with python-pkcs11; its absence is reported for pkcs11
    HAS_ASN1CRYPTO = False
else:
    HAS_ASN1CRYPTO = True

if HAS_CRYPTOGRAPHY:
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes, padding as symmetric_padding, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    from cryptography.x509.oid import NameOID

    try:  # cryptography >= 43 keeps (3)DES here
        from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
    except ImportError:
        TripleDES = algorithms.TripleDES


class ScepError(PkiError):
    """A SCEP exchange that failed; the message names the cause like a printer's status page."""


MESSAGE_TYPES = {'CertRep': '3', 'RenewalReq': '17', 'PKCSReq': '19', 'CertPoll': '20'}
STATUS_SUCCESS, STATUS_FAILURE, STATUS_PENDING = '0', '2', '3'
FAIL_INFO = {
    '0': ('badAlg', 'unrecognised or unsupported algorithm'),
    '1': ('badMessageCheck', 'integrity check failed (signature or challenge password rejected)'),
    '2': ('badRequest', 'transaction not permitted or supported (for example a wrong or used challenge password)'),
    '3': ('badTime', 'the message time was not close enough to the CA\'s clock'),
    '4': ('badCertId', 'no certificate could be identified matching the criteria'),
}

_SCEP = '2.16.840.1.113733.1.9.'
OID_MESSAGE_TYPE = _SCEP + '2'
OID_PKI_STATUS = _SCEP + '3'
OID_FAIL_INFO = _SCEP + '4'
OID_SENDER_NONCE = _SCEP + '5'
OID_RECIPIENT_NONCE = _SCEP + '6'
OID_TRANSACTION_ID = _SCEP + '7'
OID_FAIL_INFO_TEXT = '1.3.6.1.5.5.7.24.1'

# name -> (asn1crypto algorithm id, key bytes, block bytes)
CIPHERS = {
    'aes128': ('aes128_cbc', 16, 16),
    'aes192': ('aes192_cbc', 24, 16),
    'aes256': ('aes256_cbc', 32, 16),
    '3des': ('tripledes_3key', 24, 8),
    'des': ('des', 8, 8),
}
_CIPHER_BY_ASN1 = dict((asn1_name, name) for name, (asn1_name, dummy, dummy2) in CIPHERS.items())
DIGESTS = {'sha1': 'SHA1', 'sha256': 'SHA256', 'sha512': 'SHA512', 'md5': 'MD5'}


def _hash(name):
    return getattr(hashes, DIGESTS[name])()


def _digest(name, data):
    return hashlib.new(name, data).digest()


if HAS_ASN1CRYPTO:
    class IssuerAndSubject(core.Sequence):
        """CertPoll's messageData (RFC 8894 section 3.3.3)."""

        _fields = [('issuer', asn1_x509.Name), ('subject', asn1_x509.Name)]


def _block_cipher(name, key):
    if name.startswith('aes'):
        return algorithms.AES(key)
    return TripleDES(key * 3 if len(key) == 8 else key)  # single DES is 3DES with K1 = K2 = K3


def encrypt_content(plaintext, cipher_name):
    """(EncryptedContentInfo, content-encryption key) for ``plaintext``."""
    asn1_name, key_length, block = CIPHERS[cipher_name]
    key, iv = os.urandom(key_length), os.urandom(block)
    padder = symmetric_padding.PKCS7(block * 8).padder()
    padded = padder.update(plaintext) + padder.finalize()
    encryptor = Cipher(_block_cipher(cipher_name, key), modes.CBC(iv)).encryptor()
    encrypted = encryptor.update(padded) + encryptor.finalize()
    info = cms.EncryptedContentInfo({
        'content_type': 'data',
        'content_encryption_algorithm': {'algorithm': asn1_name, 'parameters': core.OctetString(iv)},
        'encrypted_content': encrypted,
    })
    return info, key


def _issuer_and_serial(certificate):
    cert = asn1_x509.Certificate.load(certificate.public_bytes(serialization.Encoding.DER))
    return cms.IssuerAndSerialNumber({'issuer': cert.issuer, 'serial_number': cert.serial_number})


def envelope(plaintext, recipients, cipher_name):
    """DER ContentInfo(EnvelopedData) of ``plaintext`` for RSA ``recipients`` (PKCS#1 v1.5 key transport)."""
    content_info, key = encrypt_content(plaintext, cipher_name)
    recipient_infos = []
    for certificate in recipients:
        public_key = certificate.public_key()
        if not isinstance(public_key, rsa.RSAPublicKey):
            raise ScepError('the SCEP server\'s encryption certificate (%s) has no RSA key; SCEP encrypts requests with RSA'
                            % server_text(certificate.subject.rfc4514_string()))
        recipient_infos.append(cms.RecipientInfo(name='ktri', value={
            'version': 'v0',
            'rid': cms.RecipientIdentifier(name='issuer_and_serial_number', value=_issuer_and_serial(certificate)),
            'key_encryption_algorithm': {'algorithm': 'rsaes_pkcs1v15'},
            'encrypted_key': public_key.encrypt(key, padding.PKCS1v15()),
        }))
    enveloped = cms.EnvelopedData({'version': 'v0', 'recipient_infos': recipient_infos,
                                   'encrypted_content_info': content_info})
    return cms.ContentInfo({'content_type': 'enveloped_data', 'content': enveloped}).dump()


def _tlvs(data):
    """(method, contents) of each BER value in ``data``, one after another."""
    values = []
    while data:
        dummy, method, dummy2, header, contents, trailer = parser.parse(data)
        values.append((method, contents))
        data = data[len(header) + len(contents) + len(trailer):]
    return values


def _encrypted_content(encrypted_content_info):
    """The [0] encryptedContent octets, also in the constructed (BER) form Go's pkcs7 sends."""
    fields = _tlvs(encrypted_content_info.contents)
    if len(fields) < 3:
        return b''
    method, contents = fields[2]
    if method == 0:  # primitive
        return contents
    return b''.join(chunk for dummy, chunk in _tlvs(contents))


def open_envelope(data, private_key):
    """Plaintext of a DER ContentInfo(EnvelopedData) addressed to ``private_key`` (a file or token key)."""
    try:
        info = cms.ContentInfo.load(data)
        if info['content_type'].native != 'enveloped_data':
            raise ScepError('the SCEP reply does not hold an encrypted envelope')
        enveloped = info['content']
        encrypted_key = None
        for recipient in enveloped['recipient_infos']:
            if recipient.name == 'ktri':
                ktri = recipient.chosen
                scheme = ktri['key_encryption_algorithm']['algorithm'].native
                encrypted_key = ktri['encrypted_key'].native
                break
        if encrypted_key is None:
            raise ScepError('the SCEP reply is not encrypted to an RSA key (no key transport recipient)')
        encrypted = enveloped['encrypted_content_info']
        algorithm = encrypted['content_encryption_algorithm']
        cipher_name = _CIPHER_BY_ASN1.get(algorithm['algorithm'].native)
        iv = algorithm['parameters'].native
        ciphertext = _encrypted_content(encrypted)
    except (ValueError, TypeError, KeyError) as exc:
        raise ScepError('the SCEP reply\'s encrypted envelope cannot be parsed: %s' % server_text(exc))
    if cipher_name is None:
        raise ScepError('the SCEP reply is encrypted with %s, which is not supported' % algorithm['algorithm'].dotted)
    if scheme == 'rsaes_oaep':
        key_padding = padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)
    else:
        key_padding = padding.PKCS1v15()
    try:
        key = private_key.decrypt(encrypted_key, key_padding)
        decryptor = Cipher(_block_cipher(cipher_name, key), modes.CBC(iv)).decryptor()
        padded = decryptor.update(ciphertext) + decryptor.finalize()
        unpadder = symmetric_padding.PKCS7(CIPHERS[cipher_name][2] * 8).unpadder()
        return unpadder.update(padded) + unpadder.finalize()
    except ValueError:
        raise ScepError('the SCEP reply cannot be decrypted with the request\'s key (wrong recipient or damaged reply)')


def signer_certificate(private_key, subject, now=None):
    """The self-signed certificate that signs a first request (RFC 8894 section 2.3).

    Same key and subject as the request; valid from a day back, because some servers reject a
    signingTime outside the signer certificate's validity and clocks drift.
    """
    now = now or datetime.datetime.now(datetime.timezone.utc)
    if not list(subject):
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, 'SCEP client')])
    algorithm = None if not isinstance(private_key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)) else hashes.SHA256()
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(private_key.public_key())
            .serial_number(int.from_bytes(hashlib.sha256(public_key_der(private_key.public_key())).digest()[:16], 'big') >> 1)
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=7))
            .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=True, content_commitment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .sign(private_key, algorithm))


def throwaway_signer(subject):
    """(RSA key, self-signed certificate) for a request whose key cannot decrypt: an EC key only signs.

    SCEP encrypts the reply to the certificate that signed the request (RFC 8894 section 3.3.2), with RSA key
    transport only, and section 2.3 lets that certificate carry a key other than the request's. This pair lives in
    memory for one run: it is never written, and a later run that polls makes its own.
    """
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key, signer_certificate(key, subject)


def transaction_id_for(public_key):
    """A transaction id derived from the key, so a resent request and its polls share it."""
    return hashlib.sha256(public_key_der(public_key)).hexdigest().upper()


def _attribute(oid, value):
    return cms.CMSAttribute({'type': cms.CMSAttributeType(oid), 'values': [value]})


def pki_message(message_type, message_data, signer_key, signer_cert, recipients, transaction_id, sender_nonce,
                digest, cipher_name):
    """DER pkiMessage: SignedData over an EnvelopedData of ``message_data`` (RFC 8894 section 3)."""
    content = envelope(message_data, recipients, cipher_name)
    attributes = cms.CMSAttributes([
        _attribute('content_type', cms.ContentType('data')),
        _attribute('message_digest', core.OctetString(_digest(digest, content))),
        _attribute('signing_time', cms.Time(name='utc_time', value=core.UTCTime(
            datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)))),
        _attribute(OID_MESSAGE_TYPE, core.PrintableString(MESSAGE_TYPES[message_type])),
        _attribute(OID_TRANSACTION_ID, core.PrintableString(transaction_id)),
        _attribute(OID_SENDER_NONCE, core.OctetString(sender_nonce)),
    ])
    if isinstance(signer_key, rsa.RSAPrivateKey):
        signature = signer_key.sign(attributes.dump(), padding.PKCS1v15(), _hash(digest))
        signature_algorithm = {'algorithm': 'rsassa_pkcs1v15'}
    else:
        raise ScepError('SCEP requests are signed with an RSA key; this key is %s' % type(signer_key).__name__)
    certificate = asn1_x509.Certificate.load(signer_cert.public_bytes(serialization.Encoding.DER))
    signer_info = cms.SignerInfo({
        'version': 'v1',
        'sid': cms.SignerIdentifier(name='issuer_and_serial_number', value=_issuer_and_serial(signer_cert)),
        'digest_algorithm': {'algorithm': digest},
        'signed_attrs': attributes,
        'signature_algorithm': signature_algorithm,
        'signature': signature,
    })
    signed = cms.SignedData({
        'version': 'v1',
        'digest_algorithms': [{'algorithm': digest}],
        'encap_content_info': {'content_type': 'data', 'content': core.OctetString(content)},
        'certificates': [certificate],
        'signer_infos': [signer_info],
    })
    return cms.ContentInfo({'content_type': 'signed_data', 'content': signed}).dump()


def issuer_and_subject(issuer, subject):
    return IssuerAndSubject({'issuer': asn1_x509.Name.load(issuer.public_bytes()),
                             'subject': asn1_x509.Name.load(subject.public_bytes())}).dump()


class CertRep(object):
    """A checked CertRep: status, failInfo and the still-encrypted envelope."""

    def __init__(self, status, fail_info=None, fail_info_text=None, envelope_der=None, signer=None):
        self.status = status
        self.fail_info = fail_info
        self.fail_info_text = fail_info_text
        self.envelope_der = envelope_der
        self.signer = signer

    def failure_message(self):
        name, meaning = FAIL_INFO.get(self.fail_info, ('failInfo %s' % self.fail_info, 'unknown failure code'))
        text = server_text(self.fail_info_text)
        text = '; the server says: %s' % text if text else ''
        return 'the SCEP server rejected the request: FAILURE %s (%s: %s)%s' % (
            server_text(self.fail_info), server_text(name), meaning, text)


def _attribute_values(signer_info):
    values = {}
    for attribute in signer_info['signed_attrs']:
        values[attribute['type'].dotted] = attribute['values'][0]
    return values


def _as(value, spec):
    if isinstance(value, core.Any):
        return value.parse(spec).native
    return value.native


def _find_signer(sid, trusted):
    for certificate in trusted:
        cert = asn1_x509.Certificate.load(certificate.public_bytes(serialization.Encoding.DER))
        if sid.name == 'issuer_and_serial_number':
            if (cert.issuer == sid.chosen['issuer'] and cert.serial_number == sid.chosen['serial_number'].native):
                return certificate
        elif cert.key_identifier == sid.chosen.native:
            return certificate
    return None


def _verify(certificate, signature, data, digest_name, signature_algorithm):
    public_key = certificate.public_key()
    algorithm = _hash(digest_name)
    try:
        if isinstance(public_key, rsa.RSAPublicKey):
            if signature_algorithm == 'rsassa_pss':
                raise ScepError('the SCEP reply is signed with RSA-PSS, which is not supported')
            public_key.verify(signature, data, padding.PKCS1v15(), algorithm)
        elif isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(signature, data, ec.ECDSA(algorithm))
        else:
            raise ScepError('the SCEP reply is signed with an unsupported key type')
    except InvalidSignature:
        raise ScepError('the SCEP reply\'s signature does not verify with the pinned CA or its RA certificate')


def _embedded_certificates(signed):
    try:
        return [x509.load_der_x509_certificate(choice.chosen.dump()) for choice in signed['certificates'] or []
                if choice.name == 'certificate']
    except (ValueError, TypeError, KeyError):
        return []


def check_cert_rep(data, trusted, transaction_id, sender_nonce, known=(), refusal=None):
    """Parse and check a CertRep against our request and ``trusted``, the certificates that may sign it.

    A reply signed by any other certificate is refused with ``refusal(signer)``, the signer looked up
    among ``known`` and the reply's own certificates (None when it is in neither).
    """
    try:
        info = cms.ContentInfo.load(data)
        if info['content_type'].native != 'signed_data':
            raise ScepError('the SCEP reply is not a signed message (content type %s)' % server_text(info['content_type'].native))
        signed = info['content']
        signer_infos = list(signed['signer_infos'])
        if len(signer_infos) != 1:
            raise ScepError('the SCEP reply has %d signers; exactly one is expected' % len(signer_infos))
        signer_info = signer_infos[0]
        content = signed['encap_content_info']['content']
        content = content.native if content.native is not None else b''
        digest_name = signer_info['digest_algorithm']['algorithm'].native
        signature_algorithm = signer_info['signature_algorithm']['algorithm'].native
        attrs = _attribute_values(signer_info)
        signed_attrs = b'\x31' + signer_info['signed_attrs'].dump()[1:]
        signature = signer_info['signature'].native
        sid = signer_info['sid']
        message_type = _as(attrs.get(OID_MESSAGE_TYPE), core.PrintableString) if OID_MESSAGE_TYPE in attrs else None
        status = _as(attrs[OID_PKI_STATUS], core.PrintableString) if OID_PKI_STATUS in attrs else None
        reply_transaction = _as(attrs[OID_TRANSACTION_ID], core.PrintableString) if OID_TRANSACTION_ID in attrs else None
        recipient_nonce = _as(attrs[OID_RECIPIENT_NONCE], core.OctetString) if OID_RECIPIENT_NONCE in attrs else None
        message_digest = _as(attrs['1.2.840.113549.1.9.4'], core.OctetString) if '1.2.840.113549.1.9.4' in attrs else None
        fail_info = _as(attrs[OID_FAIL_INFO], core.PrintableString) if OID_FAIL_INFO in attrs else None
        fail_text = _as(attrs[OID_FAIL_INFO_TEXT], core.UTF8String) if OID_FAIL_INFO_TEXT in attrs else None
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ScepError('the SCEP reply is not a valid SCEP message (%s)' % server_text(exc))
    if digest_name not in DIGESTS:
        raise ScepError('the SCEP reply is signed with digest %s, which is not supported' % server_text(digest_name))
    signer = _find_signer(sid, trusted)
    if signer is None:
        other = _find_signer(sid, list(known) + _embedded_certificates(signed))
        if refusal is not None:
            raise ScepError(refusal(other))
        raise ScepError('the SCEP reply is not signed by the pinned CA or an RA certificate it issued')
    _verify(signer, signature, signed_attrs, digest_name, signature_algorithm)
    if message_digest != _digest(digest_name, content):
        raise ScepError('the SCEP reply\'s message digest does not match its content (damaged or altered reply)')
    if message_type != MESSAGE_TYPES['CertRep']:
        raise ScepError('the SCEP reply has message type %s, not CertRep (3)' % (server_text(message_type) or 'none'))
    if reply_transaction != transaction_id:
        raise ScepError('the SCEP reply is for transaction %s, not for this request (%s)'
                        % (server_text(reply_transaction), transaction_id))
    if recipient_nonce != sender_nonce:
        raise ScepError('the SCEP reply\'s recipient nonce does not match this request\'s nonce (replayed or misrouted reply)')
    if status == STATUS_SUCCESS:
        if not content:
            raise ScepError('the SCEP reply says SUCCESS but holds no certificate')
        return CertRep(status, envelope_der=content, signer=signer)
    if status == STATUS_FAILURE:
        return CertRep(status, fail_info=fail_info, fail_info_text=fail_text, signer=signer)
    if status == STATUS_PENDING:
        return CertRep(status, signer=signer)
    raise ScepError('the SCEP reply has an unknown pkiStatus %s' % server_text(repr(status)))


def certificates_from_pkcs7(data):
    """Certificates in a degenerate (certs-only) PKCS#7 SignedData, DER."""
    try:
        info = cms.ContentInfo.load(data)
        if info['content_type'].native != 'signed_data':
            raise ValueError('not a SignedData')
        return [x509.load_der_x509_certificate(choice.chosen.dump()) for choice in info['content']['certificates']
                if choice.name == 'certificate']
    except (ValueError, TypeError, KeyError) as exc:
        raise ScepError('the SCEP server sent certificates that cannot be parsed: %s' % server_text(exc))
