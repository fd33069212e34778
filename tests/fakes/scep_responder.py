# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A small SCEP responder (RFC 8894 server side) for tests: what micromdm's scepserver 2.1.0 cannot do.

In-process use (tests)::

    server = FakeScepServer(caps=['AES', 'SHA-256', 'POSTPKIOperation'], challenge='s3cret')
    server.start()
    ... server.url ...                     # http://127.0.0.1:<port>/scep
    server.pending = True                  # PKCSReq -> PENDING, remembered by transaction id
    server.approve()                       # the next CertPoll (or re-sent PKCSReq) gets SUCCESS
    server.pki_operation_count()           # PKIOperation requests seen so far
    server.stop()

Manual use: ``python tests/fakes/scep_responder.py --help`` (runtime control through ``<path>/_control``).
Set ``FAKE_SCEP_VERBOSE=1`` to log every HTTP request to stderr.

Written from RFC 8894 independently of the collection's client code (nothing is imported from
``plugins/``): it is a test double of a server, checked against certmonger's ``scep-submit``.
Only the standard library HTTP server, asn1crypto (CMS) and cryptography are used. It listens
on 127.0.0.1 only, and every wait is bounded: ``stop()`` closes the socket and wakes handlers
that were told to hang.
"""

from __future__ import annotations

import argparse
import base64
import collections
import dataclasses
import datetime
import http.server
import json
import os
import secrets
import signal
import sys
import threading
import time
import typing as t
import urllib.parse

from asn1crypto import cms, core, parser
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.x509.oid import AttributeOID, ExtensionOID, NameOID

try:
    from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
except ImportError:  # cryptography < 43
    TripleDES = algorithms.TripleDES  # type: ignore[attr-defined,misc]

# --- SCEP constants (RFC 8894 §3.2) ------------------------------------------------------------

OID_DATA = '1.2.840.113549.1.7.1'
OID_SIGNED_DATA = '1.2.840.113549.1.7.2'
OID_ENVELOPED_DATA = '1.2.840.113549.1.7.3'
OID_CONTENT_TYPE = '1.2.840.113549.1.9.3'
OID_MESSAGE_DIGEST = '1.2.840.113549.1.9.4'
OID_SIGNING_TIME = '1.2.840.113549.1.9.5'
OID_MESSAGE_TYPE = '2.16.840.1.113733.1.9.2'
OID_PKI_STATUS = '2.16.840.1.113733.1.9.3'
OID_FAIL_INFO = '2.16.840.1.113733.1.9.4'
OID_SENDER_NONCE = '2.16.840.1.113733.1.9.5'
OID_RECIPIENT_NONCE = '2.16.840.1.113733.1.9.6'
OID_TRANSACTION_ID = '2.16.840.1.113733.1.9.7'
OID_FAIL_INFO_TEXT = '1.3.6.1.5.5.7.24.1'

MESSAGE_TYPES = {3: 'CertRep', 17: 'RenewalReq', 19: 'PKCSReq', 20: 'CertPoll', 21: 'GetCert', 22: 'GetCRL'}
CERT_REP, RENEWAL_REQ, PKCS_REQ, CERT_POLL, GET_CERT, GET_CRL = 3, 17, 19, 20, 21, 22

SUCCESS, FAILURE, PENDING = 0, 2, 3
PKI_STATUS_NAMES = {SUCCESS: 'SUCCESS', FAILURE: 'FAILURE', PENDING: 'PENDING'}
FAIL_INFO_NAMES = {0: 'badAlg', 1: 'badMessageCheck', 2: 'badRequest', 3: 'badTime', 4: 'badCertId'}
BAD_ALG, BAD_MESSAGE_CHECK, BAD_REQUEST, BAD_TIME, BAD_CERT_ID = 0, 1, 2, 3, 4

DEFAULT_CAPS = ('AES', 'DES3', 'SHA-1', 'SHA-256', 'SHA-512', 'POSTPKIOperation', 'Renewal', 'SCEPStandard')
CAPS_PRESETS = {
    'default': list(DEFAULT_CAPS),
    'aes-only': ['AES', 'SHA-256', 'POSTPKIOperation'],
    '3des-only': ['DES3', 'SHA-1'],
    'none': [],
}

# content ciphers: name -> (OID, key length, IV length)
CIPHERS = {
    'aes128': ('2.16.840.1.101.3.4.1.2', 16, 16),
    'aes192': ('2.16.840.1.101.3.4.1.22', 24, 16),
    'aes256': ('2.16.840.1.101.3.4.1.42', 32, 16),
    '3des': ('1.2.840.113549.3.7', 24, 8),
    'des': ('1.3.14.3.2.7', 8, 8),
}
CIPHER_BY_OID = {oid: name for name, (oid, _k, _i) in CIPHERS.items()}
DIGESTS = {'sha1': hashes.SHA1, 'sha224': hashes.SHA224, 'sha256': hashes.SHA256, 'sha384': hashes.SHA384, 'sha512': hashes.SHA512}
DIGEST_OIDS = {
    '1.3.14.3.2.26': 'sha1', '2.16.840.1.101.3.4.2.4': 'sha224', '2.16.840.1.101.3.4.2.1': 'sha256',
    '2.16.840.1.101.3.4.2.2': 'sha384', '2.16.840.1.101.3.4.2.3': 'sha512',
}
DIGEST_OID_BY_NAME = {name: oid for oid, name in DIGEST_OIDS.items()}
OID_RSA_ENCRYPTION = '1.2.840.113549.1.1.1'
OID_RSAES_OAEP = '1.2.840.113549.1.1.7'

MAX_BODY = 2 << 20
HANDLER_SOCKET_TIMEOUT = 30.0
DEFAULT_HANG_SECONDS = 120.0

CONTENT_TYPE_CA_CERT = 'application/x-x509-ca-cert'
CONTENT_TYPE_CA_RA_CERT = 'application/x-x509-ca-ra-cert'
CONTENT_TYPE_PKI_MESSAGE = 'application/x-pki-message'


# --- small ASN.1 helpers ----------------------------------------------------------------------

class _AnySet(core.SetOf):
    _child_spec = core.Any


class _Attribute(core.Sequence):
    _fields = [('type', core.ObjectIdentifier), ('values', _AnySet)]


class _Attributes(core.SetOf):
    _child_spec = _Attribute


class IssuerAndSubject(core.Sequence):
    """messageData of CertPoll / GetCertInitial (RFC 8894 §3.3.3)."""
    _fields = [('issuer', asn1_x509.Name), ('subject', asn1_x509.Name)]


class ScepError(Exception):
    """A request the responder answers with a CertRep FAILURE (fail_info) when it can."""

    def __init__(self, fail_info: int, text: str) -> None:
        super().__init__(text)
        self.fail_info = fail_info
        self.text = text


class BadHttpRequest(Exception):
    """A request that cannot be answered with a CertRep at all (HTTP 400)."""


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _asn1_cert(cert: x509.Certificate) -> asn1_x509.Certificate:
    return asn1_x509.Certificate.load(cert.public_bytes(serialization.Encoding.DER))


def _issuer_and_serial(cert: x509.Certificate) -> cms.IssuerAndSerialNumber:
    asn1 = _asn1_cert(cert)
    return cms.IssuerAndSerialNumber({'issuer': asn1.issuer, 'serial_number': asn1.serial_number})


def _attribute_values(signed_attrs: cms.CMSAttributes) -> dict[str, t.Any]:
    """{dotted OID: first value as a universal ASN.1 object} of a SET OF Attribute."""
    values: dict[str, t.Any] = {}
    for attribute in signed_attrs:
        items = attribute['values']
        if len(items) != 1:
            raise ScepError(BAD_MESSAGE_CHECK, 'attribute %s has %d values' % (attribute['type'].dotted, len(items)))
        values[attribute['type'].dotted] = core.load(items[0].dump())
    return values


def _string_attribute(values: dict[str, t.Any], oid: str, name: str, required: bool = True) -> str | None:
    value = values.get(oid)
    if value is None:
        if required:
            raise ScepError(BAD_REQUEST, 'request has no %s attribute' % name)
        return None
    if not isinstance(value, (core.PrintableString, core.UTF8String, core.IA5String)):
        raise ScepError(BAD_REQUEST, '%s is a %s, not a PrintableString' % (name, value.__class__.__name__))
    return value.native


def _cbc(name: str, key: bytes, iv: bytes) -> Cipher:
    if name.startswith('aes'):
        return Cipher(algorithms.AES(key), modes.CBC(iv))
    if name == 'des':
        key = key * 3  # single DES == 3DES with K1 = K2 = K3
    return Cipher(TripleDES(key), modes.CBC(iv))


def cbc_encrypt(name: str, key: bytes, iv: bytes, data: bytes) -> bytes:
    block = len(iv)
    pad = block - len(data) % block
    encryptor = _cbc(name, key, iv).encryptor()
    return encryptor.update(data + bytes([pad]) * pad) + encryptor.finalize()


def cbc_decrypt(name: str, key: bytes, iv: bytes, data: bytes) -> bytes:
    block = len(iv)
    if not data or len(data) % block:
        raise ScepError(BAD_MESSAGE_CHECK, 'encrypted content length %d is not a multiple of %d' % (len(data), block))
    decryptor = _cbc(name, key, iv).decryptor()
    plain = decryptor.update(data) + decryptor.finalize()
    pad = plain[-1]
    if not 1 <= pad <= block or plain[-pad:] != bytes([pad]) * pad:
        raise ScepError(BAD_MESSAGE_CHECK, 'bad padding after decryption (wrong key or cipher)')
    return plain[:-pad]


def _ber_octets(data: bytes) -> bytes:
    """Concatenated contents of the OCTET STRING segments in data (BER constructed form, possibly nested)."""
    chunks = []
    pointer = 0
    while pointer < len(data):
        _class, method, _tag, header, contents, trailer = parser.parse(data[pointer:], strict=False)
        chunks.append(_ber_octets(contents) if method == 1 else contents)
        pointer += len(header) + len(contents) + len(trailer)
    return b''.join(chunks)


def _encrypted_content(encrypted: cms.EncryptedContentInfo) -> bytes:
    """encryptedContent [0] IMPLICIT OCTET STRING, primitive or (BER) constructed.

    Go's pkcs7 (micromdm scepclient) sends the constructed form, [0] { OCTET STRING }, which asn1crypto
    refuses for an implicitly tagged field, so the field is read from the raw encoding.
    """
    pointer = 0
    data = encrypted.contents
    while pointer < len(data):
        class_, method, tag, header, contents, trailer = parser.parse(data[pointer:], strict=False)
        if class_ == 2 and tag == 0:
            return _ber_octets(contents) if method == 1 else contents
        pointer += len(header) + len(contents) + len(trailer)
    return b''


def _hash_for_signature(signer_info: cms.SignerInfo) -> tuple[str, hashes.HashAlgorithm]:
    oid = signer_info['digest_algorithm']['algorithm'].dotted
    name = DIGEST_OIDS.get(oid)
    if name is None:
        raise ScepError(BAD_ALG, 'unsupported digest algorithm %s' % oid)
    return name, DIGESTS[name]()


def _verify_signature(public_key: t.Any, signer_info: cms.SignerInfo, data: bytes, digest: hashes.HashAlgorithm) -> None:
    algorithm = signer_info['signature_algorithm']
    signature = signer_info['signature'].native
    kind = algorithm.signature_algo
    try:
        if isinstance(public_key, rsa.RSAPublicKey) and kind == 'rsassa_pkcs1v15':
            public_key.verify(signature, data, padding.PKCS1v15(), digest)
        elif isinstance(public_key, rsa.RSAPublicKey) and kind == 'rsassa_pss':
            params = algorithm['parameters']
            pss_hash = DIGESTS[DIGEST_OIDS[params['hash_algorithm']['algorithm'].dotted]]()
            public_key.verify(signature, data, padding.PSS(padding.MGF1(pss_hash), params['salt_length'].native), pss_hash)
        elif isinstance(public_key, ec.EllipticCurvePublicKey) and kind == 'ecdsa':
            public_key.verify(signature, data, ec.ECDSA(digest))
        else:
            raise ScepError(BAD_ALG, 'unsupported signature algorithm %s for a %s key' % (algorithm['algorithm'].dotted, type(public_key).__name__))
    except InvalidSignature as exc:
        raise ScepError(BAD_MESSAGE_CHECK, 'signature over the signed attributes does not verify') from exc


def make_ca(subject_cn: str = 'tokenfleet fake SCEP CA', key_size: int = 2048,
            days: int = 3650) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    """A self-signed RSA CA (KU keyCertSign, cRLSign, digitalSignature: it also signs CertReps)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=key_size)
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, 'tokenfleet tests'), x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)])
    now = _utcnow()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _issue_ra(ca_key: rsa.RSAPrivateKey, ca_cert: x509.Certificate, cn: str, key_size: int,
              signing: bool, eku: t.Sequence[str] | None = None) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    usage = dict(digital_signature=signing, key_encipherment=not signing)
    return issue_certificate(ca_key, ca_cert, cn, key_size=key_size, eku=eku, **usage)


def issue_certificate(ca_key: rsa.RSAPrivateKey, ca_cert: x509.Certificate, cn: str, key_size: int = 2048,
                      eku: t.Sequence[str] | None = None, digital_signature: bool = True, key_encipherment: bool = True,
                      days: float = 730, not_before_days: float = -1 / 24) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    """An end-entity RSA key and certificate issued by the CA: an RA certificate, or a device's (``eku`` dotted OIDs).

    ``eku`` None leaves the extension out (like NDES-less RA setups, OpenXPKI's sample RA); a device
    certificate has e.g. ``['1.3.6.1.5.5.7.3.2']`` (clientAuth).
    """
    key = rsa.generate_private_key(public_exponent=65537, key_size=key_size)
    now = _utcnow()
    usage = x509.KeyUsage(digital_signature, False, key_encipherment, False, False, False, False, False, False)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, 'tokenfleet tests'), x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca_cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + datetime.timedelta(days=not_before_days)).not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()), critical=False)
    )
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([x509.ObjectIdentifier(oid) for oid in eku]), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def degenerate_signed_data(certs: t.Sequence[x509.Certificate]) -> bytes:
    """DER of a certs-only SignedData (no signers, no content) ContentInfo (RFC 8894 §3.4)."""
    signed_data = cms.SignedData({
        'version': 'v1',
        'digest_algorithms': [],
        'encap_content_info': {'content_type': 'data'},
        'certificates': [cms.CertificateChoices(name='certificate', value=_asn1_cert(cert)) for cert in certs],
        'signer_infos': [],
    })
    return cms.ContentInfo({'content_type': 'signed_data', 'content': signed_data}).dump()


# --- records ----------------------------------------------------------------------------------

RequestLogEntry = collections.namedtuple('RequestLogEntry', ['operation', 'message_type', 'transaction_id', 'method'])
RequestLogEntry.__doc__ = 'One HTTP request: operation, SCEP messageType (int) or None, transactionID or None, HTTP method.'


@dataclasses.dataclass
class PkiMessageInfo:
    """What the responder read from one PKIOperation request (for assertions in tests)."""
    method: str
    der: bytes | None = None
    message_type: int | None = None
    transaction_id: str | None = None
    sender_nonce: bytes | None = None
    digest: str | None = None
    signature_algorithm: str | None = None
    content_cipher: str | None = None
    key_transport: str | None = None
    recipient: str | None = None
    recipients: list[tuple[str, int]] = dataclasses.field(default_factory=list)
    signer_certificate: x509.Certificate | None = None
    csr: x509.CertificateSigningRequest | None = None
    challenge_password: str | None = None
    pki_status: int | None = None
    fail_info: int | None = None
    error: str | None = None


@dataclasses.dataclass
class PendingTransaction:
    transaction_id: str
    csr: x509.CertificateSigningRequest
    signer_certificate: x509.Certificate
    approved: bool = False
    rejected: int | None = None


# --- the server -------------------------------------------------------------------------------

class FakeScepServer:
    """An RFC 8894 SCEP responder on 127.0.0.1 with behaviours switchable at runtime.

    Constructor arguments are also attributes that may be changed while it runs:

    - ``caps``: GetCACaps keywords (list of str; empty list = empty body).
    - ``ra_mode``: GetCACert returns a degenerate PKCS#7 with the CA and two RA certificates;
      requests must be encrypted to the encryption RA, CertReps are signed by the signing RA.
      (Fixed at construction because it creates the RA keys.) ``ra_eku``: dotted extended key usage
      OIDs for both RA certificates (default: none, the extension is left out).
    - ``challenge``: required challengePassword of PKCSReq (wrong or missing -> FAILURE badRequest).
    - ``validity_days``: lifetime of issued certificates.
    - ``digest``: digest of the CertRep signature, ``sha256`` (default), ``sha1``, ``sha512``.
    - ``reply_cipher``: content cipher of the SUCCESS envelope, ``aes128`` (default), ``aes192``,
      ``aes256``, ``3des``, ``des``.
    - ``empty_content``: FAILURE/PENDING replies carry an empty eContent OCTET STRING (True,
      default, like micromdm and what certmonger can read) or none at all (False, RFC 8894 §3.3.2.2).
    - ``pending``: PKCSReq/RenewalReq are answered PENDING until ``approve()``.
    - ``fail_info`` (0..4) and ``fail_info_text``: answer every PKIOperation with FAILURE.
    - ``sign_with_unpinned_key``: sign CertReps with a self-signed key/cert (same subject as the
      CA, not issued by it).
    - ``wrong_recipient_nonce``, ``wrong_transaction_id``: corrupt those reply attributes.
    - ``http_status``: answer the operations in ``fault_operations`` with that status and a text body
      (``http_body``, default a line naming the status).
    - ``garbage_body``: answer with random bytes (HTTP 200, the normal content type).
    - ``truncated_body``: answer with the first half of the real reply; ``True`` or ``'short'``
      sends a consistent Content-Length, ``'close'`` announces the full length and closes early.
    - ``hang``: accept the request and never answer, until ``hang_seconds`` pass or ``stop()``.
    - ``drip_interval``: send the whole answer one byte every that many seconds (bounded by
      ``hang_seconds`` and ``stop()``): a per-read socket timeout never fires. ``drips`` records
      (start, end) monotonic times of each dripped answer (end: the client hung up, or the bound).
    - ``huge_body``: ``'announce'`` a Content-Length of ``huge_size`` bytes (default 6 MiB), or
      ``'stream'`` that many bytes without a length.
    - ``fault_operations``: operations the faults above apply to (default ``{'PKIOperation'}``).
    - ``extra_ca_certs``: certificates appended to the GetCACert answer (sent as a PKCS#7), e.g. a
      device certificate the CA issued, posing as an RA (see ``issue_certificate()``).
    - ``reply_signer``: (key, certificate) that signs every CertRep instead of the CA or RA.
    - ``extra_decryption_keys``: (key, certificate) pairs the server also decrypts requests with
      (a rogue server holding a device's key reads a request encrypted to that device).

    Records: ``request_log`` (RequestLogEntry per request), ``pki_messages`` (PkiMessageInfo per
    PKIOperation, ``recipients`` = (issuer, serial) of every recipient of its envelope), ``issued`` (x509.Certificate list), ``pending_transactions``.
    """

    def __init__(
        self,
        path: str = '/scep',
        caps: t.Iterable[str] | None = None,
        ra_mode: bool = False,
        ra_eku: t.Sequence[str] | None = None,
        challenge: str | None = None,
        validity_days: float = 365,
        digest: str = 'sha256',
        reply_cipher: str = 'aes128',
        key_size: int = 2048,
        ca: tuple[rsa.RSAPrivateKey, x509.Certificate] | None = None,
        control: bool = False,
        hang_seconds: float = DEFAULT_HANG_SECONDS,
    ) -> None:
        if not path.startswith('/'):
            raise ValueError('path must start with /')
        if isinstance(caps, str):
            raise TypeError('caps is a list of keywords, not a string')
        self.path = path
        self.caps = list(DEFAULT_CAPS if caps is None else caps)
        self.ra_mode = ra_mode
        self.challenge = challenge
        self.validity_days = validity_days
        self.digest = digest
        self.reply_cipher = reply_cipher
        self.key_size = key_size
        self.control = control
        self.hang_seconds = hang_seconds
        self.empty_content = True
        self.pending = False
        self.fail_info: int | None = None
        self.fail_info_text: str | None = None
        self.sign_with_unpinned_key = False
        self.wrong_recipient_nonce = False
        self.wrong_transaction_id = False
        self.http_status: int | None = None
        self.garbage_body = False
        self.truncated_body: bool | str = False
        self.hang = False
        self.extra_ca_certs: list[x509.Certificate] = []
        self.reply_signer: tuple[t.Any, x509.Certificate] | None = None
        self.extra_decryption_keys: list[tuple[rsa.RSAPrivateKey, x509.Certificate]] = []
        self.drip_interval: float | None = None
        self.huge_body: str | None = None
        self.huge_size = 6 * 1024 * 1024
        self.http_body: str | None = None
        self.drips: list[tuple[float, float]] = []
        self.fault_operations: set[str] = {'PKIOperation'}

        self.ca_key, self.ca_cert = ca if ca is not None else make_ca(key_size=key_size)
        self.ra_sign_key = self.ra_sign_cert = self.ra_enc_key = self.ra_enc_cert = None
        if ra_mode:
            self.ra_sign_key, self.ra_sign_cert = _issue_ra(self.ca_key, self.ca_cert, 'tokenfleet fake SCEP RA signing', key_size, True, ra_eku)
            self.ra_enc_key, self.ra_enc_cert = _issue_ra(self.ca_key, self.ca_cert, 'tokenfleet fake SCEP RA encryption', key_size, False, ra_eku)
        self._unpinned: tuple[rsa.RSAPrivateKey, x509.Certificate] | None = None

        self.request_log: list[RequestLogEntry] = []
        self.pki_messages: list[PkiMessageInfo] = []
        self.issued: list[x509.Certificate] = []
        self.ca_identifiers: list[str | None] = []
        self.pending_transactions: dict[str, PendingTransaction] = {}
        self._approved: set[str] = set()
        self._completed: dict[str, x509.Certificate] = {}
        self._lock = threading.RLock()
        self._stop_event = threading.Event()
        self._httpd: _HttpServer | None = None
        self._thread: threading.Thread | None = None

    # -- life cycle --

    def start(self) -> FakeScepServer:
        if self._httpd is not None:
            raise RuntimeError('already started')
        self._stop_event.clear()
        handler = type('BoundScepHandler', (_ScepHandler,), {'scep_server': self})
        self._httpd = _HttpServer(('127.0.0.1', 0), handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={'poll_interval': 0.05},
                                        name='fake-scep-%d' % self.port, daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving, close the listening socket, wake hanging handlers (bounded by timeout)."""
        self._stop_event.set()
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        deadline = time.monotonic() + timeout
        httpd.shutdown()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(max(0.0, deadline - time.monotonic()))
            self._thread = None
        httpd.join_handlers(deadline)

    def __enter__(self) -> FakeScepServer:
        return self.start()

    def __exit__(self, *exc_info: t.Any) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._httpd is not None

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError('not started')
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return 'http://127.0.0.1:%d%s' % (self.port, self.path)

    # -- certificates --

    @property
    def ca_pem(self) -> str:
        return self.ca_cert.public_bytes(serialization.Encoding.PEM).decode('ascii')

    @property
    def ca_fingerprint(self) -> str:
        """SHA-256 fingerprint of the CA certificate, lower-case hex without separators."""
        return self.ca_cert.fingerprint(hashes.SHA256()).hex()

    @property
    def unpinned(self) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
        """The self-signed key/cert used with sign_with_unpinned_key (same subject as the CA)."""
        if self._unpinned is None:
            key = rsa.generate_private_key(public_exponent=65537, key_size=self.key_size)
            now = _utcnow()
            cert = (
                x509.CertificateBuilder()
                .subject_name(self.ca_cert.subject).issuer_name(self.ca_cert.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=365))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
                .sign(key, hashes.SHA256())
            )
            self._unpinned = (key, cert)
        return self._unpinned

    def ca_certificates(self) -> list[x509.Certificate]:
        """What GetCACert returns: the CA, ``extra_ca_certs``, and (RA mode) the signing and the encryption RA."""
        if self.ra_mode:
            return [self.ca_cert] + list(self.extra_ca_certs) + [self.ra_sign_cert, self.ra_enc_cert]
        return [self.ca_cert] + list(self.extra_ca_certs)

    def get_ca_cert_response(self) -> tuple[str, bytes]:
        if self.ra_mode or self.extra_ca_certs:
            return CONTENT_TYPE_CA_RA_CERT, degenerate_signed_data(self.ca_certificates())
        return CONTENT_TYPE_CA_CERT, self.ca_cert.public_bytes(serialization.Encoding.DER)

    # -- control --

    def approve(self, transaction_id: str | None = None) -> list[str]:
        """Approve one pending transaction (also one not seen yet), or all pending ones (None)."""
        with self._lock:
            if transaction_id is None:
                ids = [tid for tid, item in self.pending_transactions.items() if item.rejected is None]
            else:
                ids = [transaction_id]
            for tid in ids:
                self._approved.add(tid)
                if tid in self.pending_transactions:
                    self.pending_transactions[tid].approved = True
            return ids

    def reject(self, transaction_id: str | None = None, fail_info: int = BAD_REQUEST) -> list[str]:
        """Make the next CertPoll of a pending transaction (or of all, None) answer FAILURE."""
        with self._lock:
            ids = list(self.pending_transactions) if transaction_id is None else [transaction_id]
            for tid in ids:
                if tid in self.pending_transactions:
                    self.pending_transactions[tid].rejected = fail_info
            return [tid for tid in ids if tid in self.pending_transactions]

    def pki_operation_count(self, message_type: int | None = None) -> int:
        with self._lock:
            return sum(1 for entry in self.request_log
                       if entry.operation == 'PKIOperation' and (message_type is None or entry.message_type == message_type))

    def reset_records(self) -> None:
        with self._lock:
            del self.request_log[:]
            del self.pki_messages[:]
            del self.ca_identifiers[:]

    def state(self) -> dict[str, t.Any]:
        """JSON-able view of the settings and records (the CLI control endpoint returns it)."""
        with self._lock:
            return {
                'url': self.url if self.running else None,
                'ca_fingerprint_sha256': self.ca_fingerprint,
                'settings': {name: (sorted(value) if isinstance(value, set) else value) for name, value in self._settings().items()},
                'request_log': [list(entry) for entry in self.request_log],
                'pki_messages': [{name: getattr(info, name) for name in self.PKI_MESSAGE_FIELDS} for info in self.pki_messages],
                'issued': [{'serial': '%x' % cert.serial_number, 'subject': cert.subject.rfc4514_string()} for cert in self.issued],
                'pending': {tid: {'approved': item.approved, 'rejected': item.rejected} for tid, item in self.pending_transactions.items()},
            }

    PKI_MESSAGE_FIELDS = ('method', 'message_type', 'transaction_id', 'digest', 'content_cipher', 'key_transport', 'recipient',
                          'pki_status', 'fail_info', 'error')
    SETTINGS = ('caps', 'challenge', 'validity_days', 'digest', 'reply_cipher', 'empty_content', 'pending', 'fail_info',
                'fail_info_text', 'sign_with_unpinned_key', 'wrong_recipient_nonce', 'wrong_transaction_id', 'http_status',
                'garbage_body', 'truncated_body', 'hang', 'hang_seconds', 'fault_operations', 'extra_ca_certs', 'reply_signer',
                'drip_interval', 'huge_body', 'huge_size', 'http_body', 'extra_decryption_keys')

    def _settings(self) -> dict[str, t.Any]:
        return {name: getattr(self, name) for name in self.SETTINGS}

    def configure(self, **settings: t.Any) -> None:
        """Set several behaviours at once; unknown names are an error."""
        for name, value in settings.items():
            if name not in self.SETTINGS:
                raise ValueError('unknown setting %r (known: %s)' % (name, ', '.join(self.SETTINGS)))
            if name == 'fault_operations':
                value = set(value)
            if name == 'caps':
                if isinstance(value, str):
                    raise ValueError('caps is a list of keywords, not a string')
                value = list(value)
            if name == 'digest' and value not in DIGESTS:
                raise ValueError('digest must be one of %s' % ', '.join(DIGESTS))
            if name == 'reply_cipher' and value not in CIPHERS:
                raise ValueError('reply_cipher must be one of %s' % ', '.join(CIPHERS))
            setattr(self, name, value)

    def wait_hang(self) -> None:
        self._stop_event.wait(self.hang_seconds)

    # -- PKIOperation --

    def _log(self, entry: RequestLogEntry) -> None:
        with self._lock:
            self.request_log.append(entry)

    def handle_pki_operation(self, der: bytes, method: str) -> tuple[bytes | None, PkiMessageInfo]:
        """Process one pkiMessage; returns (CertRep DER or None for HTTP 400, info)."""
        info = PkiMessageInfo(method=method, der=der)
        try:
            request = self._parse_request(der, info)
        except BadHttpRequest as exc:
            info.error = str(exc)
            return None, info
        except ScepError as exc:
            info.error = exc.text
            # nothing trustworthy to answer to: no signer certificate / nonce / transaction id
            if info.transaction_id is None or info.sender_nonce is None:
                return None, info
            return self._cert_rep(info, FAILURE, exc.fail_info, exc.text), info
        try:
            status, certificate = self._decide(request, info)
        except ScepError as exc:
            info.error = exc.text
            return self._cert_rep(info, FAILURE, exc.fail_info, exc.text), info
        if status == SUCCESS:
            return self._cert_rep(info, SUCCESS, certificate=certificate, recipient=request['signer']), info
        return self._cert_rep(info, status), info

    def _decryption_keys(self) -> list[tuple[x509.Certificate, rsa.RSAPrivateKey]]:
        extra = [(cert, key) for key, cert in self.extra_decryption_keys]
        if self.ra_mode:
            return [(self.ra_enc_cert, self.ra_enc_key)] + extra
        return [(self.ca_cert, self.ca_key)] + extra

    def _parse_request(self, der: bytes, info: PkiMessageInfo) -> dict[str, t.Any]:
        try:
            content_info = cms.ContentInfo.load(der, strict=True)
            if content_info['content_type'].dotted != OID_SIGNED_DATA:
                raise BadHttpRequest('pkiMessage is a %s, not signedData' % content_info['content_type'].native)
            signed_data = content_info['content']
            signer_infos = signed_data['signer_infos']
            if len(signer_infos) != 1:
                raise BadHttpRequest('pkiMessage has %d signers, expected 1' % len(signer_infos))
            signer_info = signer_infos[0]
            attrs = _attribute_values(signer_info['signed_attrs'])
        except (ValueError, TypeError, KeyError) as exc:
            raise BadHttpRequest('cannot parse pkiMessage: %s' % exc) from exc

        # identity of the transaction first, so that later errors can be answered with a CertRep
        info.transaction_id = _string_attribute(attrs, OID_TRANSACTION_ID, 'transactionID', required=False)
        nonce = attrs.get(OID_SENDER_NONCE)
        info.sender_nonce = nonce.native if isinstance(nonce, core.OctetString) else None
        message_type = _string_attribute(attrs, OID_MESSAGE_TYPE, 'messageType', required=False)
        info.message_type = int(message_type) if message_type is not None and message_type.isdigit() else None

        signer = self._find_signer(signed_data, signer_info)
        info.signer_certificate = signer
        digest_name, digest = _hash_for_signature(signer_info)
        info.digest = digest_name
        info.signature_algorithm = signer_info['signature_algorithm']['algorithm'].native
        signed_attrs_der = signer_info['signed_attrs'].dump()
        _verify_signature(signer.public_key(), signer_info, b'\x31' + signed_attrs_der[1:], digest)
        if info.transaction_id is None:
            raise ScepError(BAD_REQUEST, 'request has no transactionID')
        if info.sender_nonce is None:
            raise ScepError(BAD_REQUEST, 'request has no senderNonce (OCTET STRING)')
        if info.message_type is None:
            raise ScepError(BAD_REQUEST, 'request has no valid messageType (%r)' % message_type)

        content_type = attrs.get(OID_CONTENT_TYPE)
        if not isinstance(content_type, core.ObjectIdentifier) or content_type.dotted != OID_DATA:
            raise ScepError(BAD_MESSAGE_CHECK, 'signed contentType attribute is not id-data')
        encap = signed_data['encap_content_info']
        if encap['content_type'].dotted != OID_DATA:
            raise ScepError(BAD_REQUEST, 'encapsulated content is %s, not id-data' % encap['content_type'].native)
        econtent = bytes(encap['content']) if encap['content'].native is not None else b''
        message_digest = attrs.get(OID_MESSAGE_DIGEST)
        hasher = hashes.Hash(digest)
        hasher.update(econtent)
        if not isinstance(message_digest, core.OctetString) or message_digest.native != hasher.finalize():
            raise ScepError(BAD_MESSAGE_CHECK, 'messageDigest does not match the encapsulated content')

        if info.message_type not in (PKCS_REQ, RENEWAL_REQ, CERT_POLL, GET_CERT, GET_CRL):
            raise ScepError(BAD_REQUEST, 'unsupported messageType %s' % info.message_type)
        message_data = self._decrypt(econtent, info)
        request: dict[str, t.Any] = {'signer': signer, 'message_data': message_data}
        if info.message_type in (PKCS_REQ, RENEWAL_REQ):
            try:
                csr = x509.load_der_x509_csr(message_data)
            except ValueError as exc:
                raise ScepError(BAD_REQUEST, 'messageData is not a PKCS#10 request: %s' % exc) from exc
            if not csr.is_signature_valid:
                raise ScepError(BAD_MESSAGE_CHECK, 'PKCS#10 signature does not verify')
            info.csr = csr
            try:
                password = csr.attributes.get_attribute_for_oid(AttributeOID.CHALLENGE_PASSWORD).value
                info.challenge_password = password.decode('utf-8', 'replace') if isinstance(password, bytes) else str(password)
            except x509.AttributeNotFound:
                info.challenge_password = None
            request['csr'] = csr
        elif info.message_type == CERT_POLL:
            try:
                IssuerAndSubject.load(message_data, strict=True).native  # pylint: disable=expression-not-assigned
            except (ValueError, TypeError) as exc:
                raise ScepError(BAD_REQUEST, 'CertPoll messageData is not IssuerAndSubject: %s' % exc) from exc
        return request

    @staticmethod
    def _find_signer(signed_data: cms.SignedData, signer_info: cms.SignerInfo) -> x509.Certificate:
        sid = signer_info['sid']
        for choice in signed_data['certificates'] or []:
            if choice.name != 'certificate':
                continue
            cert = choice.chosen
            if sid.name == 'issuer_and_serial_number':
                if cert.issuer == sid.chosen['issuer'] and cert.serial_number == sid.chosen['serial_number'].native:
                    return x509.load_der_x509_certificate(cert.dump())
            elif cert.key_identifier == sid.chosen.native:
                return x509.load_der_x509_certificate(cert.dump())
        raise ScepError(BAD_REQUEST, 'the signer certificate is not in the pkiMessage certificates')

    def _decrypt(self, econtent: bytes, info: PkiMessageInfo) -> bytes:
        try:
            envelope_info = cms.ContentInfo.load(econtent, strict=True)
            if envelope_info['content_type'].dotted != OID_ENVELOPED_DATA:
                raise ScepError(BAD_REQUEST, 'pkcsPKIEnvelope is a %s, not envelopedData' % envelope_info['content_type'].native)
            enveloped = envelope_info['content']
            recipient_infos = list(enveloped['recipient_infos'])
            encrypted = enveloped['encrypted_content_info']
            algorithm = encrypted['content_encryption_algorithm']
            cipher_oid = algorithm['algorithm'].dotted
            ciphertext = _encrypted_content(encrypted)
        except (ValueError, TypeError, KeyError) as exc:
            raise ScepError(BAD_REQUEST, 'cannot parse pkcsPKIEnvelope: %s' % exc) from exc
        cipher_name = CIPHER_BY_OID.get(cipher_oid)
        if cipher_name is None:
            raise ScepError(BAD_ALG, 'unsupported content cipher %s' % cipher_oid)
        info.content_cipher = cipher_name
        _oid, key_length, iv_length = CIPHERS[cipher_name]
        iv = algorithm['parameters'].native if algorithm['parameters'] is not None else None
        if not isinstance(iv, bytes) or len(iv) != iv_length:
            raise ScepError(BAD_ALG, '%s without a %d-byte IV' % (cipher_name, iv_length))
        for recipient_info in recipient_infos:
            rid = recipient_info.chosen['rid'] if recipient_info.name == 'ktri' else None
            if rid is not None and rid.name == 'issuer_and_serial_number':
                info.recipients.append((rid.chosen['issuer'].human_friendly, rid.chosen['serial_number'].native))
        for cert, key in self._decryption_keys():
            asn1 = _asn1_cert(cert)
            for recipient_info in recipient_infos:
                if recipient_info.name != 'ktri':
                    continue
                ktri = recipient_info.chosen
                rid = ktri['rid']
                if rid.name == 'issuer_and_serial_number':
                    matches = rid.chosen['issuer'] == asn1.issuer and rid.chosen['serial_number'].native == asn1.serial_number
                else:
                    matches = rid.chosen.native == asn1.key_identifier
                if not matches:
                    continue
                info.recipient = cert.subject.rfc4514_string()
                content_key = self._unwrap_key(ktri, key, info)
                if len(content_key) != key_length:
                    raise ScepError(BAD_MESSAGE_CHECK, '%s content key has %d bytes' % (cipher_name, len(content_key)))
                return cbc_decrypt(cipher_name, content_key, iv, ciphertext)
        recipients = ', '.join(recipient_info.name for recipient_info in recipient_infos)
        raise ScepError(BAD_MESSAGE_CHECK, 'pkcsPKIEnvelope is not encrypted to %s (recipients: %s)' % (
            self._decryption_keys()[0][0].subject.rfc4514_string(), recipients))

    @staticmethod
    def _unwrap_key(ktri: cms.KeyTransRecipientInfo, key: rsa.RSAPrivateKey, info: PkiMessageInfo) -> bytes:
        algorithm = ktri['key_encryption_algorithm']
        oid = algorithm['algorithm'].dotted
        encrypted_key = ktri['encrypted_key'].native
        try:
            if oid == OID_RSA_ENCRYPTION:
                info.key_transport = 'rsaes_pkcs1v15'
                return key.decrypt(encrypted_key, padding.PKCS1v15())
            if oid == OID_RSAES_OAEP:
                info.key_transport = 'rsaes_oaep'
                params = algorithm['parameters']
                hash_name = 'sha1'
                if params is not None and params['hash_algorithm'] is not None:
                    hash_name = DIGEST_OIDS.get(params['hash_algorithm']['algorithm'].dotted, 'sha1')
                oaep_hash = DIGESTS[hash_name]()
                return key.decrypt(encrypted_key, padding.OAEP(padding.MGF1(oaep_hash), oaep_hash, None))
        except ValueError as exc:
            raise ScepError(BAD_MESSAGE_CHECK, 'cannot decrypt the content key: %s' % exc) from exc
        raise ScepError(BAD_ALG, 'unsupported key transport %s' % oid)

    def _decide(self, request: dict[str, t.Any], info: PkiMessageInfo) -> tuple[int, x509.Certificate | None]:
        """Apply the configured behaviour; returns (pkiStatus, certificate for SUCCESS)."""
        tid = info.transaction_id or ''
        if self.fail_info is not None:
            raise ScepError(int(self.fail_info), self.fail_info_text or 'configured failure')
        if info.message_type in (GET_CERT, GET_CRL):
            raise ScepError(BAD_REQUEST, '%s is not supported' % MESSAGE_TYPES[info.message_type])
        if not isinstance(request['signer'].public_key(), rsa.RSAPublicKey):
            raise ScepError(BAD_ALG, 'the reply cannot be encrypted to a %s signer key (RSA key transport only)'
                            % type(request['signer'].public_key()).__name__)
        with self._lock:
            if info.message_type == CERT_POLL:
                if tid in self._completed:
                    return SUCCESS, self._completed[tid]
                item = self.pending_transactions.get(tid)
                if item is None:
                    raise ScepError(BAD_CERT_ID, 'no pending transaction %s' % tid)
                if item.rejected is not None:
                    del self.pending_transactions[tid]
                    raise ScepError(item.rejected, 'request rejected by the CA operator')
                if tid not in self._approved:
                    return PENDING, None
                del self.pending_transactions[tid]
                return SUCCESS, self._issue(tid, item.csr)

            csr = request['csr']
            if info.message_type == PKCS_REQ or info.challenge_password is not None:
                if self.challenge is not None and not secrets.compare_digest(
                        (info.challenge_password or '').encode('utf-8'), self.challenge.encode('utf-8')):
                    raise ScepError(BAD_REQUEST, 'wrong or missing challengePassword')
            if info.message_type == RENEWAL_REQ:
                try:
                    request['signer'].verify_directly_issued_by(self.ca_cert)
                except (ValueError, TypeError, InvalidSignature) as exc:
                    raise ScepError(BAD_REQUEST, 'RenewalReq not signed by a certificate of this CA') from exc
            item = self.pending_transactions.get(tid)
            if item is not None and item.rejected is not None:
                del self.pending_transactions[tid]
                raise ScepError(item.rejected, 'request rejected by the CA operator')
            if self.pending and tid not in self._approved:
                self.pending_transactions[tid] = PendingTransaction(tid, csr, request['signer'])
                return PENDING, None
            self.pending_transactions.pop(tid, None)
            return SUCCESS, self._issue(tid, csr)

    def _issue(self, tid: str, csr: x509.CertificateSigningRequest) -> x509.Certificate:
        now = _utcnow()
        builder = (
            x509.CertificateBuilder()
            .subject_name(csr.subject).issuer_name(self.ca_cert.subject).public_key(csr.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=float(self.validity_days)))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(csr.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.ca_key.public_key()), critical=False)
        )
        copied = (ExtensionOID.SUBJECT_ALTERNATIVE_NAME, ExtensionOID.KEY_USAGE, ExtensionOID.EXTENDED_KEY_USAGE)
        for extension in csr.extensions:
            if extension.oid in copied:
                builder = builder.add_extension(extension.value, critical=extension.critical)
        cert = builder.sign(self.ca_key, hashes.SHA256())
        with self._lock:
            self.issued.append(cert)
            self._completed[tid] = cert
            self._approved.discard(tid)
        return cert

    def _reply_signer(self) -> tuple[t.Any, x509.Certificate, list[x509.Certificate]]:
        if self.reply_signer is not None:
            key, cert = self.reply_signer
            return key, cert, [cert, self.ca_cert]
        if self.sign_with_unpinned_key:
            key, cert = self.unpinned
            return key, cert, [cert]
        if self.ra_mode:
            return self.ra_sign_key, self.ra_sign_cert, [self.ra_sign_cert, self.ca_cert]
        return self.ca_key, self.ca_cert, [self.ca_cert]

    def _envelope(self, content: bytes, recipient: x509.Certificate) -> bytes:
        public_key = recipient.public_key()
        if not isinstance(public_key, rsa.RSAPublicKey):
            raise ScepError(BAD_ALG, 'cannot encrypt the reply to a %s key (RSA key transport only)' % type(public_key).__name__)
        cipher_name = self.reply_cipher
        oid, key_length, iv_length = CIPHERS[cipher_name]
        content_key, iv = os.urandom(key_length), os.urandom(iv_length)
        recipient_info = cms.KeyTransRecipientInfo({
            'version': 'v0',
            'rid': cms.RecipientIdentifier(name='issuer_and_serial_number', value=_issuer_and_serial(recipient)),
            'key_encryption_algorithm': {'algorithm': 'rsaes_pkcs1v15', 'parameters': core.Null()},
            'encrypted_key': public_key.encrypt(content_key, padding.PKCS1v15()),
        })
        enveloped = cms.EnvelopedData({
            'version': 'v0',
            'recipient_infos': [cms.RecipientInfo(name='ktri', value=recipient_info)],
            'encrypted_content_info': {
                'content_type': 'data',
                'content_encryption_algorithm': {'algorithm': oid, 'parameters': core.OctetString(iv)},
                'encrypted_content': cbc_encrypt(cipher_name, content_key, iv, content),
            },
        })
        return cms.ContentInfo({'content_type': 'enveloped_data', 'content': enveloped}).dump()

    def _cert_rep(self, info: PkiMessageInfo, status: int, fail_info: int | None = None, fail_text: str | None = None,
                  certificate: x509.Certificate | None = None, recipient: x509.Certificate | None = None) -> bytes:
        econtent: bytes | None = None
        if status == SUCCESS and (certificate is None or recipient is None):
            raise RuntimeError('SUCCESS needs a certificate and a recipient')
        if status == SUCCESS:
            try:
                econtent = self._envelope(degenerate_signed_data([certificate]), recipient)
            except ScepError as exc:
                status, fail_info, fail_text = FAILURE, exc.fail_info, exc.text
        if status != SUCCESS and self.empty_content:
            econtent = b''
        info.pki_status, info.fail_info = status, fail_info if status == FAILURE else None
        return self.build_cert_rep(info.transaction_id or '', info.sender_nonce or b'', status, econtent,
                                   fail_info=fail_info, fail_text=fail_text if status == FAILURE else None)

    def build_cert_rep(self, transaction_id: str, recipient_nonce: bytes, status: int, econtent: bytes | None,
                       fail_info: int | None = None, fail_text: str | None = None) -> bytes:
        """DER CertRep pkiMessage with the configured signer, digest and corruptions."""
        key, signer_cert, certs = self._reply_signer()
        digest_name = self.digest
        digest = DIGESTS[digest_name]()
        if self.wrong_transaction_id:
            transaction_id = 'X' + secrets.token_hex(16) if transaction_id else secrets.token_hex(16)
        if self.wrong_recipient_nonce:
            recipient_nonce = bytes(b ^ 0xFF for b in recipient_nonce) if recipient_nonce else os.urandom(16)
        hasher = hashes.Hash(DIGESTS[digest_name]())
        hasher.update(econtent or b'')
        attributes = [
            (OID_CONTENT_TYPE, core.ObjectIdentifier(OID_DATA)),
            (OID_MESSAGE_DIGEST, core.OctetString(hasher.finalize())),
            (OID_SIGNING_TIME, core.UTCTime(_utcnow().replace(microsecond=0))),
            (OID_MESSAGE_TYPE, core.PrintableString(str(CERT_REP))),
            (OID_PKI_STATUS, core.PrintableString(str(status))),
            (OID_TRANSACTION_ID, core.PrintableString(transaction_id)),
            (OID_RECIPIENT_NONCE, core.OctetString(recipient_nonce)),
            (OID_SENDER_NONCE, core.OctetString(os.urandom(16))),
        ]
        if status == FAILURE:
            attributes.append((OID_FAIL_INFO, core.PrintableString(str(BAD_REQUEST if fail_info is None else fail_info))))
            if fail_text:
                attributes.append((OID_FAIL_INFO_TEXT, core.UTF8String(fail_text)))
        attrs_der = _Attributes([_Attribute({'type': oid, 'values': [value]}) for oid, value in attributes]).dump()
        if isinstance(key, rsa.RSAPrivateKey):
            signature = key.sign(attrs_der, padding.PKCS1v15(), digest)
            signature_algorithm = {'algorithm': 'rsassa_pkcs1v15', 'parameters': core.Null()}
        else:
            signature = key.sign(attrs_der, ec.ECDSA(digest))
            signature_algorithm = {'algorithm': '%s_ecdsa' % digest_name}
        signer_info = cms.SignerInfo({
            'version': 'v1',
            'sid': cms.SignerIdentifier(name='issuer_and_serial_number', value=_issuer_and_serial(signer_cert)),
            'digest_algorithm': {'algorithm': DIGEST_OID_BY_NAME[digest_name], 'parameters': core.Null()},
            'signed_attrs': cms.CMSAttributes.load(attrs_der),
            'signature_algorithm': signature_algorithm,
            'signature': signature,
        })
        encap: dict[str, t.Any] = {'content_type': 'data'}
        if econtent is not None:
            encap['content'] = econtent
        signed_data = cms.SignedData({
            'version': 'v1',
            'digest_algorithms': [{'algorithm': DIGEST_OID_BY_NAME[digest_name], 'parameters': core.Null()}],
            'encap_content_info': encap,
            'certificates': [cms.CertificateChoices(name='certificate', value=_asn1_cert(cert)) for cert in certs],
            'signer_infos': [signer_info],
        })
        return cms.ContentInfo({'content_type': 'signed_data', 'content': signed_data}).dump()


# --- HTTP -------------------------------------------------------------------------------------

class _HttpServer(http.server.ThreadingHTTPServer):
    """ThreadingHTTPServer that remembers its handler threads so that stop() can wait for them (bounded)."""
    daemon_threads = True

    def __init__(self, *args: t.Any, **kwargs: t.Any) -> None:
        super().__init__(*args, **kwargs)
        self._handlers: list[threading.Thread] = []
        self._handlers_lock = threading.Lock()

    def process_request(self, request, client_address):
        thread = threading.Thread(target=self.process_request_thread, args=(request, client_address), daemon=True)
        with self._handlers_lock:
            self._handlers = [handler for handler in self._handlers if handler.is_alive()]
            self._handlers.append(thread)
        thread.start()

    def join_handlers(self, deadline: float) -> None:
        with self._handlers_lock:
            handlers = list(self._handlers)
        for handler in handlers:
            handler.join(max(0.0, deadline - time.monotonic()))


def _query_params(query: str) -> dict[str, str]:
    """Percent-decode the query without turning '+' into ' ' (base64 keeps its '+')."""
    params: dict[str, str] = {}
    for part in query.split('&'):
        if not part:
            continue
        name, _sep, value = part.partition('=')
        params.setdefault(urllib.parse.unquote(name), urllib.parse.unquote(value))
    return params


class _ScepHandler(http.server.BaseHTTPRequestHandler):
    scep_server: FakeScepServer
    timeout = HANDLER_SOCKET_TIMEOUT
    server_version = 'tokenfleet-fake-scep/1.0'

    def log_message(self, format, *args):  # pylint: disable=redefined-builtin
        if os.environ.get('FAKE_SCEP_VERBOSE'):
            sys.stderr.write('fake-scep: %s\n' % (format % args))

    def do_GET(self):  # pylint: disable=invalid-name
        self._dispatch('GET')

    def do_POST(self):  # pylint: disable=invalid-name
        self._dispatch('POST')

    def _send(self, status: int, content_type: str, body: bytes, declared_length: int | None = None) -> None:
        self.send_response(status)
        self.send_header('Content-Type', content_type)
        self.send_header('Content-Length', str(len(body) if declared_length is None else declared_length))
        self.send_header('Connection', 'close')
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def _text(self, status: int, text: str) -> None:
        self._send(status, 'text/plain; charset=utf-8', (text + '\n').encode('utf-8'))

    def _read_body(self) -> bytes:
        length = self.headers.get('Content-Length')
        if length is None:
            return b''
        try:
            size = int(length)
        except ValueError as exc:
            raise BadHttpRequest('bad Content-Length %r' % length) from exc
        if size < 0 or size > MAX_BODY:
            raise BadHttpRequest('body of %d bytes is too large' % size)
        return self.rfile.read(size)

    def _dispatch(self, method: str) -> None:
        server = self.scep_server
        url = urllib.parse.urlsplit(self.path)
        if server.control and url.path == server.path.rstrip('/') + '/_control':
            self._control(method)
            return
        if url.path != server.path:
            self._text(404, 'not found: %s (SCEP is served at %s)' % (url.path, server.path))
            return
        params = _query_params(url.query)
        operation = params.get('operation', '')
        try:
            body = self._read_body() if method == 'POST' else b''
        except BadHttpRequest as exc:
            server._log(RequestLogEntry(operation or None, None, None, method))  # pylint: disable=protected-access
            self._text(400, str(exc))
            return
        if operation == 'PKIOperation':
            self._pki_operation(method, params, body)
            return
        server._log(RequestLogEntry(operation or None, None, None, method))  # pylint: disable=protected-access
        if operation == 'GetCACaps':
            content_type, body = 'text/plain', ''.join(cap + '\n' for cap in server.caps).encode('ascii')
        elif operation == 'GetCACert':
            with server._lock:  # pylint: disable=protected-access
                server.ca_identifiers.append(params.get('message'))
            content_type, body = server.get_ca_cert_response()
        elif not operation:
            self._text(400, 'missing operation= parameter')
            return
        else:
            self._text(400, 'operation %s is not supported' % operation)
            return
        if not self._fault(operation, reply=body, content_type=content_type):
            self._send(200, content_type, body)

    def _fault(self, operation: str, reply: bytes | None = None, content_type: str = 'text/plain') -> bool:
        """Apply hang / http_status / garbage / truncated for this operation; True when answered."""
        server = self.scep_server
        if operation not in server.fault_operations:
            return False
        if server.hang:
            server.wait_hang()
            self.close_connection = True
            return True
        if server.http_status is not None:
            self._text(int(server.http_status), server.http_body or 'fake SCEP server: configured HTTP status %s' % server.http_status)
            return True
        if server.garbage_body:
            self._send(200, content_type, os.urandom(max(64, len(reply)) if reply else 256))
            return True
        if server.truncated_body and reply is not None:
            half = reply[:len(reply) // 2]
            self._send(200, content_type, half, declared_length=len(reply) if server.truncated_body == 'close' else None)
            return True
        if server.drip_interval and reply is not None:
            self._drip(content_type, reply)
            return True
        if server.huge_body:
            self._huge(content_type)
            return True
        return False

    def _drip(self, content_type: str, reply: bytes) -> None:
        """The whole answer, status line first, one byte every ``drip_interval`` s (until stop() or ``hang_seconds``)."""
        server = self.scep_server
        raw = ('HTTP/1.1 200 OK\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n'
               % (content_type, len(reply))).encode('ascii') + reply
        started = time.monotonic()
        deadline = started + server.hang_seconds
        self.close_connection = True
        try:
            for index in range(len(raw)):
                self.wfile.write(raw[index:index + 1])
                self.wfile.flush()
                if server._stop_event.wait(float(server.drip_interval)) or time.monotonic() > deadline:  # pylint: disable=protected-access
                    break
        except OSError:  # the client gave up
            pass
        with server._lock:  # pylint: disable=protected-access
            server.drips.append((started, time.monotonic()))

    def _huge(self, content_type: str) -> None:
        """``huge_body='announce'``: a Content-Length of ``huge_size`` bytes; ``'stream'``: that many bytes, no length."""
        server = self.scep_server
        self.close_connection = True
        self.send_response(200)
        self.send_header('Content-Type', content_type)
        if server.huge_body == 'announce':
            self.send_header('Content-Length', str(server.huge_size))
        self.send_header('Connection', 'close')
        self.end_headers()
        chunk = b'A' * 65536
        if server.huge_body == 'announce':  # a little of it, then nothing more (bounded)
            try:
                self.wfile.write(chunk)
                self.wfile.flush()
            except OSError:
                return
            server.wait_hang()
            return
        try:
            for dummy in range(server.huge_size // len(chunk)):
                if server._stop_event.is_set():  # pylint: disable=protected-access
                    return
                self.wfile.write(chunk)
        except OSError:  # the client stopped reading
            return

    def _pki_operation(self, method: str, params: dict[str, str], body: bytes) -> None:
        server = self.scep_server
        try:
            if method == 'GET':
                message = params.get('message')
                if not message:
                    raise BadHttpRequest('PKIOperation via GET without message=')
                der = base64.b64decode(''.join(message.split()), validate=True)
            else:
                der = body
                if der[:1] != b'\x30':  # some clients POST base64
                    der = base64.b64decode(b''.join(der.split()), validate=True)
        except (BadHttpRequest, ValueError) as exc:
            server._log(RequestLogEntry('PKIOperation', None, None, method))  # pylint: disable=protected-access
            self._text(400, 'bad PKIOperation message: %s' % exc)
            return
        early = server.hang or server.http_status is not None or server.garbage_body
        if early and 'PKIOperation' in server.fault_operations:
            # answered before any processing: peek at the message only for the log
            info = PkiMessageInfo(method=method)
            try:
                server._parse_request(der, info)  # pylint: disable=protected-access
            except (ScepError, BadHttpRequest):
                pass
            server._log(RequestLogEntry('PKIOperation', info.message_type, info.transaction_id, method))  # pylint: disable=protected-access
            self._fault('PKIOperation', reply=None, content_type=CONTENT_TYPE_PKI_MESSAGE)
            return
        reply, info = server.handle_pki_operation(der, method)
        with server._lock:  # pylint: disable=protected-access
            server.request_log.append(RequestLogEntry('PKIOperation', info.message_type, info.transaction_id, method))
            server.pki_messages.append(info)
        if reply is None:
            self._text(400, 'bad pkiMessage: %s' % info.error)
            return
        if self._fault('PKIOperation', reply=reply, content_type=CONTENT_TYPE_PKI_MESSAGE):
            return
        self._send(200, CONTENT_TYPE_PKI_MESSAGE, reply)

    def _control(self, method: str) -> None:
        server = self.scep_server
        if method == 'POST':
            try:
                body = json.loads(self._read_body() or b'{}')
                if not isinstance(body, dict):
                    raise ValueError('a JSON object is expected')
                approve = body.pop('approve', False)
                reject = body.pop('reject', False)
                server.configure(**body)
                if approve is not False:
                    server.approve(approve)
                if reject is not False:
                    server.reject(reject)
            except (ValueError, TypeError, BadHttpRequest) as exc:
                self._text(400, 'bad control request: %s' % exc)
                return
        self._send(200, 'application/json', json.dumps(server.state(), indent=2, default=str).encode('utf-8'))


# --- CLI --------------------------------------------------------------------------------------

def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Fake SCEP responder (RFC 8894) for manual tests; listens on 127.0.0.1, on a free port (printed).',
        epilog='Runtime control: GET <path>/_control shows settings and logs; POST a JSON object there to change '
               'settings, e.g. {"pending": true}, {"approve": null} (all) or {"approve": "<transaction id>"}, '
               '{"fail_info": 4}, {"caps": ["DES3", "SHA-1"]}, {"hang": true}.')
    parser.add_argument('--path', default='/scep', help='URL path (default /scep)')
    parser.add_argument('--caps', default='default',
                        help='comma-separated GetCACaps keywords, or a preset: %s (default: default)' % ', '.join(CAPS_PRESETS))
    parser.add_argument('--ra', action='store_true', help='RA mode: GetCACert returns CA + signing RA + encryption RA')
    parser.add_argument('--challenge', help='required challengePassword')
    parser.add_argument('--validity-days', type=float, default=365)
    parser.add_argument('--digest', choices=sorted(DIGESTS), default='sha256', help='CertRep signature digest')
    parser.add_argument('--reply-cipher', choices=sorted(CIPHERS), default='aes128', help='cipher of the SUCCESS envelope')
    parser.add_argument('--no-content', action='store_true', help='FAILURE/PENDING replies without eContent (default: empty)')
    parser.add_argument('--pending', action='store_true', help='answer PKCSReq with PENDING until approved')
    parser.add_argument('--fail-info', type=int, choices=sorted(FAIL_INFO_NAMES), help='answer FAILURE with this failInfo')
    parser.add_argument('--fail-info-text')
    parser.add_argument('--sign-with-unpinned-key', action='store_true')
    parser.add_argument('--wrong-recipient-nonce', action='store_true')
    parser.add_argument('--wrong-transaction-id', action='store_true')
    parser.add_argument('--http-status', type=int)
    parser.add_argument('--garbage-body', action='store_true')
    parser.add_argument('--truncated-body', choices=['short', 'close'])
    parser.add_argument('--hang', action='store_true')
    parser.add_argument('--ca-out', help='write the CA certificate (PEM) to this file')
    parser.add_argument('--max-seconds', type=float, default=3600.0, help='stop after this many seconds (default 3600)')
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    caps = CAPS_PRESETS.get(args.caps)
    if caps is None:
        caps = [cap.strip() for cap in args.caps.split(',') if cap.strip()]
    server = FakeScepServer(path=args.path, caps=caps, ra_mode=args.ra, challenge=args.challenge, validity_days=args.validity_days,
                            digest=args.digest, reply_cipher=args.reply_cipher, control=True)
    server.configure(empty_content=not args.no_content, pending=args.pending, fail_info=args.fail_info,
                     fail_info_text=args.fail_info_text, sign_with_unpinned_key=args.sign_with_unpinned_key,
                     wrong_recipient_nonce=args.wrong_recipient_nonce, wrong_transaction_id=args.wrong_transaction_id,
                     http_status=args.http_status, garbage_body=args.garbage_body, truncated_body=args.truncated_body or False,
                     hang=args.hang)
    server.start()
    if args.ca_out:
        with open(args.ca_out, 'w', encoding='ascii') as handle:
            handle.write(server.ca_pem)
    done = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_args: done.set())
    print('fake SCEP responder at %s' % server.url, flush=True)
    print('CA SHA-256 fingerprint %s' % server.ca_fingerprint, flush=True)
    print('control: %s/_control' % server.url.rstrip('/'), flush=True)
    try:
        done.wait(args.max_seconds)
    finally:
        server.stop()
    return 0


if __name__ == '__main__':
    sys.exit(main())
