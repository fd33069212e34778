# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""KSeF authentication: challenge, KSeF token (RSA-OAEP) or XAdES-signed AuthTokenRequest, status, redeem, close.

Private to the collection. The session is always closed, also when the work in it failed.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import re
import traceback
from urllib.parse import quote

from ansible.module_utils.basic import missing_required_lib

from ansible_collections.tokenfleet.pki.plugins.module_utils.bounded_http import server_text
from ansible_collections.tokenfleet.pki.plugins.module_utils.ksef.client import REFERENCE, KsefApiError, KsefError
from ansible_collections.tokenfleet.pki.plugins.module_utils.signer import require_key_source_libraries
from ansible_collections.tokenfleet.pki.plugins.module_utils.x509 import HAS_CRYPTOGRAPHY

if HAS_CRYPTOGRAPHY:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding

try:
    from lxml import etree
    from signxml import SignatureMethod
    from signxml.xades import XAdESSigner
except ImportError:
    HAS_SIGNXML = False
    SIGNXML_IMPORT_ERROR = traceback.format_exc()
else:
    HAS_SIGNXML = True
    SIGNXML_IMPORT_ERROR = None


def require_ksef_libraries(module):
    """cryptography and the key's libraries; signxml for certificate authentication, which signs XAdES with it."""
    require_key_source_libraries(module)
    if module.params['auth_certificate_path'] and not HAS_SIGNXML:
        module.fail_json(msg=missing_required_lib('signxml and lxml (for auth_certificate_path)'),
                         exception=SIGNXML_IMPORT_ERROR)


AUTH_NAMESPACE = 'http://ksef.mf.gov.pl/auth/token/2.0'
_NIP_WEIGHTS = (6, 5, 7, 2, 3, 4, 5, 6, 7)
_NIP_PATTERN = r'[1-9]((\d[1-9])|([1-9]\d))\d{7}'
STATUS_IN_PROGRESS, STATUS_SUCCESS = 100, 200

# What the authentication answers must hold (client.check_shape); KSeF may add fields.
CHALLENGE_SHAPE = {'challenge': str, 'timestampMs': int}
PUBLIC_KEYS_SHAPE = [{'certificate': str, 'publicKeyId': str, 'usage?': [str], 'validFrom?': str}]
INIT_SHAPE = {'referenceNumber': REFERENCE, 'authenticationToken': {'token': str}}
AUTH_STATUS_SHAPE = {'status': {'code': int, 'description?': str, 'details?': [str]}}
REDEEM_SHAPE = {'accessToken': {'token': str}}


def nip_is_valid(nip):
    if not re.match('^%s$' % _NIP_PATTERN, nip or ''):
        return False
    total = sum(int(digit) * weight for digit, weight in zip(nip, _NIP_WEIGHTS))
    return total % 11 == int(nip[9]) and total % 11 != 10


def context_identifier(context):
    """The API's contextIdentifier from the module's ``context`` option, validated."""
    kind, value = context['type'], str(context['value']).strip()
    if kind == 'nip':
        if not nip_is_valid(value):
            raise KsefError('context.value %r is not a valid NIP (10 digits with a correct check digit)' % value)
        return {'type': 'Nip', 'value': value}
    if not re.match(r'^%s-\d{5}$' % _NIP_PATTERN, value) or not nip_is_valid(value[:10]):
        raise KsefError('context.value %r is not a valid InternalId (a NIP, a hyphen and 5 digits, e.g. 5265877635-12345)'
                        % value)
    return {'type': 'InternalId', 'value': value}


def _token_encryption_key(client):
    """(publicKeyId, RSA public key) of the newest valid certificate for KsefTokenEncryption."""
    dummy, certificates, dummy2 = client.call('GET', '/security/public-key-certificates', shape=PUBLIC_KEYS_SHAPE)
    now = datetime.datetime.now(datetime.timezone.utc)
    usable = []
    for index, item in enumerate(certificates):
        if 'KsefTokenEncryption' not in (item.get('usage') or []):
            continue
        try:
            certificate = x509.load_der_x509_certificate(base64.b64decode(item['certificate'], validate=True))
        except (ValueError, binascii.Error):
            raise KsefError('KSeF answered GET /security/public-key-certificates with a certificate that cannot be read '
                            '(entry %d is not a Base64 DER X.509 certificate)' % index)
        if certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
            usable.append((item.get('validFrom') or '', item['publicKeyId'], certificate.public_key()))
    if not usable:
        raise KsefError('KSeF published no valid public key for KsefTokenEncryption')
    usable.sort()
    return usable[-1][1], usable[-1][2]


class KsefSession(object):
    """Authenticate on enter, end the session on exit (DELETE /auth/sessions/current)."""

    def __init__(self, client, context, ksef_token=None, certificate=None, private_key=None, poll_interval=1.0):
        self.client = client
        self.context = context
        self.ksef_token = ksef_token
        self.certificate = certificate
        self.private_key = private_key
        self.poll_interval = poll_interval
        self.access_token = None
        self.method = 'token' if ksef_token is not None else 'certificate'

    def __enter__(self):
        challenge = self._challenge()
        if self.ksef_token is not None:
            init = self._init_with_token(challenge)
        else:
            init = self._init_with_certificate(challenge)
        authentication_token = init['authenticationToken']['token']
        self._wait_for_authentication(init['referenceNumber'], authentication_token)
        dummy, tokens, dummy2 = self.client.call('POST', '/auth/token/redeem', bearer=authentication_token, shape=REDEEM_SHAPE)
        self.access_token = tokens['accessToken']['token']
        return self

    def __exit__(self, *exc_info):
        if self.access_token is not None:
            try:
                self.client.call('DELETE', '/auth/sessions/current', bearer=self.access_token)
            except KsefError:
                if exc_info[0] is None:
                    raise
            self.access_token = None

    def call(self, method, path, **kwargs):
        return self.client.call(method, path, bearer=self.access_token, **kwargs)

    def _challenge(self):
        dummy, challenge, dummy2 = self.client.call('POST', '/auth/challenge', shape=CHALLENGE_SHAPE)
        return challenge

    def _init_with_token(self, challenge):
        key_id, public_key = _token_encryption_key(self.client)
        for attempt in range(2):
            plaintext = ('%s|%d' % (self.ksef_token, challenge['timestampMs'])).encode('utf-8')
            encrypted = public_key.encrypt(plaintext, padding.OAEP(mgf=padding.MGF1(hashes.SHA256()),
                                                                   algorithm=hashes.SHA256(), label=None))
            body = {'challenge': challenge['challenge'], 'contextIdentifier': self.context,
                    'encryptedToken': base64.b64encode(encrypted).decode('ascii'), 'publicKeyId': key_id}
            try:
                dummy, init, dummy2 = self.client.call('POST', '/auth/ksef-token', body=body, shape=INIT_SHAPE)
                return init
            except KsefApiError as exc:
                if 21470 not in exc.codes or attempt:
                    raise
                # The encryption key was rotated: fetch the keys again, once, with a fresh challenge.
                key_id, public_key = _token_encryption_key(self.client)
                challenge = self._challenge()
        raise KsefError('authentication with the KSeF token failed')

    def _init_with_certificate(self, challenge):
        document = auth_token_request(challenge['challenge'], self.context)
        signed = sign_xades(document, self.private_key, self.certificate)
        dummy, init, dummy2 = self.client.call('POST', '/auth/xades-signature', body=signed,
                                               content_type='application/xml', shape=INIT_SHAPE)
        return init

    def _wait_for_authentication(self, reference, authentication_token):
        while True:
            dummy, status, dummy2 = self.client.call('GET', '/auth/%s' % quote(reference, safe=''), bearer=authentication_token,
                                                     shape=AUTH_STATUS_SHAPE)
            code = status['status']['code']
            if code == STATUS_SUCCESS:
                return
            if code != STATUS_IN_PROGRESS:
                details = '; '.join(status['status'].get('details') or [])
                raise KsefError('KSeF refused the authentication (%s): status %d %s' % (
                    'KSeF token' if self.method == 'token' else 'certificate', code,
                    server_text('%s%s' % (status['status'].get('description') or '', ' (%s)' % details if details else ''))))
            if not self.client.pause(self.poll_interval):
                raise KsefError('KSeF did not finish the authentication within max_wait=%s seconds (GET /auth/%s kept '
                                'answering status 100, in progress)' % (self.client.max_wait, quote(reference, safe='')))


def auth_token_request(challenge, context):
    """The AuthTokenRequest document (schema auth/token/2.0) for a challenge and context."""
    root = etree.Element('{%s}AuthTokenRequest' % AUTH_NAMESPACE, nsmap={None: AUTH_NAMESPACE})
    etree.SubElement(root, '{%s}Challenge' % AUTH_NAMESPACE).text = challenge
    identifier = etree.SubElement(root, '{%s}ContextIdentifier' % AUTH_NAMESPACE)
    etree.SubElement(identifier, '{%s}%s' % (AUTH_NAMESPACE, context['type'])).text = context['value']
    etree.SubElement(root, '{%s}SubjectIdentifierType' % AUTH_NAMESPACE).text = 'certificateSubject'
    return root


def sign_xades(document, private_key, certificate):
    """XAdES-BES enveloped signature with signxml; the key may be on a token (see signer.py)."""
    algorithm = SignatureMethod.ECDSA_SHA256 if isinstance(private_key, ec.EllipticCurvePrivateKey) else SignatureMethod.RSA_SHA256
    signed = XAdESSigner(signature_algorithm=algorithm).sign(document, key=private_key, cert=[certificate])
    return etree.tostring(signed, xml_declaration=True, encoding='UTF-8')
