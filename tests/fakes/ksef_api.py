# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A fake KSeF API 2.0 server (test double) that holds every exchange to the official OpenAPI document.

No KSeF server can be reached from the tests, so this one stands in for it. It is written from
the official contract (``tests/fakes/ksef/open-api.json``, API 2.6.0, and the ``AuthTokenRequest``
XSDs next to it; their source and terms are in ``tests/fakes/ksef/SOURCE.txt``) and from the
project's research notes on the KSeF API, never from the collection's client: nothing is imported
from ``plugins/``.

In-process use (tests)::

    fake = FakeKsef()
    fake.start()
    fake.base_url                      # https://127.0.0.1:<port>/v2 (the spec's servers path)
    fake.ca_pem_path                   # PEM of the throwaway CA that issued the TLS certificate
    fake.grant('5265877635', ('Nip', '5265877635'), ['CredentialsManage', 'InvoiceRead'])
    ref, secret = fake.add_token('5265877635', ('Nip', '5265877635'), ['InvoiceRead'], 'Księgowość')
    fake.populate_tokens(250, '5265877635', ('Nip', '5265877635'), ['InvoiceRead'])
    fake.rate_limit(count=3, retry_after=1)        # the next 3 requests get 429 + Retry-After
    fake.rate_limit_storm(seconds=2, retry_after=1)
    fake.expire_challenges()                       # every challenge issued so far is expired
    fake.misbehave('GET', '/tokens', ksef_hostile.Drip())   # a hostile answer there (tests/fakes/ksef_hostile.py)
    fake.behave()                                  # the contract everywhere again
    fake.violations()                              # requests that broke the contract ([] is good)
    fake.stop()                                    # raises FakeKsefError if the fake itself misbehaved

Manual use: ``.venv/bin/python tests/fakes/ksef_api.py --help``.

Contract checking (openapi-core): every request is validated against the spec (path, method,
parameters, security, body). A request that fails is recorded in ``violations()`` and answered
like KSeF answers invalid input: 400 with exception code 21405 in the spec's error shape
(``ExceptionResponse``, or ``BadRequestProblemDetails`` when the request carries
``X-Error-Format: problem-details``); a missing or malformed ``Authorization: Bearer`` on a
secured operation is answered 401 (``UnauthorizedProblemDetails``). Every response of the fake
is validated too; a response that does not match is a bug of the fake: it is recorded, reported
on stderr, answered 500, and ``stop()``/``check()`` raise ``FakeKsefError``.

Requests are validated as if sent to the spec's server (``servers[0].url``): the fake serves the
same path prefix (``/v2``) on 127.0.0.1, and the validator is given the spec's scheme and host.

Everything is bounded: sockets time out (``io_timeout``), ``stop()`` shuts the listener and every
open connection down and removes the temporary directory with the keys and certificates.

Implemented operations: POST /auth/challenge, GET /security/public-key-certificates,
POST /auth/ksef-token, POST /auth/xades-signature, GET /auth/{referenceNumber},
POST /auth/token/redeem, POST /auth/token/refresh, DELETE /auth/sessions/current, POST /tokens,
GET /tokens, GET /tokens/{referenceNumber}, DELETE /tokens/{referenceNumber}. Any other operation
of the spec is validated, then answered 400 with the fake's own code 99001 and listed in
``unimplemented()``. Not modelled: enveloping XAdES signatures (KSeF accepts them), OCSP/CRL,
the sliding-window limits of ``x-rate-limits`` (429 only on demand), NIP-PESEL links, 410 Gone.
"""

from __future__ import annotations

import argparse
import base64
import copy
import dataclasses
import datetime
import hashlib
import hmac
import http.server
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import sys
import tempfile
import threading
import time
import traceback
import typing as t
import urllib.parse
import uuid
import warnings

from cryptography import x509
from cryptography.exceptions import InvalidSignature as CryptoInvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from lxml import etree
from openapi_core import Config, OpenAPI
from openapi_core.datatypes import RequestParameters
from openapi_core.deserializing.media_types.util import json_loads, plain_loads
from openapi_core.templating.paths.exceptions import OperationNotFound, PathNotFound, ServerNotFound
from openapi_core.templating.paths.finders import APICallPathFinder
from openapi_core.validation.request.exceptions import SecurityValidationError
from signxml import CanonicalizationMethod, DigestAlgorithm, SignatureMethod
from signxml.exceptions import InvalidCertificate, InvalidDigest, InvalidInput, InvalidSignature
from signxml.xades import XAdESSignatureConfiguration, XAdESVerifier
from werkzeug.datastructures import Headers, ImmutableMultiDict

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The official documents, kept in the repository (source and terms: tests/fakes/ksef/SOURCE.txt);
# KSEF_SPEC_DIR points elsewhere when needed (e.g. to try a newer API version).
DEFAULT_SPEC_DIR = os.environ.get('KSEF_SPEC_DIR') or os.path.join(os.path.dirname(os.path.abspath(__file__)), 'ksef')

DS_NS = 'http://www.w3.org/2000/09/xmldsig#'
AUTH_NAMESPACES = {
    'http://ksef.mf.gov.pl/auth/token/2.0': 'schemat_auth_v2-0.xsd',
    'http://ksef.mf.gov.pl/auth/token/2.1': 'schemat_auth_v2-1.xsd',
}

# Token statuses (spec enum AuthenticationTokenStatus); the list is checked against the spec at load.
PENDING, ACTIVE, REVOKING, REVOKED, FAILED = 'Pending', 'Active', 'Revoking', 'Revoked', 'Failed'
# Only these context types can have KSeF tokens (spec: POST /tokens description; error 26002).
TOKEN_CONTEXT_TYPES = ('Nip', 'InternalId')
CREDENTIALS_MANAGE, CREDENTIALS_READ = 'CredentialsManage', 'CredentialsRead'

# Exception codes the fake answers with. Descriptions come from the spec's 400 tables (parsed at
# load, so a code that vanished from the spec fails loudly); the codes below 90000 are KSeF's.
USED_SPEC_CODES = (9101, 9102, 9103, 9105, 21001, 21111, 21115, 21217, 21301, 21304, 21401, 21405, 21418, 21470, 26001, 26002)
# The fake's own codes, for situations the spec does not document. They are NOT KSeF codes.
FAKE_CODES = {
    99001: 'Fake KSeF: operation not implemented by tests/fakes/ksef_api.py.',
    99002: 'Fake KSeF: token not found in this context.',
    99003: 'Fake KSeF: token is not in a revocable state (Pending or Active).',
}
FAKE_NOT_IMPLEMENTED, FAKE_TOKEN_NOT_FOUND, FAKE_TOKEN_NOT_REVOCABLE = 99001, 99002, 99003

# Detail texts of the authentication status table (AuthenticationOperationStatusResponse.status);
# checked against the spec at load.
ST_BAD_CHALLENGE = 'Nieprawidłowe wyzwanie autoryzacyjne'
ST_BAD_TOKEN = 'Nieprawidłowy token'
ST_BAD_TOKEN_TIME = 'Nieprawidłowy czas tokena'
ST_TOKEN_REVOKED = 'Token unieważniony'
ST_TOKEN_INACTIVE = 'Token nieaktywny'
ST_CERT_EXPIRED = 'Nieważny certyfikat'
ST_CERT_UNTRUSTED = 'Niezaufany łańcuch certyfikatów'
ST_CERT_INVALID = 'Niepoprawny certyfikat'
ST_NO_PERMISSIONS = 'Brak przypisanych uprawnień'
ST_SESSION_REVOKED = 'Uwierzytelnienie i powiązane refresh tokeny zostały unieważnione przez użytkownika'

# Certificate subject patterns recognised for XAdES (research-ksef.md 3.2; CIRFMF/ksef-docs auth/podpis-xades.md).
SERIAL_PESEL_RE = re.compile(r'(PNOPL|PESEL).*?(?P<number>\d{11})')
SERIAL_NIP_RE = re.compile(r'(TINPL|NIP).*?(?P<number>\d{10})')
ORG_NIP_RE = re.compile(r'(VATPL).*?(?P<number>\d{10})')
NIP_RE = re.compile(r'^[1-9]((\d[1-9])|([1-9]\d))\d{7}$')   # TNIP of the auth XSD
INTERNAL_ID_RE = re.compile(r'^[1-9]((\d[1-9])|([1-9]\d))\d{7}-\d{5}$')   # TIID of the auth XSD
OID_ORGANIZATION_IDENTIFIER = x509.ObjectIdentifier('2.5.4.97')

# Authentication methods (spec enums AuthenticationMethod / AuthenticationMethodCategory). Only
# "xades.qualified-seal"/"Pieczęć kwalifikowana" appear in the spec; the other codes and
# display names are the fake's own guesses.
METHOD_INFO = {
    'Token': {'category': 'Token', 'code': 'token.ksef', 'displayName': 'Token KSeF'},
    'QualifiedSeal': {'category': 'XadesSignature', 'code': 'xades.qualified-seal', 'displayName': 'Pieczęć kwalifikowana'},
    'QualifiedSignature': {'category': 'XadesSignature', 'code': 'xades.qualified-signature', 'displayName': 'Podpis kwalifikowany'},
}

MAX_BODY = 1024 * 1024
Identifier = t.Tuple[str, str]


class FakeKsefError(AssertionError):
    """The fake itself misbehaved (a response that breaks the contract, or a crash in a handler)."""


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def iso(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.timezone.utc).isoformat(timespec='microseconds')


def nip_is_valid(value: str) -> bool:
    """NIP: 10 digits, the last one the checksum (weights 6 5 7 2 3 4 5 6 7, modulo 11)."""
    if not NIP_RE.match(value or ''):
        return False
    total = sum(int(digit) * weight for digit, weight in zip(value, (6, 5, 7, 2, 3, 4, 5, 6, 7))) % 11
    return total != 10 and total == int(value[9])


def context_id(value: t.Any) -> Identifier:
    """A context identifier: ('Nip', '...'), {'type': .., 'value': ..}, a NIP, or 'NIP-12345' (InternalId)."""
    if isinstance(value, dict):
        return (value['type'], value['value'])
    if isinstance(value, (tuple, list)):
        return (value[0], value[1])
    if NIP_RE.match(value):
        return ('Nip', value)
    if INTERNAL_ID_RE.match(value):
        return ('InternalId', value)
    raise ValueError('not a context identifier: %r (use a (type, value) tuple)' % (value,))


def subject_id(value: t.Any) -> Identifier:
    """A subject (author) identifier: ('Nip'|'Pesel'|'Fingerprint', value), a NIP, a PESEL or a SHA-256 hex."""
    if isinstance(value, dict):
        return (value['type'], value['value'])
    if isinstance(value, (tuple, list)):
        kind, val = value[0], value[1]
        return (kind, val.upper() if kind == 'Fingerprint' else val)
    if re.match(r'^\d{10}$', value):
        return ('Nip', value)
    if re.match(r'^\d{11}$', value):
        return ('Pesel', value)
    if re.match(r'^[0-9A-Fa-f]{64}$', value):
        return ('Fingerprint', value.upper())
    raise ValueError('not a subject identifier: %r (use a (type, value) tuple)' % (value,))


def certificate_fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the certificate's DER, upper-case hex (the identifier KSeF grants permissions to)."""
    return cert.fingerprint(hashes.SHA256()).hex().upper()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode('ascii')


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b'=').decode('ascii')


# --------------------------------------------------------------------------------------------
# The official documents, loaded once per process
# --------------------------------------------------------------------------------------------

class Spec:
    """open-api.json and the auth XSDs, with what the fake derives from them."""

    _cache: dict[str, 'Spec'] = {}
    _cache_lock = threading.Lock()

    @classmethod
    def load(cls, spec_dir: str = DEFAULT_SPEC_DIR) -> 'Spec':
        spec_dir = os.path.abspath(spec_dir)
        with cls._cache_lock:
            if spec_dir not in cls._cache:
                cls._cache[spec_dir] = cls(spec_dir)
            return cls._cache[spec_dir]

    def __init__(self, spec_dir: str) -> None:
        path = os.path.join(spec_dir, 'open-api.json')
        if not os.path.exists(path):
            raise FileNotFoundError('official KSeF OpenAPI document not found: %s (set KSEF_SPEC_DIR)' % path)
        with open(path, encoding='utf-8') as handle:
            self.document = json.load(handle)
        # application/xml bodies are XML text (schema "type: string"); problem+json is JSON.
        config = Config(extra_media_type_deserializers={'application/xml': plain_loads, 'application/problem+json': json_loads})
        self.api = OpenAPI.from_dict(self.document, config=config)
        self.finder = APICallPathFinder(self.api.spec)
        self.lock = threading.Lock()   # openapi-core objects are not documented as thread-safe

        server = urllib.parse.urlsplit(self.document['servers'][0]['url'])
        self.host_url = '%s://%s' % (server.scheme, server.netloc)
        self.base_path = server.path.rstrip('/')
        schemas = self.document['components']['schemas']
        self.permissions = list(schemas['TokenPermissionType']['enum'])
        statuses = schemas['AuthenticationTokenStatus']['enum']
        if statuses != [PENDING, ACTIVE, REVOKING, REVOKED, FAILED]:
            raise FakeKsefError('AuthenticationTokenStatus changed in the spec: %s' % statuses)
        self.context_types = list(schemas['AuthenticationContextIdentifierType']['enum'])

        self.codes = self._exception_codes()
        missing = [code for code in USED_SPEC_CODES if code not in self.codes]
        if missing:
            raise FakeKsefError('exception codes used by the fake are not in the spec: %s' % missing)
        self.codes.update(FAKE_CODES)
        self.auth_statuses = self._auth_statuses()
        for text in (ST_BAD_CHALLENGE, ST_BAD_TOKEN, ST_BAD_TOKEN_TIME, ST_TOKEN_REVOKED, ST_TOKEN_INACTIVE, ST_CERT_EXPIRED,
                     ST_CERT_UNTRUSTED, ST_CERT_INVALID, ST_NO_PERMISSIONS, ST_SESSION_REVOKED):
            if not any(text in entry[1] for entry in self.auth_statuses.values()):
                raise FakeKsefError('authentication status detail not in the spec: %s' % text)
        self.xsds = self._load_xsds(spec_dir)

    def _exception_codes(self) -> dict[int, str]:
        """ExceptionCode -> ExceptionDescription from the Markdown tables of every 400 response."""
        codes: dict[int, str] = {}
        row = re.compile(r'^\s*\|\s*(\d{4,5})\s*\|\s*([^|]+?)\s*\|')
        for operations in self.document['paths'].values():
            for operation in operations.values():
                if not isinstance(operation, dict):
                    continue
                text = operation.get('responses', {}).get('400', {}).get('description', '')
                for line in text.splitlines():
                    match = row.match(line)
                    if match:
                        codes.setdefault(int(match.group(1)), match.group(2))
        return codes

    def _auth_statuses(self) -> dict[int, tuple[str, list[str]]]:
        """Status code -> (description, [details]) from AuthenticationOperationStatusResponse.status."""
        prop = self.document['components']['schemas']['AuthenticationOperationStatusResponse']['properties']['status']
        table: dict[int, tuple[str, list[str]]] = {}
        for line in prop['description'].splitlines():
            cells = [cell.strip() for cell in line.strip().strip('|').split('|')]
            if len(cells) == 3 and cells[0].isdigit():
                description, details = table.get(int(cells[0]), (cells[1], []))
                if cells[2] not in ('', '-'):
                    details.append(cells[2])
                table[int(cells[0])] = (description, details)
        return table

    @staticmethod
    def _load_xsds(spec_dir: str) -> dict[str, etree.XMLSchema]:
        schemas = {}
        documents = {ns: etree.parse(os.path.join(spec_dir, name)) for ns, name in AUTH_NAMESPACES.items()}
        xsd = '{http://www.w3.org/2001/XMLSchema}'
        # The IPv4 patterns of schema 2.0 are written in .NET regex syntax (^, $, \b), which is not
        # XML Schema regex and which libxml2 rejects; they are replaced by the equivalent XSD-valid
        # patterns of schema 2.1 for the same elements (Ip4Address, Ip4Range, Ip4Mask). Nothing else
        # of schema 2.0 is touched.
        newer = {element.get('name'): element.find('.//%spattern' % xsd).get('value')
                 for element in documents['http://ksef.mf.gov.pl/auth/token/2.1'].iter('%selement' % xsd)
                 if element.get('name', '').startswith('Ip4')}
        for element in documents['http://ksef.mf.gov.pl/auth/token/2.0'].iter('%selement' % xsd):
            if element.get('name') in newer:
                element.find('.//%spattern' % xsd).set('value', newer[element.get('name')])
        # Both schemas anchor some patterns with ^...$ (.NET style: TNipVatUE, TPeppolId). In XML Schema
        # regex a pattern is anchored already and ^/$ are literal characters, so libxml2 would demand a
        # literal "$" at the end of every NipVatUe/PeppolId value. The anchors are dropped.
        for document in documents.values():
            for pattern in document.iter('%spattern' % xsd):
                value = pattern.get('value')
                if value.startswith('^') and value.endswith('$'):
                    pattern.set('value', value[1:-1])
                elif value.endswith('$') and not value.endswith('\\$'):
                    pattern.set('value', value[:-1])
        for namespace, document in documents.items():
            schemas[namespace] = etree.XMLSchema(document)
        return schemas

    def operation(self, method: str, template: str) -> dict:
        return self.document['paths'][template][method]


# --------------------------------------------------------------------------------------------
# openapi-core adapters
# --------------------------------------------------------------------------------------------

class _OpenApiRequest:
    """openapi_core.protocols.Request for one received request, addressed to the spec's server."""

    def __init__(self, spec: Spec, ctx: '_Ctx') -> None:
        self.host_url = spec.host_url
        self.path = ctx.path
        self.method = ctx.method.lower()
        self.body = ctx.body if ctx.body else None
        self.content_type = ctx.headers.get('Content-Type', '')
        self.parameters = RequestParameters(query=ImmutableMultiDict(ctx.query), header=Headers(list(ctx.headers.items())))


class _OpenApiResponse:
    """openapi_core.protocols.Response for one reply of the fake."""

    def __init__(self, reply: '_Reply') -> None:
        self.status_code = reply.status
        self.data = reply.body
        self.content_type = reply.content_type
        self.headers = Headers(reply.headers)


def _error_messages(errors: t.Iterable[BaseException]) -> list[str]:
    """Readable messages of openapi-core errors (the exception, its causes and the schema errors)."""
    messages = []
    for error in errors:
        chain, current, depth = [], error, 0
        while current is not None and depth < 6:
            text = str(current).strip() or type(current).__name__
            text = text.split(': Value ')[0]      # openapi-core repeats the whole value; the schema errors follow
            schema_errors = getattr(current, 'schema_errors', None) or []
            if schema_errors:
                for schema_error in schema_errors:
                    where = '/'.join(str(part) for part in schema_error.absolute_path)
                    chain.append('%s%s' % (schema_error.message, ' (at /%s)' % where if where else ''))
                break
            if not any(text in earlier for earlier in chain):
                chain.append(text if len(text) <= 300 else text[:300] + '...')
            current, depth = current.__cause__, depth + 1
        messages.append(': '.join(chain))
    return messages


# --------------------------------------------------------------------------------------------
# State
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass
class _Challenge:
    value: str
    timestamp_ms: int
    expires: float
    used: bool = False


@dataclasses.dataclass
class _Token:
    reference_number: str
    secret: str
    context: Identifier
    author: Identifier
    description: str
    permissions: list[str]
    created: datetime.datetime
    status: str = PENDING
    status_details: list[str] = dataclasses.field(default_factory=list)
    last_use: datetime.datetime | None = None
    reads: int = 0

    def item(self) -> dict:
        """QueryTokensResponseItem / TokenStatusResponse."""
        return {
            'referenceNumber': self.reference_number,
            'authorIdentifier': {'type': self.author[0], 'value': self.author[1]},
            'contextIdentifier': {'type': self.context[0], 'value': self.context[1]},
            'description': self.description,
            'requestedPermissions': list(self.permissions),
            'dateCreated': iso(self.created),
            'lastUseDate': iso(self.last_use) if self.last_use else None,
            'status': self.status,
            'statusDetails': list(self.status_details),
        }

    def public(self) -> dict:
        data = self.item()
        data['secret'] = self.secret
        return data


@dataclasses.dataclass
class _AuthOperation:
    reference_number: str
    started: datetime.datetime
    context: Identifier
    subject: Identifier | None
    method: str
    outcome: tuple[int, list[str]]          # final status code and details
    pending_polls: int                      # "in progress" answers still to give
    authentication_token: str
    authentication_token_expires: float
    client_ip: str
    token_reference: str | None = None      # the KSeF token used, for token authentication
    permissions: frozenset = frozenset()
    allowed_ips: dict | None = None
    redeemed: bool = False
    refresh_token: str | None = None
    refresh_token_expires: float = 0.0
    last_refresh: datetime.datetime | None = None
    closed: bool = False

    def current_status(self) -> int:
        if self.closed:
            return 425
        if self.pending_polls > 0:
            return 100
        return self.outcome[0]

    def summary(self) -> dict:
        return {
            'referenceNumber': self.reference_number, 'context': self.context, 'subject': self.subject,
            'method': self.method, 'status': self.current_status(), 'details': list(self.outcome[1]),
            'permissions': sorted(self.permissions), 'tokenReference': self.token_reference,
            'redeemed': self.redeemed, 'closed': self.closed,
        }


@dataclasses.dataclass
class _EncryptionKey:
    key: rsa.RSAPrivateKey
    certificate: x509.Certificate
    usage: str
    public_key_id: str

    def entry(self) -> dict:
        """PublicKeyCertificate."""
        der = self.certificate.public_bytes(serialization.Encoding.DER)
        return {
            'certificate': _b64(der),
            'certificateId': _b64(hashlib.sha256(der).digest()),
            'publicKeyId': self.public_key_id,
            'validFrom': iso(self.certificate.not_valid_before_utc),
            'validTo': iso(self.certificate.not_valid_after_utc),
            'usage': [self.usage],
        }


@dataclasses.dataclass
class _Ctx:
    method: str
    path: str
    query: list[tuple[str, str]]
    headers: t.Any                     # http.client.HTTPMessage (case-insensitive get)
    body: bytes
    client_ip: str
    template: str = ''
    path_params: dict = dataclasses.field(default_factory=dict)
    params: t.Any = None               # openapi-core unmarshalled parameters

    @property
    def problem(self) -> bool:
        return (self.headers.get('X-Error-Format') or '').strip().lower() == 'problem-details'

    def bearer(self) -> str | None:
        value = self.headers.get('Authorization') or ''
        scheme, token = value.partition(' ')[::2]
        return token.strip() if scheme.lower() == 'bearer' and token.strip() else None


@dataclasses.dataclass
class _Reply:
    status: int
    body: bytes = b''
    content_type: str = ''
    headers: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    validate: bool = True


class _Fail(Exception):
    """Raised by operation handlers: answered with the spec's error shape for the status."""

    def __init__(self, status: int, code: int | None = None, details: list[str] | None = None,
                 detail: str = '', reason: str = '', security: dict | None = None) -> None:
        super().__init__('%s %s %s' % (status, code or reason, details or detail))
        self.status, self.code, self.details = status, code, details or []
        self.detail, self.reason, self.security = detail, reason, security


def _json_reply(status: int, data: t.Any, content_type: str = 'application/json') -> _Reply:
    return _Reply(status, json.dumps(data, ensure_ascii=False).encode('utf-8'), content_type)


# --------------------------------------------------------------------------------------------
# The fake
# --------------------------------------------------------------------------------------------

class FakeKsef:
    """The fake KSeF API. See the module docstring; all public methods are thread-safe.

    Behaviour knobs (attributes, change any time):
      auth_pending_polls      "in progress" (100) answers of GET /auth/{ref} before the outcome (1)
      token_activation_reads  GET /tokens/{ref} answers showing Pending before Active (1)
      token_revocation_reads  GET /tokens/{ref} answers showing Revoking before Revoked (0)
      token_sessions_can_generate  whether a session authenticated with a KSeF token may POST /tokens
                              (False: 403 auth-method-not-allowed, see _op_generate_token)
      challenge_ttl, access_token_ttl, refresh_token_ttl, authentication_token_ttl  (seconds)
      io_timeout              socket timeout of every connection (seconds)
    """

    def __init__(self, spec_dir: str = DEFAULT_SPEC_DIR, io_timeout: float = 10.0) -> None:
        self.spec = Spec.load(spec_dir)
        self.io_timeout = io_timeout
        self.auth_pending_polls = 1
        self.token_activation_reads = 1
        self.token_revocation_reads = 0
        self.token_sessions_can_generate = False
        self.challenge_ttl = 600.0            # 10 minutes (research-ksef.md 3.1)
        self.access_token_ttl = 900.0         # "kilkanaście minut", observed 15 min (3.6)
        self.refresh_token_ttl = 7 * 86400.0  # up to 7 days (3.6)
        self.authentication_token_ttl = 2700.0

        self._lock = threading.RLock()
        self._grants: dict[Identifier, dict[Identifier, set[str]]] = {}
        self._tokens: dict[str, _Token] = {}
        self._secrets: dict[str, str] = {}
        self._challenges: dict[str, _Challenge] = {}
        self._operations: dict[str, _AuthOperation] = {}
        self._auth_tokens: dict[str, str] = {}                  # JWT -> operation reference
        self._refresh_tokens: dict[str, str] = {}
        self._access_tokens: dict[str, tuple[str, float]] = {}  # JWT -> (operation reference, expires)
        self._enforcement_authorities: set[Identifier] = set()
        self._trusted_cas: list[x509.Certificate] = []
        self._keys: list[_EncryptionKey] = []
        self._violations: list[dict] = []
        self._unimplemented: list[dict] = []
        self._fake_errors: list[str] = []
        self._requests: list[dict] = []
        self._limit_count, self._limit_count_retry, self._limit_count_paths = 0, 1, None
        self._storm_until, self._storm_retry, self._storm_paths = 0.0, 1, None
        self._misbehaviours: list[tuple[str, t.Pattern[str], t.Callable[..., None]]] = []
        self._jwt_key = secrets.token_bytes(32)

        self._tmpdir: str | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self.ca_pem_path = ''
        self.base_url = ''
        self.port = 0
        self._keys.append(self._new_encryption_key('KsefTokenEncryption'))
        self._keys.append(self._new_encryption_key('SymmetricKeyEncryption'))

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> 'FakeKsef':
        if self._server is not None:
            raise RuntimeError('already started')
        self._tmpdir = tempfile.mkdtemp(prefix='fake-ksef-')
        context = self._make_tls()
        self._server = _Server(self, context)
        self.port = self._server.server_address[1]
        self.base_url = 'https://127.0.0.1:%d%s' % (self.port, self.spec.base_path)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={'poll_interval': 0.05},
                                        name='fake-ksef-%d' % self.port, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close every connection, remove the temporary files; raise if the fake misbehaved."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
            with self._lock:
                connections = list(self._connections)
                self._connections.clear()
            for connection in connections:
                try:
                    connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                try:
                    connection.close()
                except OSError:
                    pass
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._tmpdir:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None
        self.check()

    def check(self) -> None:
        """Raise FakeKsefError when one of the fake's own responses broke the contract or a handler crashed."""
        with self._lock:
            errors = list(self._fake_errors)
        if errors:
            raise FakeKsefError('the fake KSeF API misbehaved (a bug of tests/fakes/ksef_api.py):\n' + '\n'.join(errors))

    def __enter__(self) -> 'FakeKsef':
        return self.start()

    def __exit__(self, *exc_info: t.Any) -> None:
        self.stop()

    # ---------------------------------------------------------------- seeding

    def grant(self, context: t.Any, subject: t.Any, permissions: t.Iterable[str]) -> None:
        """Give `subject` (('Nip'|'Pesel'|'Fingerprint', value)) `permissions` in `context` (added to any it has).

        Only explicit grants count: the owner of a NIP has no implicit permissions in the fake.
        """
        context, subject = context_id(context), subject_id(subject)
        permissions = self._check_permissions(permissions)
        if context[0] not in self.spec.context_types:
            raise ValueError('unknown context type %r (spec: %s)' % (context[0], self.spec.context_types))
        with self._lock:
            self._grants.setdefault(context, {}).setdefault(subject, set()).update(permissions)

    def revoke_grants(self, context: t.Any, subject: t.Any, permissions: t.Iterable[str] | None = None) -> None:
        """Take `permissions` (all when None) away from `subject` in `context`."""
        context, subject = context_id(context), subject_id(subject)
        with self._lock:
            held = self._grants.get(context, {}).get(subject, set())
            if permissions is None:
                held.clear()
            else:
                held.difference_update(permissions)

    def grants(self, context: t.Any, subject: t.Any) -> list[str]:
        with self._lock:
            return sorted(self._grants.get(context_id(context), {}).get(subject_id(subject), set()))

    def add_token(self, context: t.Any, author: t.Any, permissions: t.Iterable[str], description: str = 'Token testowy',
                  status: str = ACTIVE, created: datetime.datetime | None = None, grant_author: bool = True) -> tuple[str, str]:
        """Seed one KSeF token; return (referenceNumber, secret).

        With grant_author (default) the author is also granted the token's permissions in the
        context, so that authenticating with the token works (effective permissions of a token
        session = the token's permissions held by its author at that time).
        """
        context, author = context_id(context), subject_id(author)
        permissions = self._check_permissions(permissions)
        if status not in (PENDING, ACTIVE, REVOKING, REVOKED, FAILED):
            raise ValueError('unknown token status %r' % status)
        if grant_author:
            self.grant(context, author, permissions)
        with self._lock:
            token = self._new_token(context, author, permissions, description, created or utcnow())
            token.status = status
            return token.reference_number, token.secret

    def populate_tokens(self, count: int, context: t.Any, author: t.Any, permissions: t.Iterable[str],
                        description: str = 'Token {i:04d}', statuses: t.Sequence[str] = (ACTIVE,)) -> list[str]:
        """Seed `count` tokens, one second apart in dateCreated (token 0 the newest); statuses cycle.

        `description` is a format string with {i}. Returns their reference numbers, newest first.
        """
        permissions = list(permissions)
        start = utcnow()
        refs = []
        for index in range(count):
            created = start - datetime.timedelta(seconds=index + 1)
            refs.append(self.add_token(context, author, permissions, description.format(i=index), status=statuses[index % len(statuses)],
                                       created=created, grant_author=index == 0)[0])
        return refs

    def set_token_status(self, reference_number: str, status: str, details: t.Sequence[str] = ()) -> None:
        with self._lock:
            token = self._tokens[reference_number]
            token.status, token.status_details, token.reads = status, list(details), 0

    def add_enforcement_authority(self, context: t.Any) -> None:
        """Let tokens with EnforcementOperations activate in `context` (elsewhere they end Failed)."""
        with self._lock:
            self._enforcement_authorities.add(context_id(context))

    def trust_ca(self, certificate: x509.Certificate) -> None:
        """A CA whose certificates pass ?verifyCertificateChain=true (nothing is trusted otherwise)."""
        with self._lock:
            self._trusted_cas.append(certificate)

    # ---------------------------------------------------------------- controls

    def rate_limit(self, count: int = 1, retry_after: int = 1, paths: t.Sequence[str] | None = None) -> None:
        """Answer the next `count` requests (optionally only those whose spec path starts with one
        of `paths`, e.g. ['/tokens']) with 429 and Retry-After: retry_after."""
        with self._lock:
            self._limit_count, self._limit_count_retry, self._limit_count_paths = count, int(retry_after), paths

    def rate_limit_storm(self, seconds: float, retry_after: int = 1, paths: t.Sequence[str] | None = None) -> None:
        """Answer every request (optionally only under `paths`) with 429 for the next `seconds`."""
        with self._lock:
            self._storm_until, self._storm_retry, self._storm_paths = time.time() + seconds, int(retry_after), paths

    def misbehave(self, method: str, path: str, behaviour: t.Callable[..., None]) -> None:
        """Answer ``method`` requests whose path (after the ``/v2`` prefix) matches the regex ``path`` with
        ``behaviour(handler, ctx)`` instead of the contract: a hostile server (see ksef_hostile.py). The request
        is not validated or recorded by the fake; ``fake.dispatch(ctx)`` gives the contract's answer."""
        with self._lock:
            self._misbehaviours.append((method.upper(), re.compile(path), behaviour))

    def behave(self) -> None:
        """Forget every misbehave()."""
        with self._lock:
            self._misbehaviours.clear()

    def misbehaviour(self, ctx: '_Ctx') -> t.Callable[..., None] | None:
        path = ctx.path[len(self.spec.base_path):] if ctx.path.startswith(self.spec.base_path) else ctx.path
        with self._lock:
            for method, pattern, behaviour in self._misbehaviours:
                if method == ctx.method.upper() and pattern.fullmatch(path):
                    return behaviour
        return None

    def clear_rate_limits(self) -> None:
        with self._lock:
            self._limit_count, self._storm_until = 0, 0.0

    def expire_challenges(self) -> None:
        """Every challenge issued so far is past its validity (answered 400/21111 when used)."""
        with self._lock:
            for challenge in self._challenges.values():
                challenge.expires = 0.0

    def expire_access_tokens(self) -> None:
        """Every access token issued so far is expired (401); refresh tokens still work."""
        with self._lock:
            for token, entry in list(self._access_tokens.items()):
                self._access_tokens[token] = (entry[0], 0.0)

    def rotate_token_encryption_key(self, keep_old: bool = False) -> str:
        """A new KsefTokenEncryption key; the old one is withdrawn (21470) unless keep_old. Returns the new publicKeyId."""
        new_key = self._new_encryption_key('KsefTokenEncryption')
        with self._lock:
            if not keep_old:
                self._keys = [key for key in self._keys if key.usage != 'KsefTokenEncryption']
            self._keys.append(new_key)
        return new_key.public_key_id

    # ---------------------------------------------------------------- inspection

    def violations(self) -> list[dict]:
        """Requests that broke the contract: dicts with method, path, kind, errors."""
        with self._lock:
            return copy.deepcopy(self._violations)

    def clear_violations(self) -> None:
        with self._lock:
            self._violations.clear()

    def unimplemented(self) -> list[dict]:
        """Valid requests to spec operations the fake does not implement (answered 400/99001)."""
        with self._lock:
            return copy.deepcopy(self._unimplemented)

    def fake_errors(self) -> list[str]:
        with self._lock:
            return list(self._fake_errors)

    def requests(self) -> list[dict]:
        """Every request seen: method, path (with the /v2 prefix), template, query, status."""
        with self._lock:
            return copy.deepcopy(self._requests)

    def sessions(self) -> list[dict]:
        """Authentication operations (one per auth attempt): status, method, closed, redeemed, ..."""
        with self._lock:
            return [operation.summary() for operation in self._operations.values()]

    def tokens(self, context: t.Any = None) -> list[dict]:
        """The fake's tokens (with their secrets), newest first."""
        with self._lock:
            wanted = context_id(context) if context is not None else None
            items = [token.public() for token in self._sorted_tokens() if wanted is None or token.context == wanted]
        return items

    def token(self, reference_number: str) -> dict:
        with self._lock:
            return self._tokens[reference_number].public()

    def public_key_ids(self, usage: str = 'KsefTokenEncryption') -> list[str]:
        with self._lock:
            return [key.public_key_id for key in self._keys if key.usage == usage]

    # ---------------------------------------------------------------- internals: crypto

    def _make_tls(self) -> ssl.SSLContext:
        """A throwaway CA and a server certificate for 127.0.0.1/localhost, written to the temp dir."""
        now = utcnow()
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, 'tokenfleet.pki fake KSeF test CA')])
        ca_cert = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=2))
                   .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                   .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                                                encipher_only=False, decipher_only=False), critical=True)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
                   .sign(ca_key, hashes.SHA256()))
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, '127.0.0.1')])).issuer_name(ca_name)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address('127.0.0.1')),
                                                            x509.DNSName('localhost')]), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
                .sign(ca_key, hashes.SHA256()))
        assert self._tmpdir
        self.ca_pem_path = os.path.join(self._tmpdir, 'ca.pem')
        cert_path, key_path = os.path.join(self._tmpdir, 'server.pem'), os.path.join(self._tmpdir, 'server.key')
        with open(self.ca_pem_path, 'wb') as handle:
            handle.write(ca_cert.public_bytes(serialization.Encoding.PEM))
        with open(cert_path, 'wb') as handle:
            handle.write(cert.public_bytes(serialization.Encoding.PEM))
        with open(key_path, 'wb') as handle:
            handle.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(cert_path, key_path)
        return context

    @staticmethod
    def _new_encryption_key(usage: str) -> _EncryptionKey:
        """An RSA-2048 key with a self-signed certificate "CN=Ministerstwo Finansów" (like the real ones)."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        now = utcnow()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, 'Ministerstwo Finansów'),
                          x509.NameAttribute(NameOID.ORGANIZATION_NAME, 'fake KSeF (tokenfleet.pki tests)')])
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=730))
                .sign(key, hashes.SHA256()))
        spki = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        # publicKeyId: Base64 of the SHA-256 of the SubjectPublicKeyInfo DER (44 characters, research 3.4)
        return _EncryptionKey(key, cert, usage, _b64(hashlib.sha256(spki).digest()))

    def _jwt(self, claims: dict) -> str:
        header = _b64url(json.dumps({'alg': 'HS256', 'typ': 'JWT'}).encode())
        payload = _b64url(json.dumps(claims, ensure_ascii=False).encode('utf-8'))
        signature = _b64url(hmac.new(self._jwt_key, ('%s.%s' % (header, payload)).encode(), hashlib.sha256).digest())
        return '%s.%s.%s' % (header, payload, signature)

    @staticmethod
    def _reference(kind: str) -> str:
        """A 36-character reference number like 20250514-AU-2DFC46C000-3AC6D5877F-D4."""
        return '%s-%s-%s-%s-%s' % (utcnow().strftime('%Y%m%d'), kind, secrets.token_hex(5).upper(),
                                   secrets.token_hex(5).upper(), secrets.token_hex(1).upper())

    # ---------------------------------------------------------------- internals: state helpers

    def _check_permissions(self, permissions: t.Iterable[str]) -> list[str]:
        permissions = list(dict.fromkeys(permissions))
        unknown = [name for name in permissions if name not in self.spec.permissions]
        if unknown:
            raise ValueError('unknown permission(s) %s (spec TokenPermissionType: %s)' % (unknown, self.spec.permissions))
        return permissions

    def _held(self, context: Identifier, subject: Identifier | None) -> set[str]:
        if subject is None:
            return set()
        return set(self._grants.get(context, {}).get(subject, set()))

    def _new_token(self, context: Identifier, author: Identifier, permissions: list[str], description: str,
                   created: datetime.datetime) -> _Token:
        ref = self._reference('EC')
        kind = 'nip' if context[0] == 'Nip' else context[0][0].lower() + context[0][1:]
        # Shape of the spec's example: {referenceNumber}|{contextType}-{contextValue}|{64 hex}
        secret = '%s|%s-%s|%s' % (ref, kind, context[1], secrets.token_hex(32))
        token = _Token(ref, secret, context, author, description, list(permissions), created)
        self._tokens[ref] = token
        self._secrets[secret] = ref
        return token

    def _sorted_tokens(self) -> list[_Token]:
        return sorted(self._tokens.values(), key=lambda token: (token.created, token.reference_number), reverse=True)

    def _advance(self, token: _Token, reading: bool = True) -> None:
        """Pending -> Active (or Failed) once `token_activation_reads` status reads answered Pending;
        Revoking -> Revoked once `token_revocation_reads` answered Revoking. Called before a status
        read is answered (reading=True) and right after creation/revocation (reading=False)."""
        if token.status not in (PENDING, REVOKING):
            return
        limit = self.token_activation_reads if token.status == PENDING else self.token_revocation_reads
        if token.reads < limit:
            token.reads += 1 if reading else 0
            return
        if token.status == REVOKING:
            token.status = REVOKED
        elif 'EnforcementOperations' in token.permissions and token.context not in self._enforcement_authorities:
            # research-ksef.md 4 (CIRFMF/ksef-api#520): activation fails outside enforcement authorities
            token.status, token.status_details = FAILED, ['Context identifier is not enforcement authority.']
        else:
            token.status = ACTIVE

    def _take_rate_limit(self, template: str) -> int | None:
        def matches(paths: t.Sequence[str] | None) -> bool:
            return paths is None or any(template.startswith(prefix) for prefix in paths)
        with self._lock:
            if time.time() < self._storm_until and matches(self._storm_paths):
                return self._storm_retry
            if self._limit_count > 0 and matches(self._limit_count_paths):
                self._limit_count -= 1
                return self._limit_count_retry
        return None

    def track_connection(self, connection: socket.socket, is_open: bool) -> None:
        """Called by the HTTP server: connections still open are shut down by stop()."""
        with self._lock:
            if is_open:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)

    def _record_fake_error(self, message: str) -> None:
        with self._lock:
            self._fake_errors.append(message)
        sys.stderr.write('FAKE KSEF BUG: %s\n' % message)

    # ---------------------------------------------------------------- internals: replies

    def _trace(self) -> str:
        return secrets.token_hex(16)

    def _error_reply(self, ctx: _Ctx, fail: _Fail) -> _Reply:
        now = iso(utcnow())
        if fail.status == 400:
            errors = [{'code': fail.code, 'description': self.spec.codes[fail.code], 'details': list(fail.details)}]
            if ctx.problem:
                return _json_reply(400, {'title': 'Bad Request', 'status': 400, 'instance': ctx.path, 'detail': 'Żądanie jest nieprawidłowe.',
                                         'errors': errors, 'timestamp': now, 'traceId': self._trace()}, 'application/problem+json')
            return _json_reply(400, {'exception': {
                'exceptionDetailList': [{'exceptionCode': fail.code, 'exceptionDescription': self.spec.codes[fail.code],
                                         'details': list(fail.details)}],
                'referenceNumber': str(uuid.uuid4()), 'serviceCode': '00-%s-%s-00' % (self._trace(), secrets.token_hex(8)),
                'serviceCtx': 'srvFAKE', 'serviceName': 'FakeKsef', 'timestamp': now}})
        if fail.status == 401:
            return _json_reply(401, {'title': 'Unauthorized', 'status': 401, 'detail': fail.detail or 'Wymagane jest uwierzytelnienie.',
                                     'instance': ctx.path, 'traceId': self._trace(), 'timestamp': now}, 'application/problem+json')
        if fail.status == 403:
            return _json_reply(403, {'title': 'Forbidden', 'status': 403, 'detail': fail.detail, 'instance': ctx.path,
                                     'reasonCode': fail.reason, 'security': fail.security, 'traceId': self._trace(),
                                     'timestamp': now}, 'application/problem+json')
        raise FakeKsefError('no error shape for status %s' % fail.status)

    def _too_many_requests(self, ctx: _Ctx, retry_after: int) -> _Reply:
        limits = self.spec.operation(ctx.method.lower(), ctx.template).get('x-rate-limits', {}) if ctx.template else {}
        if 'perMinute' in limits:
            message = 'Przekroczono limit %d żądań na minutę. Spróbuj ponownie po %d sekundach.' % (limits['perMinute'], retry_after)
        else:
            message = 'Przekroczono limit %d żądań na sekundę. Spróbuj ponownie po %d sekundach.' % (limits.get('perSecond', 60), retry_after)
        if ctx.problem:
            reply = _json_reply(429, {'title': 'Too Many Requests', 'status': 429, 'instance': ctx.path, 'detail': message,
                                      'timestamp': iso(utcnow()), 'traceId': self._trace()}, 'application/problem+json')
        else:
            reply = _json_reply(429, {'status': {'code': 429, 'description': 'Too Many Requests', 'details': [message]}})
        reply.headers.append(('Retry-After', str(retry_after)))
        return reply

    # ---------------------------------------------------------------- request dispatch

    def dispatch(self, ctx: _Ctx) -> _Reply:
        """Validate, route, answer and validate the answer. Called by the HTTP handler."""
        record = {'method': ctx.method, 'path': ctx.path, 'template': None, 'query': list(ctx.query), 'status': None,
                  'at': time.monotonic()}
        with self._lock:
            self._requests.append(record)
        try:
            found = self.spec.finder.find(ctx.method.lower(), self.spec.host_url + ctx.path)
        except (PathNotFound, OperationNotFound, ServerNotFound) as exc:
            self._violation(ctx, 'unknown-operation', [str(exc)])
            reply = self._error_reply(ctx, _Fail(400, 21405, ['%s %s is not an operation of the KSeF API' % (ctx.method, ctx.path)]))
            reply.validate = False          # there is no operation to validate the answer against
            record['status'] = reply.status
            return reply
        ctx.template = found.path_result.pattern
        ctx.path_params = dict(found.path_result.variables)
        record['template'] = ctx.template
        oreq = _OpenApiRequest(self.spec, ctx)
        with self.spec.lock, warnings.catch_warnings():
            warnings.simplefilter('ignore', DeprecationWarning)     # "The schema is deprecated" (ExceptionResponse)
            result = self.spec.api.unmarshal_request(oreq)
        errors = list(result.errors)
        ctx.params = result.parameters
        if errors:
            self._violation(ctx, 'request', _error_messages(errors))
        retry_after = self._take_rate_limit(ctx.template)
        try:
            if retry_after is not None:
                reply = self._too_many_requests(ctx, retry_after)
            elif any(isinstance(error, SecurityValidationError) for error in errors):
                reply = self._error_reply(ctx, _Fail(401, detail='Brak lub niepoprawny nagłówek Authorization: Bearer.'))
            elif errors:
                reply = self._error_reply(ctx, _Fail(400, 21405, _error_messages(errors)))
            else:
                reply = self._route(ctx)
        except _Fail as fail:
            reply = self._error_reply(ctx, fail)
        except Exception:  # pylint: disable=broad-exception-caught
            self._record_fake_error('%s %s crashed:\n%s' % (ctx.method, ctx.path, traceback.format_exc()))
            reply = _Reply(500, b'fake KSeF crashed, see stderr', 'text/plain', validate=False)
        warning = ctx.headers.get('X-Test-System-Warning')
        if warning:
            # X-System-Warning: the value of X-Test-System-Warning, ASCII-folded (spec SystemWarning)
            reply.headers.append(('X-System-Warning', warning.encode('ascii', 'replace').decode('ascii')))
        if reply.validate:
            reply = self._validate_reply(ctx, oreq, reply)
        record['status'] = reply.status
        return reply

    def _violation(self, ctx: _Ctx, kind: str, errors: list[str]) -> None:
        with self._lock:
            self._violations.append({'method': ctx.method, 'path': ctx.path, 'template': ctx.template or None, 'kind': kind,
                                     'errors': errors})

    def _validate_reply(self, ctx: _Ctx, oreq: _OpenApiRequest, reply: _Reply) -> _Reply:
        with self.spec.lock, warnings.catch_warnings():
            warnings.simplefilter('ignore', DeprecationWarning)
            # validation only (unmarshalling a 100-token page costs ~30 times more)
            errors = list(self.spec.api.iter_response_errors(oreq, _OpenApiResponse(reply)))
        if errors:
            self._record_fake_error('response %s to %s %s breaks the contract: %s; body: %s' % (
                reply.status, ctx.method, ctx.path, '; '.join(_error_messages(errors)), reply.body[:500]))
            return _Reply(500, b'fake KSeF produced an invalid response, see stderr', 'text/plain', validate=False)
        return reply

    def _route(self, ctx: _Ctx) -> _Reply:
        routes = {
            ('post', '/auth/challenge'): self._op_challenge,
            ('get', '/security/public-key-certificates'): self._op_public_keys,
            ('post', '/auth/ksef-token'): self._op_auth_ksef_token,
            ('post', '/auth/xades-signature'): self._op_auth_xades,
            ('get', '/auth/{referenceNumber}'): self._op_auth_status,
            ('post', '/auth/token/redeem'): self._op_redeem,
            ('post', '/auth/token/refresh'): self._op_refresh,
            ('delete', '/auth/sessions/current'): self._op_close_current_session,
            ('post', '/tokens'): self._op_generate_token,
            ('get', '/tokens'): self._op_list_tokens,
            ('get', '/tokens/{referenceNumber}'): self._op_token_status,
            ('delete', '/tokens/{referenceNumber}'): self._op_revoke_token,
        }
        handler = routes.get((ctx.method.lower(), ctx.template))
        if handler is None:
            with self._lock:
                self._unimplemented.append({'method': ctx.method, 'path': ctx.path, 'template': ctx.template})
            raise _Fail(400, FAKE_NOT_IMPLEMENTED, ['%s %s' % (ctx.method, ctx.template)])
        return handler(ctx)

    def _json_body(self, ctx: _Ctx) -> dict:
        """The JSON body (already validated by openapi-core when present)."""
        if not ctx.body:
            # The spec does not mark these request bodies "required", so openapi-core accepts an
            # empty one; but their schemas have required properties, so it is recorded as a violation.
            self._violation(ctx, 'request', ['request body missing (its schema has required properties)'])
            raise _Fail(400, 21405, ['Brak treści żądania.'])
        return json.loads(ctx.body)

    # ---------------------------------------------------------------- operations: authentication

    def _op_challenge(self, ctx: _Ctx) -> _Reply:
        now_ns = time.time_ns()
        moment = datetime.datetime.fromtimestamp(now_ns // 10**9, datetime.timezone.utc)
        # 7 fractional digits, like KSeF; timestampMs is the truncated millisecond (research 3.3)
        stamp = '%s.%07d+00:00' % (moment.strftime('%Y-%m-%dT%H:%M:%S'), (now_ns // 100) % 10**7)
        value = '%s-CR-%s-%s-%s' % (moment.strftime('%Y%m%d'), secrets.token_hex(5).upper(), secrets.token_hex(5).upper(),
                                    secrets.token_hex(1).upper())
        challenge = _Challenge(value, now_ns // 10**6, time.time() + self.challenge_ttl)
        with self._lock:
            self._challenges[value] = challenge
        return _json_reply(200, {'challenge': value, 'timestamp': stamp, 'timestampMs': challenge.timestamp_ms, 'clientIp': ctx.client_ip})

    def _op_public_keys(self, ctx: _Ctx) -> _Reply:  # pylint: disable=unused-argument
        with self._lock:
            now = utcnow()
            entries = [key.entry() for key in self._keys
                       if key.certificate.not_valid_before_utc <= now <= key.certificate.not_valid_after_utc]
        return _json_reply(200, entries)

    def _take_challenge(self, value: str) -> _Challenge:
        """The challenge, once: unknown, used or expired -> 400/21111."""
        with self._lock:
            challenge = self._challenges.get(value)
            if challenge is None:
                raise _Fail(400, 21111, ['Nieznane wyzwanie %s.' % value])
            if challenge.used:
                raise _Fail(400, 21111, ['Wyzwanie %s zostało już wykorzystane.' % value])
            if time.time() > challenge.expires:
                # expiry answered synchronously with 21111: the fake's choice (not documented)
                raise _Fail(400, 21111, ['Wyzwanie %s wygasło.' % value])
            challenge.used = True
            return challenge

    @staticmethod
    def _check_context_value(context: Identifier) -> None:
        kind, value = context
        if kind == 'Nip' and not nip_is_valid(value):
            raise _Fail(400, 21405, ['Nieprawidłowy NIP: %s.' % value])
        if kind == 'InternalId' and not (INTERNAL_ID_RE.match(value) and nip_is_valid(value[:10])):
            raise _Fail(400, 21405, ['Nieprawidłowy identyfikator wewnętrzny: %s.' % value])

    def _new_operation(self, ctx: _Ctx, context: Identifier, subject: Identifier | None, method: str,
                       outcome: tuple[int, list[str]], permissions: t.Iterable[str] = (), token_reference: str | None = None,
                       allowed_ips: dict | None = None) -> _Reply:
        ref = self._reference('AU')
        expires = time.time() + self.authentication_token_ttl
        jwt = self._jwt({'token-type': 'OperationToken', 'operation-reference-number': ref, 'iat': int(time.time()),
                         'exp': int(expires), 'iss': 'fake-ksef', 'aud': 'fake-ksef'})
        operation = _AuthOperation(ref, utcnow(), context, subject, method, outcome, max(0, int(self.auth_pending_polls)), jwt, expires,
                                   ctx.client_ip, token_reference, frozenset(permissions), allowed_ips)
        with self._lock:
            self._operations[ref] = operation
            self._auth_tokens[jwt] = ref
        return _json_reply(202, {'referenceNumber': ref, 'authenticationToken': {
            'token': jwt, 'validUntil': iso(datetime.datetime.fromtimestamp(expires, datetime.timezone.utc))}})

    def _op_auth_ksef_token(self, ctx: _Ctx) -> _Reply:
        body = self._json_body(ctx)
        context = (body['contextIdentifier']['type'], body['contextIdentifier']['value'])
        self._check_context_value(context)
        with self._lock:
            candidates = [key for key in self._keys if key.usage == 'KsefTokenEncryption']
            if body.get('publicKeyId'):
                key = next((key for key in candidates if key.public_key_id == body['publicKeyId']), None)
                if key is None:
                    raise _Fail(400, 21470, ['Klucz o identyfikatorze %s nie jest wspierany.' % body['publicKeyId']])
            else:
                key = max(candidates, key=lambda key: key.certificate.not_valid_before_utc)
        challenge = self._take_challenge(body['challenge'])
        allowed_ips = (body.get('authorizationPolicy') or {}).get('allowedIps')
        # What follows is asynchronous in KSeF: the outcome shows in GET /auth/{referenceNumber}.
        try:
            plain = key.key.decrypt(base64.b64decode(body['encryptedToken']),
                                    padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None))
            secret, separator, stamp = plain.decode('utf-8').rpartition('|')
        except (ValueError, UnicodeDecodeError):
            secret, separator, stamp = '', '', ''
        with self._lock:
            token = self._tokens.get(self._secrets.get(secret, '')) if separator else None
            if token is None or token.context != context:
                return self._new_operation(ctx, context, None, 'Token', (450, [ST_BAD_TOKEN]), allowed_ips=allowed_ips)
            if stamp != str(challenge.timestamp_ms):
                return self._new_operation(ctx, context, token.author, 'Token', (450, [ST_BAD_TOKEN_TIME]),
                                           token_reference=token.reference_number, allowed_ips=allowed_ips)
            if token.status in (REVOKING, REVOKED):
                outcome: tuple[int, list[str]] = (450, [ST_TOKEN_REVOKED])
            elif token.status != ACTIVE:
                outcome = (450, [ST_TOKEN_INACTIVE])
            else:
                permissions = set(token.permissions) & self._held(context, token.author)
                outcome = (200, []) if permissions else (415, [ST_NO_PERMISSIONS])
                if permissions:
                    token.last_use = utcnow()
                    return self._new_operation(ctx, context, token.author, 'Token', outcome, permissions,
                                               token.reference_number, allowed_ips)
            return self._new_operation(ctx, context, token.author, 'Token', outcome, token_reference=token.reference_number,
                                       allowed_ips=allowed_ips)

    def _op_auth_xades(self, ctx: _Ctx) -> _Reply:
        parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)
        try:
            root = etree.fromstring(ctx.body, parser)
        except etree.XMLSyntaxError as exc:
            text = str(exc)
            raise _Fail(400, 21217 if 'encoding' in text.lower() or 'utf-8' in text.lower() else 21001, [text]) from exc
        qname = etree.QName(root)
        if qname.namespace == DS_NS and qname.localname == 'Signature':
            # Enveloping signatures are accepted by KSeF; the fake implements enveloped only.
            raise _Fail(400, 9101, ['Fake KSeF: only enveloped signatures are implemented (got an enveloping one).'])
        if qname.localname != 'AuthTokenRequest' or qname.namespace not in self.spec.xsds:
            raise _Fail(400, 21401, ['Element główny %s nie jest AuthTokenRequest (%s).' % (root.tag, ', '.join(AUTH_NAMESPACES))])
        signatures = root.findall('.//{%s}Signature' % DS_NS)
        if not signatures:
            raise _Fail(400, 9102)
        if len(signatures) > 1:
            raise _Fail(400, 9103)
        if signatures[0].getparent() is not root:
            raise _Fail(400, 9101, ['ds:Signature musi być elementem podrzędnym AuthTokenRequest (podpis otaczany).'])
        # The XSD has no place for ds:Signature: the document is validated without it.
        unsigned = copy.deepcopy(root)
        for element in unsigned.findall('{%s}Signature' % DS_NS):
            unsigned.remove(element)
        schema = self.spec.xsds[qname.namespace]
        if not schema.validate(unsigned):
            raise _Fail(400, 21401, [str(error.message) for error in schema.error_log][:10])

        certificate = self._embedded_certificate(signatures[0])
        signed = self._verify_xades(ctx.body, certificate)
        ns = {'a': qname.namespace}
        challenge_value = signed.findtext('a:Challenge', namespaces=ns)
        context_element = signed.find('a:ContextIdentifier', namespaces=ns)[0]
        context = (etree.QName(context_element).localname, (context_element.text or '').strip())
        subject_type = signed.findtext('a:SubjectIdentifierType', namespaces=ns)
        allowed_ips = self._xml_allowed_ips(signed.find('a:AuthorizationPolicy/a:AllowedIps', namespaces=ns), ns)
        if context[0] in ('Nip', 'InternalId'):
            self._check_context_value(context)
        self._take_challenge((challenge_value or '').strip())

        # Asynchronous part in KSeF: certificate checks and permissions show in the status.
        subject, method, problem = self._certificate_identity(certificate, subject_type)
        now = utcnow()
        if problem:
            outcome: tuple[int, list[str]] = (460, [problem])
        elif not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
            outcome = (460, [ST_CERT_EXPIRED])
        elif (ctx.params.query.get('verifyCertificateChain') if ctx.params else False) and not self._chain_trusted(certificate):
            outcome = (460, [ST_CERT_UNTRUSTED])
        else:
            with self._lock:
                permissions = self._held(context, subject)
            outcome = (200, []) if permissions else (415, [ST_NO_PERMISSIONS])
            if permissions:
                return self._new_operation(ctx, context, subject, method, outcome, permissions, allowed_ips=allowed_ips)
        return self._new_operation(ctx, context, subject, method, outcome, allowed_ips=allowed_ips)

    @staticmethod
    def _embedded_certificate(signature: etree._Element) -> x509.Certificate:
        element = signature.find('{%s}KeyInfo/{%s}X509Data/{%s}X509Certificate' % (DS_NS, DS_NS, DS_NS))
        if element is None or not (element.text or '').strip():
            raise _Fail(400, 21115, ['Brak certyfikatu (ds:KeyInfo/ds:X509Data/ds:X509Certificate) w podpisie.'])
        try:
            return x509.load_der_x509_certificate(base64.b64decode(''.join(element.text.split())))
        except ValueError as exc:
            raise _Fail(400, 21115, ['Nieczytelny certyfikat: %s' % exc]) from exc

    @staticmethod
    def _verify_xades(document: bytes, certificate: x509.Certificate) -> etree._Element:
        """Verify the enveloped XAdES-BES signature with the embedded certificate; return the signed AuthTokenRequest."""
        public_key = certificate.public_key()
        if isinstance(public_key, rsa.RSAPublicKey) and public_key.key_size < 2048:
            raise _Fail(400, 9105, ['Klucz RSA krótszy niż 2048 bitów.'])
        if isinstance(public_key, ec.EllipticCurvePublicKey) and public_key.curve.key_size < 256:
            raise _Fail(400, 9105, ['Krzywa EC krótsza niż 256 bitów.'])
        if not isinstance(public_key, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey)):
            raise _Fail(400, 9105, ['Dozwolone są klucze RSA i ECDSA.'])
        middle = certificate.not_valid_before_utc + (certificate.not_valid_after_utc - certificate.not_valid_before_utc) / 2
        config = XAdESSignatureConfiguration(
            location='./',                  # enveloped: ds:Signature is a child of AuthTokenRequest
            expect_references=True,         # the document, SignedProperties, optionally KeyInfo
            signature_methods=frozenset(method for method in SignatureMethod if not method.name.startswith(('HMAC', 'DSA'))),
            digest_algorithms=frozenset(DigestAlgorithm),
            # XMLDSig: a same-document reference without transforms is canonicalised with C14N 1.0
            default_reference_c14n_method=CanonicalizationMethod.CANONICAL_XML_1_0,
            # validity of the certificate is judged later (status 460), not by signxml
            verification_time=middle,
        )
        try:
            results = XAdESVerifier().verify(document, x509_cert=certificate, expect_config=config)
        except (InvalidSignature, InvalidDigest, InvalidInput, InvalidCertificate, ValueError) as exc:
            raise _Fail(400, 9105, ['%s: %s' % (type(exc).__name__, exc)]) from exc
        for result in results:
            if result.signed_xml is not None and etree.QName(result.signed_xml).localname == 'AuthTokenRequest':
                return result.signed_xml
        raise _Fail(400, 9105, ['Podpis nie obejmuje dokumentu AuthTokenRequest (brak referencji URI="").'])

    @staticmethod
    def _xml_allowed_ips(element: etree._Element | None, ns: dict) -> dict | None:
        if element is None:
            return None
        return {'ip4Addresses': [e.text for e in element.findall('a:Ip4Address', namespaces=ns)],
                'ip4Ranges': [e.text for e in element.findall('a:Ip4Range', namespaces=ns)],
                'ip4Masks': [e.text for e in element.findall('a:Ip4Mask', namespaces=ns)]}

    @staticmethod
    def _certificate_identity(certificate: x509.Certificate, subject_type: str | None) -> tuple[Identifier | None, str, str]:
        """(identity, authentication method, problem) per research-ksef.md 3.2 / podpis-xades.md."""
        def attribute(oid: x509.ObjectIdentifier) -> str:
            values = certificate.subject.get_attributes_for_oid(oid)
            return str(values[0].value) if values else ''
        personal = bool(attribute(NameOID.GIVEN_NAME) or attribute(NameOID.SURNAME))
        method = 'QualifiedSignature' if personal else 'QualifiedSeal'
        if subject_type == 'certificateFingerprint':
            return ('Fingerprint', certificate_fingerprint(certificate)), method, ''
        serial, organization = attribute(NameOID.SERIAL_NUMBER), attribute(OID_ORGANIZATION_IDENTIFIER)
        if personal:
            for pattern, kind in ((SERIAL_PESEL_RE, 'Pesel'), (SERIAL_NIP_RE, 'Nip')):
                match = pattern.search(serial)
                if match:
                    return (kind, match.group('number')), method, ''
            return None, method, ST_CERT_INVALID
        match = ORG_NIP_RE.search(organization)
        if match:
            return ('Nip', match.group('number')), method, ''
        return None, method, ST_CERT_INVALID

    def _chain_trusted(self, certificate: x509.Certificate) -> bool:
        with self._lock:
            cas = list(self._trusted_cas)
        for ca in cas:
            if ca.subject == certificate.issuer:
                try:
                    certificate.verify_directly_issued_by(ca)
                    return True
                except (ValueError, TypeError, CryptoInvalidSignature):
                    continue
        return False

    def _operation_for(self, token: str | None, table: dict) -> _AuthOperation:
        with self._lock:
            ref = table.get(token or '')
            operation = self._operations.get(ref or '')
        if operation is None:
            raise _Fail(401, detail='Nieznany lub nieodpowiedni token (oczekiwany inny rodzaj tokena).')
        return operation

    def _op_auth_status(self, ctx: _Ctx) -> _Reply:
        operation = self._operation_for(ctx.bearer(), self._auth_tokens)
        if time.time() > operation.authentication_token_expires:
            raise _Fail(401, detail='Token operacji uwierzytelnienia wygasł.')
        ref = ctx.path_params['referenceNumber']
        if ref != operation.reference_number:
            raise _Fail(400, 21304, ['Operacja uwierzytelniania o numerze referencyjnym %s nie została znaleziona.' % ref])
        with self._lock:
            code = operation.current_status()
            if operation.pending_polls > 0:
                operation.pending_polls -= 1
            description = self.spec.auth_statuses[code][0]
            details = [ST_SESSION_REVOKED] if code == 425 else list(operation.outcome[1]) if code != 100 else []
            status: dict[str, t.Any] = {'code': code, 'description': description}
            if details:
                status['details'] = details
            body: dict[str, t.Any] = {
                'startDate': iso(operation.started), 'authenticationMethod': operation.method,
                'authenticationMethodInfo': dict(METHOD_INFO[operation.method]), 'status': status,
                'isTokenRedeemed': operation.redeemed,
            }
            if operation.last_refresh:
                body['lastTokenRefreshDate'] = iso(operation.last_refresh)
            if operation.redeemed:
                body['refreshTokenValidUntil'] = iso(datetime.datetime.fromtimestamp(operation.refresh_token_expires, datetime.timezone.utc))
        return _json_reply(200, body)

    def _access_token(self, operation: _AuthOperation) -> tuple[str, float]:
        expires = time.time() + self.access_token_ttl
        claims = {'token-type': 'ContextToken', 'context-identifier-type': operation.context[0],
                  'context-identifier-value': operation.context[1], 'authentication-method': operation.method,
                  'subject-details': json.dumps({'SubjectIdentifier': {'Type': operation.subject[0], 'Value': operation.subject[1]}}
                                                if operation.subject else {}),
                  'per': json.dumps(sorted(operation.permissions)), 'jti': secrets.token_hex(8),
                  'iat': int(time.time()), 'exp': int(expires), 'iss': 'fake-ksef', 'aud': 'fake-ksef'}
        token = self._jwt(claims)
        self._access_tokens[token] = (operation.reference_number, expires)
        return token, expires

    def _op_redeem(self, ctx: _Ctx) -> _Reply:
        operation = self._operation_for(ctx.bearer(), self._auth_tokens)
        with self._lock:
            if operation.redeemed:
                raise _Fail(400, 21301, ['Tokeny dla operacji uwierzytelniania %s zostały już pobrane.' % operation.reference_number])
            code = operation.current_status()
            if code != 200:
                raise _Fail(400, 21301, ['Status uwierzytelniania (%d) nie pozwala na pobranie tokenów.' % code])
            if operation.token_reference and self._tokens[operation.token_reference].status in (REVOKING, REVOKED):
                raise _Fail(400, 21301, ['Token KSeF został unieważniony.'])
            operation.redeemed = True
            access, access_expires = self._access_token(operation)
            operation.refresh_token_expires = time.time() + self.refresh_token_ttl
            operation.refresh_token = self._jwt({'token-type': 'RefreshToken', 'operation-reference-number': operation.reference_number,
                                                 'jti': secrets.token_hex(8), 'iat': int(time.time()),
                                                 'exp': int(operation.refresh_token_expires), 'iss': 'fake-ksef', 'aud': 'fake-ksef'})
            self._refresh_tokens[operation.refresh_token] = operation.reference_number
        return _json_reply(200, {
            'accessToken': {'token': access, 'validUntil': iso(datetime.datetime.fromtimestamp(access_expires, datetime.timezone.utc))},
            'refreshToken': {'token': operation.refresh_token,
                             'validUntil': iso(datetime.datetime.fromtimestamp(operation.refresh_token_expires, datetime.timezone.utc))}})

    def _op_refresh(self, ctx: _Ctx) -> _Reply:
        operation = self._operation_for(ctx.bearer(), self._refresh_tokens)
        with self._lock:
            if time.time() > operation.refresh_token_expires:
                raise _Fail(401, detail='Refresh token wygasł.')
            code = operation.current_status()
            if code != 200:
                raise _Fail(400, 21301, ['Status uwierzytelniania (%d) nie pozwala na odświeżenie tokenu dostępowego.' % code])
            if operation.token_reference and self._tokens[operation.token_reference].status in (REVOKING, REVOKED):
                raise _Fail(400, 21301, ['Token KSeF został unieważniony.'])
            access, expires = self._access_token(operation)
            operation.last_refresh = utcnow()
        return _json_reply(200, {'accessToken': {'token': access, 'validUntil': iso(datetime.datetime.fromtimestamp(expires, datetime.timezone.utc))}})

    def _op_close_current_session(self, ctx: _Ctx) -> _Reply:
        token = ctx.bearer() or ''
        with self._lock:
            ref = self._refresh_tokens.get(token)
            if ref is None and token in self._access_tokens and time.time() <= self._access_tokens[token][1]:
                ref = self._access_tokens[token][0]
        if ref is None:
            raise _Fail(401, detail='Wymagany access token lub refresh token.')
        with self._lock:
            # The refresh token stops working; issued access tokens stay valid until they expire (spec).
            self._operations[ref].closed = True
        return _Reply(204)

    # ---------------------------------------------------------------- operations: tokens

    def _session(self, ctx: _Ctx) -> _AuthOperation:
        """The authentication behind a valid access token (401 otherwise; 403 ip-not-allowed)."""
        token = ctx.bearer() or ''
        with self._lock:
            ref, expires = self._access_tokens.get(token, (None, 0.0))
            operation = self._operations.get(ref or '')
        if operation is None:
            raise _Fail(401, detail='Nieznany token dostępu (wymagany accessToken).')
        if time.time() > expires:
            raise _Fail(401, detail='Token dostępu wygasł.')
        if operation.allowed_ips and not _ip_allowed(ctx.client_ip, operation.allowed_ips):
            raise _Fail(403, detail='Żądanie pochodzi z adresu IP innego niż wskazany podczas uwierzytelnienia.',
                        reason='ip-not-allowed', security={'clientIp': ctx.client_ip})
        return operation

    def _op_generate_token(self, ctx: _Ctx) -> _Reply:
        operation = self._session(ctx)
        body = self._json_body(ctx)
        requested = list(dict.fromkeys(body['permissions']))
        if operation.context[0] not in TOKEN_CONTEXT_TYPES:
            raise _Fail(400, 26002, ['Bieżący typ kontekstu: %s; dozwolone: %s.' % (operation.context[0], ', '.join(TOKEN_CONTEXT_TYPES))])
        if operation.method == 'Token' and not self.token_sessions_can_generate:
            # The fake's reading of the product manual (seeds/002): a session authenticated with a
            # KSeF token cannot generate tokens. Undocumented in the spec (research-ksef.md 4.1);
            # answered with the spec's generic reason code for this situation.
            raise _Fail(403, detail='Ta operacja nie jest dostępna dla użytej metody uwierzytelnienia.',
                        reason='auth-method-not-allowed', security={'authenticationMethodCategory': 'Token'})
        missing = [name for name in requested if name not in operation.permissions]
        if missing:
            raise _Fail(400, 26001, ['Brakujące uprawnienia: %s.' % ', '.join(missing)])
        with self._lock:
            author = operation.subject if operation.method != 'Token' else self._tokens[operation.token_reference].author
            token = self._new_token(operation.context, author, requested, body['description'], utcnow())
            self._advance(token, reading=False)
        return _json_reply(202, {'referenceNumber': token.reference_number, 'token': token.secret})

    def _visible(self, operation: _AuthOperation, token: _Token) -> bool:
        """Scope of GET/DELETE without CredentialsManage/Read (spec GET /tokens description)."""
        if token.context != operation.context:
            return False
        if operation.method == 'Token':
            return token.reference_number == operation.token_reference
        return token.author == operation.subject

    def _op_list_tokens(self, ctx: _Ctx) -> _Reply:
        operation = self._session(ctx)
        query = ctx.params.query
        statuses = set(query.get('status') or [])
        description = (query.get('description') or '').casefold()
        author_value = (query.get('authorIdentifier') or '').casefold()
        author_type = query.get('authorIdentifierType')
        page_size = query.get('pageSize', 10)
        filters = json.dumps([sorted(statuses), description, author_value, author_type])
        digest = hashlib.sha256(filters.encode()).hexdigest()[:16]
        cursor = None
        continuation = ctx.headers.get('x-continuation-token')
        if continuation:
            try:
                state = json.loads(base64.b64decode(continuation, validate=True))
                cursor = (datetime.datetime.fromisoformat(state['d']), state['r'])
                if state['f'] != digest:
                    raise ValueError('continuation token of another query')
            except (ValueError, KeyError, TypeError) as exc:
                raise _Fail(400, 21418, [str(exc)]) from exc
        everything = operation.permissions & {CREDENTIALS_MANAGE, CREDENTIALS_READ}
        with self._lock:
            selected = []
            for token in self._sorted_tokens():
                if token.context != operation.context or (not everything and not self._visible(operation, token)):
                    continue
                if statuses and token.status not in statuses:
                    continue
                if description and description not in token.description.casefold():
                    continue
                if author_value and author_value not in token.author[1].casefold():
                    continue
                if author_type and token.author[0] != author_type:
                    continue
                if cursor and (token.created, token.reference_number) >= cursor:
                    continue
                selected.append(token)
            page, more = selected[:page_size], len(selected) > page_size
            items = [token.item() for token in page]
        body: dict[str, t.Any] = {'tokens': items}
        if more:
            last = page[-1]
            body['continuationToken'] = _b64(json.dumps({'d': last.created.isoformat(), 'r': last.reference_number, 'f': digest}).encode())
        return _json_reply(200, body)

    def _find_token(self, operation: _AuthOperation, ref: str) -> _Token:
        token = self._tokens.get(ref)
        if token is None or token.context != operation.context:
            raise _Fail(400, FAKE_TOKEN_NOT_FOUND, ['Token %s nie istnieje w kontekście %s %s.' % (ref, operation.context[0], operation.context[1])])
        return token

    def _op_token_status(self, ctx: _Ctx) -> _Reply:
        operation = self._session(ctx)
        with self._lock:
            token = self._find_token(operation, ctx.path_params['referenceNumber'])
            if not operation.permissions & {CREDENTIALS_MANAGE, CREDENTIALS_READ} and not self._visible(operation, token):
                # The spec does not say; the fake applies the scope of GET /tokens and answers like this.
                raise _Fail(403, detail='Brak dostępu do wskazanego zasobu.', reason='insufficient-resource-access', security=None)
            self._advance(token)
            body = token.item()
        return _json_reply(200, body)

    def _op_revoke_token(self, ctx: _Ctx) -> _Reply:
        operation = self._session(ctx)
        with self._lock:
            token = self._find_token(operation, ctx.path_params['referenceNumber'])
            if CREDENTIALS_MANAGE not in operation.permissions and not self._visible(operation, token):
                # 403 per research-ksef.md 4 ("403 when out of scope"); the reason code is the fake's choice.
                raise _Fail(403, detail='Brak wymaganych uprawnień do wykonania operacji w bieżącym kontekście.',
                            reason='missing-permissions',
                            security={'requiredAnyOfPermissions': [CREDENTIALS_MANAGE], 'presentPermissions': sorted(operation.permissions)})
            if token.status not in (PENDING, ACTIVE):
                raise _Fail(400, FAKE_TOKEN_NOT_REVOCABLE, ['Token %s ma status %s.' % (token.reference_number, token.status)])
            token.status, token.reads = REVOKING, 0
            self._advance(token, reading=False)
        return _Reply(204)


def _ip_allowed(client_ip: str, policy: dict) -> bool:
    addresses = policy.get('ip4Addresses') or []
    ranges = policy.get('ip4Ranges') or []
    masks = policy.get('ip4Masks') or []
    if not (addresses or ranges or masks):
        return True
    address = ipaddress.ip_address(client_ip)
    if client_ip in addresses:
        return True
    for item in ranges:
        first, last = item.partition('-')[::2]
        if ipaddress.ip_address(first) <= address <= ipaddress.ip_address(last):
            return True
    return any(address in ipaddress.ip_network(mask, strict=False) for mask in masks)


# --------------------------------------------------------------------------------------------
# HTTP plumbing
# --------------------------------------------------------------------------------------------

class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, fake: FakeKsef, tls: ssl.SSLContext) -> None:
        self.fake = fake
        self.tls = tls
        super().__init__(('127.0.0.1', 0), _Handler)

    def get_request(self) -> tuple[socket.socket, t.Any]:
        sock, address = self.socket.accept()
        sock.settimeout(self.fake.io_timeout)
        # the TLS handshake happens in the handler thread, so a silent client cannot block accept()
        wrapped = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        self.fake.track_connection(wrapped, True)
        return wrapped, address

    def shutdown_request(self, request: t.Any) -> None:
        self.fake.track_connection(request, False)
        super().shutdown_request(request)

    def handle_error(self, request: t.Any, client_address: t.Any) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, (ssl.SSLError, ConnectionError, TimeoutError, OSError)):
            return      # clients that refuse our certificate, hang up or time out
        super().handle_error(request, client_address)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    server_version = 'FakeKSeF/2.0'
    server: _Server

    def setup(self) -> None:
        self.request.do_handshake()
        super().setup()

    def log_message(self, format: str, *args: t.Any) -> None:  # pylint: disable=redefined-builtin
        pass

    def _read_body(self) -> bytes:
        if 'chunked' in (self.headers.get('Transfer-Encoding') or '').lower():
            chunks, total = [], 0
            while True:
                size = int(self.rfile.readline(64).split(b';')[0].strip() or b'0', 16)
                if size == 0:
                    self.rfile.readline(64)
                    break
                total += size
                if total > MAX_BODY:
                    raise ValueError('request body too large')
                chunks.append(self.rfile.read(size))
                self.rfile.readline(64)
            return b''.join(chunks)
        length = int(self.headers.get('Content-Length') or 0)
        if length > MAX_BODY:
            raise ValueError('request body too large')
        return self.rfile.read(length) if length else b''

    def _handle(self) -> None:
        split = urllib.parse.urlsplit(self.path)
        try:
            body = self._read_body()
        except ValueError:
            self.send_error(413)
            return
        ctx = _Ctx(method=self.command, path=split.path, query=urllib.parse.parse_qsl(split.query, keep_blank_values=True),
                   headers=self.headers, body=body, client_ip=self.client_address[0])
        behaviour = self.server.fake.misbehaviour(ctx)
        if behaviour is not None:
            self.close_connection = True
            try:
                behaviour(self, ctx)
            except OSError:
                pass        # the client hung up: what a hostile answer is for
            return
        reply = self.server.fake.dispatch(ctx)
        self.send_response(reply.status)
        if reply.body or reply.content_type:
            self.send_header('Content-Type', reply.content_type + ('; charset=utf-8' if 'json' in reply.content_type else ''))
        self.send_header('Content-Length', str(len(reply.body)))
        for name, value in reply.headers:
            self.send_header(name, value)
        self.end_headers()
        if self.command != 'HEAD':
            self.wfile.write(reply.body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _handle


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description='Run the fake KSeF API 2.0 (HTTPS on 127.0.0.1) for manual tests.')
    parser.add_argument('--nip', default='5265877635', help='NIP of the seeded context and identity (default %(default)s)')
    parser.add_argument('--permissions', nargs='+', default=None,
                        help='permissions of the identity (default: all of the spec\'s TokenPermissionType)')
    parser.add_argument('--tokens', type=int, default=0, help='pre-populate this many tokens in the context')
    parser.add_argument('--duration', type=float, default=3600.0, help='stop after this many seconds (default %(default)s)')
    parser.add_argument('--spec-dir', default=DEFAULT_SPEC_DIR, help='directory with open-api.json and the XSDs')
    parser.add_argument('--json', action='store_true', help='print the connection details as one JSON line')
    args = parser.parse_args(argv)

    fake = FakeKsef(spec_dir=args.spec_dir)
    permissions = args.permissions or [name for name in fake.spec.permissions if name != 'EnforcementOperations']
    fake.grant(args.nip, ('Nip', args.nip), permissions)
    ref, secret = fake.add_token(args.nip, ('Nip', args.nip), permissions, 'Token z atrapy KSeF (CLI)')
    if args.tokens:
        fake.populate_tokens(args.tokens, args.nip, ('Nip', args.nip), ['InvoiceRead'])
    fake.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *args: stop.set())
    signal.signal(signal.SIGINT, lambda *args: stop.set())
    details = {'base_url': fake.base_url, 'ca_pem_path': fake.ca_pem_path, 'context': {'type': 'Nip', 'value': args.nip},
               'permissions': permissions, 'token_reference': ref, 'token': secret}
    if args.json:
        print(json.dumps(details), flush=True)
    else:
        for name, value in details.items():
            print('%-16s %s' % (name, value), flush=True)
        print('(Ctrl-C stops; a session authenticated with the token above cannot create tokens)', flush=True)
    stop.wait(args.duration)
    try:
        fake.stop()
    finally:
        for violation in fake.violations():
            print('VIOLATION %s' % json.dumps(violation, ensure_ascii=False), file=sys.stderr)
    return 0


if __name__ == '__main__':
    sys.exit(main())
