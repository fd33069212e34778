# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Proof that the fake KSeF API (tests/fakes/ksef_api.py) behaves like the official contract says.

The client side is written here, from the spec, with urllib/ssl, cryptography and signxml only
(nothing from plugins/): the token and XAdES authentication flows, token management with paging,
the permission rules, 429, expired challenges, and that contract violations (of the client) and
invalid responses (of the fake) are caught. Every test's fake must end with no violations unless
the test provoked them on purpose (the fixture asserts it).
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import hashlib
import json
import os
import re
import select
import ssl
import subprocess
import sys
import time
import typing as t
import urllib.error
import urllib.parse
import urllib.request

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID
from lxml import etree
from signxml import SignatureConstructionMethod
from signxml.xades import XAdESSigner

FAKES_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'fakes')
if FAKES_DIR not in sys.path:
    sys.path.insert(0, FAKES_DIR)

import ksef_api  # noqa: E402  pylint: disable=wrong-import-position

NIP = '5265877635'          # the spec's example NIP (valid checksum)
OTHER_NIP = '7762811692'
PESEL = '44051401359'
NIP_VAT_UE = NIP + '-DE123456789'
C14N_1_0 = 'http://www.w3.org/TR/2001/REC-xml-c14n-20010315'
EXC_C14N = 'http://www.w3.org/2001/10/xml-exc-c14n#'
ALL_BUT_ENFORCEMENT = ['InvoiceRead', 'InvoiceWrite', 'CredentialsRead', 'CredentialsManage', 'SubunitManage', 'Introspection']


# ------------------------------------------------------------------------------------------
# A small client written from the spec
# ------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Reply:
    status: int
    headers: t.Any
    json: t.Any
    raw: bytes

    def error_code(self) -> int:
        """The exception code of a 400 in either error format."""
        if 'exception' in self.json:
            return self.json['exception']['exceptionDetailList'][0]['exceptionCode']
        return self.json['errors'][0]['code']

    def error_details(self) -> list[str]:
        if 'exception' in self.json:
            return self.json['exception']['exceptionDetailList'][0]['details'] or []
        return self.json['errors'][0]['details'] or []


class Api:
    def __init__(self, fake: ksef_api.FakeKsef) -> None:
        self.base = fake.base_url
        self.tls = ssl.create_default_context(cafile=fake.ca_pem_path)

    def call(self, method: str, path: str, token: str | None = None, body: t.Any = None, xml: bytes | None = None,
             query: t.Any = None, headers: dict | None = None) -> Reply:
        url = self.base + path + ('?' + urllib.parse.urlencode(query, doseq=True) if query else '')
        data, request_headers = None, {'Accept': 'application/json'}
        if body is not None:
            data, request_headers['Content-Type'] = json.dumps(body).encode('utf-8'), 'application/json'
        if xml is not None:
            data, request_headers['Content-Type'] = xml, 'application/xml'
        if token:
            request_headers['Authorization'] = 'Bearer ' + token
        request_headers.update(headers or {})
        request = urllib.request.Request(url, data=data, method=method, headers=request_headers)
        try:
            with urllib.request.urlopen(request, context=self.tls, timeout=10) as response:
                status, reply_headers, raw = response.status, response.headers, response.read()
        except urllib.error.HTTPError as error:
            status, reply_headers, raw = error.code, error.headers, error.read()
        is_json = 'json' in (reply_headers.get('Content-Type') or '')
        return Reply(status, reply_headers, json.loads(raw) if raw and is_json else None, raw)


def encrypt_token(api: Api, secret: str, timestamp_ms: int) -> tuple[str, str]:
    """RSA-OAEP/SHA-256 of "token|timestampMs" to the KsefTokenEncryption key; (Base64, publicKeyId)."""
    entries = api.call('GET', '/security/public-key-certificates').json
    entry = next(item for item in entries if 'KsefTokenEncryption' in item['usage'])
    certificate = x509.load_der_x509_certificate(base64.b64decode(entry['certificate']))
    ciphertext = certificate.public_key().encrypt(
        ('%s|%d' % (secret, timestamp_ms)).encode('utf-8'),
        padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None))
    return base64.b64encode(ciphertext).decode('ascii'), entry['publicKeyId']


def start_token_auth(api: Api, secret: str, context: tuple[str, str] = ('Nip', NIP), timestamp_delta: int = 0,
                     policy: dict | None = None) -> Reply:
    challenge = api.call('POST', '/auth/challenge').json
    encrypted, key_id = encrypt_token(api, secret, challenge['timestampMs'] + timestamp_delta)
    body = {'challenge': challenge['challenge'], 'contextIdentifier': {'type': context[0], 'value': context[1]},
            'encryptedToken': encrypted, 'publicKeyId': key_id}
    if policy:
        body['authorizationPolicy'] = policy
    return api.call('POST', '/auth/ksef-token', body=body)


def poll(api: Api, started: Reply, limit: int = 10) -> tuple[list[int], dict]:
    """GET /auth/{referenceNumber} until the status is not 100; (codes seen, last body)."""
    codes, body = [], {}
    for dummy in range(limit):
        reply = api.call('GET', '/auth/' + started.json['referenceNumber'], token=started.json['authenticationToken']['token'])
        assert reply.status == 200, reply.json
        body = reply.json
        codes.append(body['status']['code'])
        if body['status']['code'] != 100:
            break
    return codes, body


def redeem(api: Api, started: Reply) -> dict:
    reply = api.call('POST', '/auth/token/redeem', token=started.json['authenticationToken']['token'])
    assert reply.status == 200, reply.json
    return {'access': reply.json['accessToken']['token'], 'refresh': reply.json['refreshToken']['token'],
            'reference': started.json['referenceNumber'], 'auth': started.json['authenticationToken']['token']}


def token_login(api: Api, secret: str, context: tuple[str, str] = ('Nip', NIP)) -> dict:
    started = start_token_auth(api, secret, context)
    assert started.status == 202, started.json
    codes, body = poll(api, started)
    assert codes[-1] == 200, body
    return redeem(api, started)


def make_certificate(attributes: list[tuple[x509.ObjectIdentifier, str]], key: t.Any = None, days: int = 30,
                     issuer: tuple[t.Any, x509.Certificate] | None = None, expired: bool = False) -> tuple[t.Any, x509.Certificate]:
    key = key or ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(oid, value) for oid, value in attributes])
    now = datetime.datetime.now(datetime.timezone.utc)
    if expired:
        start, end = now - datetime.timedelta(days=60), now - datetime.timedelta(days=1)
    else:
        start, end = now - datetime.timedelta(days=1), now + datetime.timedelta(days=days)
    issuer_key, issuer_name = (issuer[0], issuer[1].subject) if issuer else (key, name)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer_name).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end))
    if issuer is None and attributes and attributes[0][0] == NameOID.COMMON_NAME and attributes[0][1].endswith('CA'):
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    return key, builder.sign(issuer_key, hashes.SHA256())


def seal_certificate(nip: str = NIP, **kwargs: t.Any) -> tuple[t.Any, x509.Certificate]:
    """A company seal: organizationIdentifier VATPL-<NIP>, no givenName/surname."""
    return make_certificate([(NameOID.COMMON_NAME, 'Firma testowa'), (NameOID.ORGANIZATION_NAME, 'Firma testowa sp. z o.o.'),
                             (ksef_api.OID_ORGANIZATION_IDENTIFIER, 'VATPL-' + nip), (NameOID.COUNTRY_NAME, 'PL')], **kwargs)


def personal_certificate(serial: str = 'PNOPL-' + PESEL, **kwargs: t.Any) -> tuple[t.Any, x509.Certificate]:
    return make_certificate([(NameOID.COMMON_NAME, 'Jan Kowalski'), (NameOID.GIVEN_NAME, 'Jan'), (NameOID.SURNAME, 'Kowalski'),
                             (NameOID.SERIAL_NUMBER, serial), (NameOID.COUNTRY_NAME, 'PL')], **kwargs)


def auth_token_request(challenge: str, context: tuple[str, str] = ('Nip', NIP), subject_type: str = 'certificateSubject',
                       version: str = '2.0', policy_ips: list[str] | None = None) -> bytes:
    namespace = 'http://ksef.mf.gov.pl/auth/token/%s' % version
    policy = ''
    if policy_ips:
        policy = '<AuthorizationPolicy><AllowedIps>%s</AllowedIps></AuthorizationPolicy>' % ''.join(
            '<Ip4Address>%s</Ip4Address>' % ip for ip in policy_ips)
    return ('<?xml version="1.0" encoding="utf-8"?>\n<AuthTokenRequest xmlns="%s"><Challenge>%s</Challenge>'
            '<ContextIdentifier><%s>%s</%s></ContextIdentifier><SubjectIdentifierType>%s</SubjectIdentifierType>%s'
            '</AuthTokenRequest>' % (namespace, challenge, context[0], context[1], context[0], subject_type, policy)).encode('utf-8')


def sign_xades(document: bytes, key: t.Any, certificate: x509.Certificate, c14n: str = C14N_1_0) -> bytes:
    """Enveloped XAdES-BES with signxml (the document reference with enveloped-signature + c14n)."""
    algorithm = 'ecdsa-sha256' if isinstance(key, ec.EllipticCurvePrivateKey) else 'rsa-sha256'
    signer = XAdESSigner(method=SignatureConstructionMethod.enveloped, signature_algorithm=algorithm, digest_algorithm='sha256',
                         c14n_algorithm=c14n)
    return etree.tostring(signer.sign(etree.fromstring(document), key=key, cert=[certificate]), xml_declaration=True, encoding='utf-8')


def start_xades_auth(api: Api, key: t.Any, certificate: x509.Certificate, context: tuple[str, str] = ('Nip', NIP),
                     query: dict | None = None, **kwargs: t.Any) -> Reply:
    challenge = api.call('POST', '/auth/challenge').json['challenge']
    signed = sign_xades(auth_token_request(challenge, context, **kwargs), key, certificate)
    return api.call('POST', '/auth/xades-signature', xml=signed, query=query)


def xades_login(api: Api, key: t.Any, certificate: x509.Certificate, context: tuple[str, str] = ('Nip', NIP), **kwargs: t.Any) -> dict:
    started = start_xades_auth(api, key, certificate, context, **kwargs)
    assert started.status == 202, started.json
    codes, body = poll(api, started)
    assert codes[-1] == 200, body
    return redeem(api, started)


def list_all(api: Api, access: str, page_size: int = 100, **filters: t.Any) -> tuple[list[dict], int]:
    """Follow the continuation token (response field -> request header x-continuation-token)."""
    items, pages, continuation = [], 0, None
    while True:
        reply = api.call('GET', '/tokens', token=access, query=dict(filters, pageSize=page_size),
                         headers={'x-continuation-token': continuation} if continuation else None)
        assert reply.status == 200, reply.json
        pages += 1
        items.extend(reply.json['tokens'])
        continuation = reply.json.get('continuationToken')
        if not continuation:
            return items, pages


# ------------------------------------------------------------------------------------------
# Fixtures
# ------------------------------------------------------------------------------------------

@pytest.fixture
def fake():
    """A started fake; at the end: no contract violations by this file's client, no fake errors (stop() raises)."""
    server = ksef_api.FakeKsef()
    server.start()
    try:
        yield server
        assert server.violations() == [], 'the test client broke the contract'
    finally:
        server.stop()


@pytest.fixture
def api(fake) -> Api:
    return Api(fake)


@pytest.fixture
def seal():
    return seal_certificate()


# ------------------------------------------------------------------------------------------
# Transport, challenge, public keys
# ------------------------------------------------------------------------------------------

def test_https_with_the_throwaway_ca_and_the_spec_server_path(fake, api):
    assert re.match(r'^https://127\.0\.0\.1:\d+/v2$', fake.base_url)
    with open(fake.ca_pem_path, 'rb') as handle:
        assert x509.load_pem_x509_certificate(handle.read()).subject.rfc4514_string().startswith('CN=')
    with pytest.raises(urllib.error.URLError) as error:
        urllib.request.urlopen(urllib.request.Request(fake.base_url + '/auth/challenge', method='POST'),
                               context=ssl.create_default_context(), timeout=10)
    assert isinstance(error.value.reason, ssl.SSLCertVerificationError)
    assert api.call('POST', '/auth/challenge').status == 200


def test_challenge_and_public_key_certificates(api):
    reply = api.call('POST', '/auth/challenge')
    assert reply.status == 200
    assert re.match(r'^\d{8}-CR-[A-F0-9]{10}-[A-F0-9]{10}-[A-F0-9]{2}$', reply.json['challenge'])
    assert re.match(r'^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{7}\+00:00$', reply.json['timestamp'])
    assert abs(reply.json['timestampMs'] - time.time() * 1000) < 60000
    assert reply.json['clientIp'] == '127.0.0.1'

    entries = api.call('GET', '/security/public-key-certificates').json
    assert sorted(usage for entry in entries for usage in entry['usage']) == ['KsefTokenEncryption', 'SymmetricKeyEncryption']
    for entry in entries:
        der = base64.b64decode(entry['certificate'])
        certificate = x509.load_der_x509_certificate(der)
        spki = certificate.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        assert entry['publicKeyId'] == base64.b64encode(hashlib.sha256(spki).digest()).decode()
        assert entry['certificateId'] == base64.b64encode(hashlib.sha256(der).digest()).decode()
        assert isinstance(certificate.public_key(), rsa.RSAPublicKey) and certificate.public_key().key_size == 2048


# ------------------------------------------------------------------------------------------
# KSeF-token authentication
# ------------------------------------------------------------------------------------------

def test_full_ksef_token_flow(fake, api):
    fake.auth_pending_polls = 2
    fake.grant(NIP, ('Nip', NIP), ['InvoiceRead', 'CredentialsRead'])
    reference, secret = fake.add_token(NIP, ('Nip', NIP), ['InvoiceRead', 'CredentialsRead'], 'Program księgowy')
    other = fake.add_token(NIP, ('Pesel', PESEL), ['InvoiceRead'], 'Inny token')[0]

    started = start_token_auth(api, secret)
    assert started.status == 202
    codes, body = poll(api, started)
    assert codes == [100, 100, 200]
    assert body['authenticationMethod'] == 'Token' and body['authenticationMethodInfo']['category'] == 'Token'
    assert body['isTokenRedeemed'] is False
    session = redeem(api, started)
    assert api.call('POST', '/auth/token/redeem', token=session['auth']).error_code() == 21301   # only once

    # CredentialsRead: every token of the context is listed
    listed = api.call('GET', '/tokens', token=session['access']).json['tokens']
    assert {item['referenceNumber'] for item in listed} == {reference, other}
    assert fake.token(reference)['lastUseDate']

    refreshed = api.call('POST', '/auth/token/refresh', token=session['refresh'])
    assert refreshed.status == 200
    assert api.call('GET', '/tokens', token=refreshed.json['accessToken']['token']).status == 200
    assert api.call('GET', '/tokens', token=session['refresh']).status == 401          # a refresh token is no access token
    assert api.call('GET', '/tokens', token=session['auth']).status == 401

    assert api.call('DELETE', '/auth/sessions/current', token=session['access']).status == 204
    closed = api.call('POST', '/auth/token/refresh', token=session['refresh'])
    assert closed.status == 400 and closed.error_code() == 21301
    assert api.call('GET', '/tokens', token=session['access']).status == 200             # access tokens live until they expire
    status = api.call('GET', '/auth/' + session['reference'], token=session['auth']).json['status']
    assert status['code'] == 425
    assert [s['closed'] for s in fake.sessions()] == [True]

    fake.expire_access_tokens()
    assert api.call('GET', '/tokens', token=session['access']).status == 401


@pytest.mark.parametrize('case, expected', [
    ('wrong-token', (450, 'Nieprawidłowy token')),
    ('wrong-timestamp', (450, 'Nieprawidłowy czas tokena')),
    ('revoked', (450, 'Token unieważniony')),
    ('pending', (450, 'Token nieaktywny')),
    ('author-lost-permissions', (415, 'Brak przypisanych uprawnień')),
    ('other-context', (450, 'Nieprawidłowy token')),
])
def test_ksef_token_authentication_failures_show_in_the_status(fake, api, case, expected):
    status = {'revoked': 'Revoked', 'pending': 'Pending'}.get(case, 'Active')
    secret = fake.add_token(NIP, ('Nip', NIP), ['InvoiceRead'], 'Token do testu', status=status)[1]
    if case == 'author-lost-permissions':
        fake.revoke_grants(NIP, ('Nip', NIP))
    if case == 'other-context':
        fake.grant(OTHER_NIP, ('Nip', NIP), ['InvoiceRead'])
    started = start_token_auth(api, secret + 'x' if case == 'wrong-token' else secret,
                               context=('Nip', OTHER_NIP) if case == 'other-context' else ('Nip', NIP),
                               timestamp_delta=1 if case == 'wrong-timestamp' else 0)
    assert started.status == 202
    codes, body = poll(api, started)
    assert (codes[-1], body['status']['details'][0]) == expected
    refused = api.call('POST', '/auth/token/redeem', token=started.json['authenticationToken']['token'])
    assert refused.status == 400 and refused.error_code() == 21301
    assert 'nie pozwala na pobranie' in refused.error_details()[0]


def test_redeem_before_the_status_is_200_is_refused(fake, api):
    fake.auth_pending_polls = 3
    secret = fake.add_token(NIP, ('Nip', NIP), ['InvoiceRead'], 'Token do testu')[1]
    started = start_token_auth(api, secret)
    refused = api.call('POST', '/auth/token/redeem', token=started.json['authenticationToken']['token'])
    assert refused.error_code() == 21301 and '(100)' in refused.error_details()[0]
    assert poll(api, started)[0] == [100, 100, 100, 200]
    assert api.call('POST', '/auth/token/redeem', token=started.json['authenticationToken']['token']).status == 200


def test_expired_or_reused_challenge_is_refused(fake, api, seal):
    secret = fake.add_token(NIP, ('Nip', NIP), ['InvoiceRead'], 'Token do testu')[1]
    challenge = api.call('POST', '/auth/challenge').json
    encrypted, key_id = encrypt_token(api, secret, challenge['timestampMs'])
    body = {'challenge': challenge['challenge'], 'contextIdentifier': {'type': 'Nip', 'value': NIP},
            'encryptedToken': encrypted, 'publicKeyId': key_id}
    fake.expire_challenges()
    expired = api.call('POST', '/auth/ksef-token', body=body)
    assert expired.status == 400 and expired.error_code() == 21111 and 'wygasło' in expired.error_details()[0]

    # the same with a short challenge lifetime, for the XAdES flow
    fake.challenge_ttl = 0.2
    fake.grant(NIP, ('Nip', NIP), ['InvoiceRead'])
    challenge = api.call('POST', '/auth/challenge').json['challenge']
    signed = sign_xades(auth_token_request(challenge), *seal)
    time.sleep(0.3)
    assert api.call('POST', '/auth/xades-signature', xml=signed).error_code() == 21111

    fake.challenge_ttl = 600
    challenge = api.call('POST', '/auth/challenge').json
    encrypted, key_id = encrypt_token(api, secret, challenge['timestampMs'])
    body.update(challenge=challenge['challenge'], encryptedToken=encrypted)
    assert api.call('POST', '/auth/ksef-token', body=body).status == 202
    reused = api.call('POST', '/auth/ksef-token', body=body)
    assert reused.error_code() == 21111 and 'wykorzystane' in reused.error_details()[0]


def test_withdrawn_encryption_key_answers_21470(fake, api):
    secret = fake.add_token(NIP, ('Nip', NIP), ['InvoiceRead'], 'Token do testu')[1]
    challenge = api.call('POST', '/auth/challenge').json
    encrypted, old_key_id = encrypt_token(api, secret, challenge['timestampMs'])
    new_key_id = fake.rotate_token_encryption_key()
    refused = api.call('POST', '/auth/ksef-token', body={
        'challenge': challenge['challenge'], 'contextIdentifier': {'type': 'Nip', 'value': NIP},
        'encryptedToken': encrypted, 'publicKeyId': old_key_id})
    assert refused.error_code() == 21470 and old_key_id in refused.error_details()[0]
    assert fake.public_key_ids() == [new_key_id]
    token_login(api, secret)         # refetching the keys works


def test_authorization_policy_limits_the_client_ip(fake, api):
    secret = fake.add_token(NIP, ('Nip', NIP), ['InvoiceRead'], 'Token do testu')[1]
    started = start_token_auth(api, secret, policy={'allowedIps': {'ip4Addresses': ['10.1.2.3'], 'ip4Masks': ['192.168.0.0/16']}})
    poll(api, started)
    session = redeem(api, started)
    refused = api.call('GET', '/tokens', token=session['access'])
    assert refused.status == 403 and refused.json['reasonCode'] == 'ip-not-allowed'
    started = start_token_auth(api, secret, policy={'allowedIps': {'ip4Ranges': ['127.0.0.1-127.0.0.9']}})
    poll(api, started)
    assert api.call('GET', '/tokens', token=redeem(api, started)['access']).status == 200


# ------------------------------------------------------------------------------------------
# XAdES authentication
# ------------------------------------------------------------------------------------------

def test_full_xades_flow_with_a_company_seal(fake, api, seal):
    fake.grant(NIP, ('Nip', NIP), ['CredentialsManage', 'InvoiceRead', 'InvoiceWrite'])
    started = start_xades_auth(api, *seal)
    assert started.status == 202
    codes, body = poll(api, started)
    assert codes == [100, 200]
    assert body['authenticationMethod'] == 'QualifiedSeal'
    assert body['authenticationMethodInfo'] == {'category': 'XadesSignature', 'code': 'xades.qualified-seal', 'displayName': 'Pieczęć kwalifikowana'}
    session = redeem(api, started)

    created = api.call('POST', '/tokens', token=session['access'], body={'permissions': ['InvoiceRead', 'InvoiceWrite'],
                                                                         'description': 'Księgowa Anna'})
    assert created.status == 202
    reference, secret = created.json['referenceNumber'], created.json['token']
    assert secret.startswith(reference + '|nip-' + NIP + '|')
    statuses = [api.call('GET', '/tokens/' + reference, token=session['access']).json['status'] for dummy in range(2)]
    assert statuses == ['Pending', 'Active']
    item = api.call('GET', '/tokens/' + reference, token=session['access']).json
    assert item['authorIdentifier'] == {'type': 'Nip', 'value': NIP}
    assert item['contextIdentifier'] == {'type': 'Nip', 'value': NIP}
    assert item['requestedPermissions'] == ['InvoiceRead', 'InvoiceWrite'] and item['description'] == 'Księgowa Anna'

    # the new token authenticates, and its session cannot mint tokens
    token_session = token_login(api, secret)
    refused = api.call('POST', '/tokens', token=token_session['access'], body={'permissions': ['InvoiceRead'], 'description': 'Kolejny token'})
    assert refused.status == 403 and refused.json['reasonCode'] == 'auth-method-not-allowed'
    assert api.call('DELETE', '/auth/sessions/current', token=session['refresh']).status == 204


def test_xades_personal_certificate_schema_2_1_and_rsa(fake, api):
    key, certificate = personal_certificate(key=rsa.generate_private_key(public_exponent=65537, key_size=2048))
    fake.grant(NIP, ('Pesel', PESEL), ['InvoiceRead'])
    session = xades_login(api, key, certificate, version='2.1')
    created = api.call('POST', '/tokens', token=session['access'], body={'permissions': ['InvoiceRead'], 'description': 'Mój token'})
    assert fake.token(created.json['referenceNumber'])['authorIdentifier'] == {'type': 'Pesel', 'value': PESEL}
    assert fake.sessions()[0]['method'] == 'QualifiedSignature'


def test_xades_certificate_fingerprint_and_nip_in_serial_number(fake, api):
    key, certificate = make_certificate([(NameOID.COMMON_NAME, 'Jan Nowak'), (NameOID.GIVEN_NAME, 'Jan'), (NameOID.SURNAME, 'Nowak'),
                                         (NameOID.COUNTRY_NAME, 'PL')])
    fingerprint = hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).hexdigest().upper()
    fake.grant(NIP, ('Fingerprint', fingerprint), ['InvoiceRead'])
    session = xades_login(api, key, certificate, subject_type='certificateFingerprint')
    created = api.call('POST', '/tokens', token=session['access'], body={'permissions': ['InvoiceRead'], 'description': 'Token odcisku'})
    assert fake.token(created.json['referenceNumber'])['authorIdentifier'] == {'type': 'Fingerprint', 'value': fingerprint}
    # without identifiers in the subject, certificateSubject cannot name anyone
    started = start_xades_auth(api, key, certificate)
    assert poll(api, started)[1]['status'] == {'code': 460, 'description': ksef_api.Spec.load().auth_statuses[460][0],
                                               'details': ['Niepoprawny certyfikat']}
    key, certificate = personal_certificate(serial='TINPL-' + OTHER_NIP)
    fake.grant(NIP, ('Nip', OTHER_NIP), ['InvoiceRead'])
    xades_login(api, key, certificate)


def test_xades_document_errors(fake, api, seal):
    fake.grant(NIP, ('Nip', NIP), ['InvoiceRead'])

    def post(document: bytes) -> Reply:
        return api.call('POST', '/auth/xades-signature', xml=document)

    def challenge() -> str:
        return api.call('POST', '/auth/challenge').json['challenge']

    assert post(b'<AuthTokenRequest').error_code() == 21001
    assert post(auth_token_request(challenge())).error_code() == 9102
    assert post(sign_xades(auth_token_request(challenge(), subject_type='certificateSerial'), *seal)).error_code() == 21401
    assert post(sign_xades(auth_token_request(challenge(), context=('Nip', '0265877635')), *seal)).error_code() == 21401
    tampered = sign_xades(auth_token_request(challenge()), *seal).replace(NIP.encode(), OTHER_NIP.encode())
    assert post(tampered).error_code() == 9105
    other_key = seal_certificate()[0]
    certificate = seal[1]
    assert post(sign_xades(auth_token_request(challenge()), other_key, certificate)).error_code() == 9105
    # references without transforms (SignedProperties) are canonicalised with C14N 1.0 (XMLDSig),
    # so signxml signing with exclusive C14N fails like it would in KSeF
    rejected = post(sign_xades(auth_token_request(challenge()), *seal, c14n=EXC_C14N))
    assert rejected.error_code() == 9105 and 'SignedProperties' in rejected.error_details()[0]
    fake.expire_challenges()
    assert post(sign_xades(auth_token_request(challenge()), *seal)).status == 202
    assert post(sign_xades(auth_token_request('20250625-CR-20F5EE4000-DA48AE4124-46'), *seal)).error_code() == 21111


def test_xades_certificate_checks_show_in_the_status(fake, api):
    fake.grant(NIP, ('Nip', NIP), ['InvoiceRead'])
    expired = seal_certificate(expired=True)
    assert poll(api, start_xades_auth(api, *expired))[1]['status']['details'] == ['Nieważny certyfikat']

    ca = make_certificate([(NameOID.COMMON_NAME, 'Test CA')])
    issued = seal_certificate(issuer=ca)
    untrusted = poll(api, start_xades_auth(api, *issued, query={'verifyCertificateChain': 'true'}))[1]['status']
    assert (untrusted['code'], untrusted['details']) == (460, ['Niezaufany łańcuch certyfikatów'])
    fake.trust_ca(ca[1])
    assert poll(api, start_xades_auth(api, *issued, query={'verifyCertificateChain': 'true'}))[0][-1] == 200

    unknown = seal_certificate(nip=OTHER_NIP)
    assert poll(api, start_xades_auth(api, *unknown))[1]['status']['code'] == 415


# ------------------------------------------------------------------------------------------
# Tokens: paging, filters, revocation
# ------------------------------------------------------------------------------------------

def test_paging_through_250_tokens_and_filters(fake, api, seal):
    refs = fake.populate_tokens(250, NIP, ('Nip', NIP), ['InvoiceRead'], description='Stanowisko {i:03d}',
                                statuses=('Active', 'Active', 'Revoked'))
    fake.add_token(NIP, ('Pesel', PESEL), ['InvoiceRead'], 'Token osoby')
    fake.add_token(OTHER_NIP, ('Nip', OTHER_NIP), ['InvoiceRead'], 'Token innego kontekstu')
    fake.grant(NIP, ('Nip', NIP), ['CredentialsRead'])
    session = xades_login(api, *seal)

    first = api.call('GET', '/tokens', token=session['access'])
    assert len(first.json['tokens']) == 10 and first.json['continuationToken']          # default pageSize 10
    items, pages = list_all(api, session['access'])
    assert pages == 3 and len(items) == 251
    seeded = [item['referenceNumber'] for item in items if item['description'].startswith('Stanowisko')]
    assert seeded == refs and len(set(seeded)) == 250                # newest first
    created = [item['dateCreated'] for item in items]
    assert created == sorted(created, reverse=True)

    assert len(list_all(api, session['access'], status=['Active'])[0]) == 167 + 1          # every third seeded one is Revoked
    assert len(list_all(api, session['access'], status=['Revoked', 'Pending'])[0]) == 83
    assert [i['description'] for i in list_all(api, session['access'], description='stanowisko 24')[0]] == [
        'Stanowisko %03d' % i for i in range(240, 250)]                                      # case-insensitive substring
    assert [i['authorIdentifier'] for i in list_all(api, session['access'], authorIdentifier=PESEL[:5])[0]] == [
        {'type': 'Pesel', 'value': PESEL}]
    assert len(list_all(api, session['access'], authorIdentifier=NIP[2:], authorIdentifierType='Nip', page_size=50)[0]) == 250

    bad = api.call('GET', '/tokens', token=session['access'], headers={'x-continuation-token': 'bm90IGEgdG9rZW4='})
    assert bad.status == 400 and bad.error_code() == 21418
    other_query = api.call('GET', '/tokens', token=session['access'], query={'status': 'Active'},
                           headers={'x-continuation-token': first.json['continuationToken']})
    assert other_query.error_code() == 21418


def test_revoke_and_revocation_status(fake, api, seal):
    fake.grant(NIP, ('Nip', NIP), ['CredentialsManage', 'InvoiceRead'])
    reference = fake.add_token(NIP, ('Pesel', PESEL), ['InvoiceRead'], 'Token pracownika')[0]
    session = xades_login(api, *seal)
    fake.token_revocation_reads = 1
    assert api.call('DELETE', '/tokens/' + reference, token=session['access']).status == 204
    statuses = [api.call('GET', '/tokens/' + reference, token=session['access']).json['status'] for dummy in range(2)]
    assert statuses == ['Revoking', 'Revoked']
    again = api.call('DELETE', '/tokens/' + reference, token=session['access'])
    assert again.status == 400 and again.error_code() == ksef_api.FAKE_TOKEN_NOT_REVOCABLE
    unknown = api.call('DELETE', '/tokens/20251001-EC-2DD3AFF000-A6B7F19A95-11', token=session['access'])
    assert unknown.error_code() == ksef_api.FAKE_TOKEN_NOT_FOUND


# ------------------------------------------------------------------------------------------
# Permission rules
# ------------------------------------------------------------------------------------------

def test_token_session_cannot_generate_tokens(fake, api):
    secret = fake.add_token(NIP, ('Nip', NIP), ALL_BUT_ENFORCEMENT, 'Token administratora')[1]
    session = token_login(api, secret)
    refused = api.call('POST', '/tokens', token=session['access'], body={'permissions': ['InvoiceRead'], 'description': 'Nowy token'})
    assert refused.status == 403 and refused.json['reasonCode'] == 'auth-method-not-allowed'
    assert refused.json['security'] == {'authenticationMethodCategory': 'Token'}


def test_granting_permissions_not_held_is_refused(fake, api, seal):
    fake.grant(NIP, ('Nip', NIP), ['CredentialsManage', 'InvoiceRead'])
    session = xades_login(api, *seal)
    refused = api.call('POST', '/tokens', token=session['access'],
                       body={'permissions': ['InvoiceRead', 'InvoiceWrite', 'SubunitManage'], 'description': 'Za dużo uprawnień'},
                       headers={'X-Error-Format': 'problem-details'})
    assert refused.status == 400 and refused.headers['Content-Type'].startswith('application/problem+json')
    assert refused.json['errors'] == [{'code': 26001, 'description': 'Nie można nadać tokenowi uprawnień których nie posiadasz.',
                                       'details': ['Brakujące uprawnienia: InvoiceWrite, SubunitManage.']}]
    assert fake.tokens() == []


def test_contexts_that_cannot_have_tokens_are_refused(fake, api, seal):
    fake.grant(('NipVatUe', NIP_VAT_UE), ('Nip', NIP), ['InvoiceRead'])
    session = xades_login(api, *seal, context=('NipVatUe', NIP_VAT_UE))
    refused = api.call('POST', '/tokens', token=session['access'], body={'permissions': ['InvoiceRead'], 'description': 'Token VAT UE'})
    assert refused.status == 400 and refused.error_code() == 26002
    assert 'NipVatUe' in refused.error_details()[0]
    # an InternalId context can have tokens
    internal = NIP + '-12345'
    fake.grant(internal, ('Nip', NIP), ['InvoiceRead'])
    session = xades_login(api, *seal, context=('InternalId', internal))
    created = api.call('POST', '/tokens', token=session['access'], body={'permissions': ['InvoiceRead'], 'description': 'Token podmiotu'})
    assert created.status == 202 and '|internalId-%s|' % internal in created.json['token']


def test_enforcement_operations_token_fails_outside_enforcement_authorities(fake, api, seal):
    fake.token_activation_reads = 0
    fake.grant(NIP, ('Nip', NIP), ['EnforcementOperations'])
    session = xades_login(api, *seal)
    created = api.call('POST', '/tokens', token=session['access'], body={'permissions': ['EnforcementOperations'], 'description': 'Egzekucja'})
    status = api.call('GET', '/tokens/' + created.json['referenceNumber'], token=session['access']).json
    assert (status['status'], status['statusDetails']) == ('Failed', ['Context identifier is not enforcement authority.'])


def test_listing_and_revoking_scope_without_credentials_permissions(fake, api, seal):
    fake.grant(NIP, ('Nip', NIP), ['InvoiceRead', 'InvoiceWrite'])
    company_ref, company_secret = fake.add_token(NIP, ('Nip', NIP), ['InvoiceRead'], 'Token firmy')
    second_ref = fake.add_token(NIP, ('Nip', NIP), ['InvoiceRead'], 'Drugi token firmy')[0]
    person_ref = fake.add_token(NIP, ('Pesel', PESEL), ['InvoiceRead'], 'Token osoby')[0]

    # certificate session without CredentialsRead/Manage: only the tokens it authored
    session = xades_login(api, *seal)
    assert {i['referenceNumber'] for i in list_all(api, session['access'])[0]} == {company_ref, second_ref}
    assert api.call('GET', '/tokens/' + person_ref, token=session['access']).json['reasonCode'] == 'insufficient-resource-access'
    refused = api.call('DELETE', '/tokens/' + person_ref, token=session['access'])
    assert refused.status == 403 and refused.json['reasonCode'] == 'missing-permissions'
    assert refused.json['security'] == {'requiredAnyOfPermissions': ['CredentialsManage'], 'presentPermissions': ['InvoiceRead', 'InvoiceWrite']}
    assert api.call('DELETE', '/tokens/' + second_ref, token=session['access']).status == 204      # own token

    # token session: only the token it logged in with, which it may revoke
    token_session = token_login(api, company_secret)
    assert [i['referenceNumber'] for i in list_all(api, token_session['access'])[0]] == [company_ref]
    assert api.call('DELETE', '/tokens/' + person_ref, token=token_session['access']).status == 403
    assert api.call('DELETE', '/tokens/' + company_ref, token=token_session['access']).status == 204
    assert fake.token(company_ref)['status'] == 'Revoked'
    assert fake.token(person_ref)['status'] == 'Active'


def test_credentials_read_lists_all_but_only_credentials_manage_revokes_others(fake, api, seal):
    fake.grant(NIP, ('Nip', NIP), ['CredentialsRead'])
    person_ref = fake.add_token(NIP, ('Pesel', PESEL), ['InvoiceRead'], 'Token osoby')[0]
    session = xades_login(api, *seal)
    assert [i['referenceNumber'] for i in list_all(api, session['access'])[0]] == [person_ref]
    assert api.call('GET', '/tokens/' + person_ref, token=session['access']).status == 200
    assert api.call('DELETE', '/tokens/' + person_ref, token=session['access']).status == 403
    fake.grant(NIP, ('Nip', NIP), ['CredentialsManage'])
    session = xades_login(api, *seal)
    assert api.call('DELETE', '/tokens/' + person_ref, token=session['access']).status == 204


# ------------------------------------------------------------------------------------------
# Rate limits
# ------------------------------------------------------------------------------------------

def test_429_for_the_next_requests_and_a_storm(fake, api):
    fake.rate_limit(count=2, retry_after=3)
    for dummy in range(2):
        limited = api.call('POST', '/auth/challenge')
        assert limited.status == 429 and limited.headers['Retry-After'] == '3'
        assert limited.json['status']['code'] == 429 and '3 sekundach' in limited.json['status']['details'][0]
    assert api.call('POST', '/auth/challenge').status == 200

    secret = fake.add_token(NIP, ('Nip', NIP), ['InvoiceRead'], 'Token do testu')[1]
    session = token_login(api, secret)
    fake.rate_limit_storm(seconds=0.5, retry_after=1, paths=['/tokens'])
    assert api.call('POST', '/auth/challenge').status == 200     # only /tokens* is in this storm
    limited = api.call('GET', '/tokens', token=session['access'], headers={'X-Error-Format': 'problem-details'})
    assert limited.status == 429 and limited.headers['Retry-After'] == '1'
    assert limited.json['title'] == 'Too Many Requests' and 'na minutę' in limited.json['detail']
    time.sleep(0.6)
    assert api.call('GET', '/tokens', token=session['access']).status == 200
    assert [r['status'] for r in fake.requests()].count(429) == 3


# ------------------------------------------------------------------------------------------
# Contract checking
# ------------------------------------------------------------------------------------------

def test_requests_breaking_the_contract_are_answered_400_and_recorded(fake, api, seal):
    fake.grant(NIP, ('Nip', NIP), ['InvoiceRead'])
    session = xades_login(api, *seal)

    short = api.call('POST', '/tokens', token=session['access'], body={'permissions': ['InvoiceRead'], 'description': 'abc'})
    assert short.status == 400 and short.error_code() == 21405
    assert any('too short' in detail for detail in short.error_details())
    unknown_permission = api.call('POST', '/tokens', token=session['access'], body={'permissions': ['Invoices'], 'description': 'Literówka'},
                                  headers={'X-Error-Format': 'problem-details'})
    assert unknown_permission.json['errors'][0]['code'] == 21405 and 'Invoices' in unknown_permission.json['errors'][0]['details'][0]
    assert api.call('GET', '/tokens', token=session['access'], query={'pageSize': 5}).status == 400
    assert api.call('GET', '/tokens').status == 401
    assert api.call('POST', '/auth/ksef-token', body={'challenge': 'x', 'contextIdentifier': {'type': 'NIP', 'value': NIP}}).status == 400
    assert api.call('GET', '/token').status == 400
    assert fake.tokens() == []

    violations = fake.violations()
    assert [(v['method'], v['path'], v['kind']) for v in violations] == [
        ('POST', '/v2/tokens', 'request'), ('POST', '/v2/tokens', 'request'), ('GET', '/v2/tokens', 'request'),
        ('GET', '/v2/tokens', 'request'), ('POST', '/v2/auth/ksef-token', 'request'), ('GET', '/v2/token', 'unknown-operation')]
    assert 'minimum of 10' in violations[2]['errors'][0]
    assert 'Bearer' in violations[3]['errors'][0]
    assert any("'encryptedToken' is a required property" in error for error in violations[4]['errors'])
    fake.clear_violations()


def test_operations_the_fake_does_not_implement_are_reported(fake, api, seal):
    fake.grant(NIP, ('Nip', NIP), ['InvoiceRead'])
    session = xades_login(api, *seal)
    reply = api.call('GET', '/auth/sessions', token=session['access'])
    assert reply.status == 400 and reply.error_code() == ksef_api.FAKE_NOT_IMPLEMENTED
    assert fake.unimplemented() == [{'method': 'GET', 'path': '/v2/auth/sessions', 'template': '/auth/sessions'}]


def test_an_invalid_response_of_the_fake_raises():
    server = ksef_api.FakeKsef()
    server.start()
    tmpdir = os.path.dirname(server.ca_pem_path)
    # a bug planted in the fake: a challenge shorter than the spec's 36 characters
    planted = {'challenge': 'short', 'timestamp': '2025-07-11T12:23:56+00:00', 'timestampMs': 1, 'clientIp': '127.0.0.1'}
    server._op_challenge = lambda ctx: ksef_api._json_reply(200, planted)
    reply = Api(server).call('POST', '/auth/challenge')
    assert reply.status == 500
    assert 'too short' in server.fake_errors()[0]
    with pytest.raises(ksef_api.FakeKsefError, match='breaks the contract'):
        server.stop()
    assert not os.path.exists(tmpdir)


def test_command_line_entry_point(tmp_path):
    process = subprocess.Popen([sys.executable, os.path.join(FAKES_DIR, 'ksef_api.py'), '--json', '--duration', '30', '--tokens', '3'],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert select.select([process.stdout], [], [], 30)[0], 'the fake printed nothing within 30 s'
        details = json.loads(process.stdout.readline())
        assert details['context'] == {'type': 'Nip', 'value': NIP}

        class CliFake:
            base_url, ca_pem_path = details['base_url'], details['ca_pem_path']
        api = Api(t.cast(ksef_api.FakeKsef, CliFake))
        session = token_login(api, details['token'])
        assert len(api.call('GET', '/tokens', token=session['access']).json['tokens']) == 4
    finally:
        process.terminate()
        assert process.wait(timeout=15) == 0
        process.stdout.close()
        process.stderr.close()
