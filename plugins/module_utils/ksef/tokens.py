# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""KSeF token endpoints (/tokens) and the options every KSeF module shares. Private to the collection."""

from __future__ import annotations

import re
from urllib.parse import quote

from ansible.module_utils.basic import env_fallback

from ansible_collections.tokenfleet.pki.plugins.module_utils.ksef.auth import KsefSession, context_identifier
from ansible_collections.tokenfleet.pki.plugins.module_utils.ksef.client import ENVIRONMENTS, REFERENCE, KsefClient, KsefError
from ansible_collections.tokenfleet.pki.plugins.module_utils.signer import KeySource, key_source_argument_spec
from ansible_collections.tokenfleet.pki.plugins.module_utils.x509 import load_certificate
from ansible_collections.tokenfleet.pki.plugins.module_utils.files import read_file

# TokenPermissionType of the KSeF API (2.6), plus CollectiveIdentifierManage from 2.7.
PERMISSIONS = ('InvoiceRead', 'InvoiceWrite', 'CredentialsRead', 'CredentialsManage', 'SubunitManage',
               'EnforcementOperations', 'Introspection', 'CollectiveIdentifierManage')
STATUSES = ('Pending', 'Active', 'Revoking', 'Revoked', 'Failed')
PAGE_SIZE = 100
# Pages one listing follows at most (10,000 tokens); a repeated continuation token stops it at once.
MAX_PAGES = 100
_CONTINUATION = re.compile(r'^[\x20-\x7e]{1,4096}$')

# What the token answers must hold (client.check_shape); KSeF may add fields.
TOKEN_SHAPE = {'referenceNumber': REFERENCE, 'description': str, 'status': str, 'requestedPermissions?': [str],
               'authorIdentifier?': dict, 'contextIdentifier?': dict, 'dateCreated?': str, 'lastUseDate?': str,
               'statusDetails?': [str]}
TOKEN_LIST_SHAPE = {'tokens': [TOKEN_SHAPE], 'continuationToken?': str}
CREATED_SHAPE = {'referenceNumber': REFERENCE, 'token': str}


def ksef_argument_spec():
    """Connection, context and authentication options (``tokenfleet.pki.ksef`` fragment)."""
    spec = key_source_argument_spec()
    spec.update(
        environment=dict(type='str', choices=sorted(ENVIRONMENTS)),
        api_url=dict(type='str'),
        validate_certs=dict(type='bool', default=True),
        ca_path=dict(type='path'),
        timeout=dict(type='int', default=30),
        max_wait=dict(type='int', default=120),
        context=dict(type='dict', required=True, options=dict(
            type=dict(type='str', choices=['nip', 'internal_id'], default='nip'),
            value=dict(type='str', required=True),
        )),
        auth_token=dict(type='str', no_log=True, fallback=(env_fallback, ['KSEF_TOKEN'])),
        auth_certificate_path=dict(type='path'),
    )
    return spec


# auth_token and auth_certificate_path are not exclusive: a KSEF_TOKEN in the environment must not block certificate
# authentication, which takes precedence (open_session).
KSEF_MUTUALLY_EXCLUSIVE = [('environment', 'api_url')]
KSEF_REQUIRED_ONE_OF = [('environment', 'api_url'), ('auth_token', 'auth_certificate_path')]


def open_session(module):
    """A KsefSession (a context manager) from the module's options; the signing key stays open inside it."""
    params = module.params
    client = KsefClient(params['api_url'] or ENVIRONMENTS[params['environment']], params['timeout'],
                        params['validate_certs'], params['ca_path'], params['max_wait'])
    context = context_identifier(params['context'])
    if not params['auth_certificate_path']:
        if not params['auth_token']:
            raise KsefError('give auth_token (or KSEF_TOKEN) or auth_certificate_path with its key; the KSeF token was empty')
        return KsefSession(client, context, ksef_token=params['auth_token'])
    certificate = load_certificate(read_file(params['auth_certificate_path'], 'auth_certificate_path'),
                                   'auth_certificate_path %s' % params['auth_certificate_path'])
    return _CertificateAuthentication(client, context, certificate, KeySource(module))


class _CertificateAuthentication(object):
    """Keeps the key (maybe a token session) open while KSeF checks the signature, closes both at the end."""

    def __init__(self, client, context, certificate, key_source):
        self.client, self.context, self.certificate, self.key_source = client, context, certificate, key_source
        self.session = None

    def __enter__(self):
        private_key = self.key_source.__enter__()
        try:
            self.session = KsefSession(self.client, self.context, certificate=self.certificate, private_key=private_key)
            return self.session.__enter__()
        except BaseException:
            self.key_source.__exit__(None, None, None)
            raise

    def __exit__(self, *exc_info):
        try:
            if self.session is not None:
                self.session.__exit__(*exc_info)
        finally:
            self.key_source.__exit__(*exc_info)


def token_endpoint(reference):
    """The path of one token; the reference number (from KSeF or an option) is one path segment, whatever it holds."""
    return '/tokens/%s' % quote(reference, safe='')


def list_tokens(session, statuses=None, description=None, author_identifier=None):
    """Every token of the context matching the filters, following the continuation token across pages.

    Bounded by MAX_PAGES, by the run's timeout (network) and max_wait (429 waits); a continuation token
    seen before ends the listing with an error instead of a loop.
    """
    query = [('pageSize', PAGE_SIZE)]
    query += [('status', status) for status in statuses or []]
    if description:
        query.append(('description', description))
    if author_identifier:
        query.append(('authorIdentifier', author_identifier))
    tokens, continuation, seen = [], None, set()
    for page_number in range(1, MAX_PAGES + 1):
        headers = {'x-continuation-token': continuation} if continuation else None
        dummy, page, dummy2 = session.call('GET', '/tokens', query=query, headers=headers, shape=TOKEN_LIST_SHAPE)
        tokens.extend(page['tokens'])
        continuation = page.get('continuationToken')
        if not continuation:
            return tokens
        if not _CONTINUATION.match(continuation):
            raise KsefError('KSeF answered GET /tokens (page %d) with a continuation token that cannot be sent back '
                            '(not 1 to 4096 printable ASCII characters)' % page_number)
        if continuation in seen:
            raise KsefError('KSeF answered GET /tokens (page %d) with a continuation token it had sent before; stopped '
                            'instead of reading the same pages again' % page_number)
        seen.add(continuation)
    raise KsefError('KSeF kept sending continuation tokens for GET /tokens: stopped after %d pages (%d tokens), the most '
                    'one listing follows; narrow it with description or status' % (MAX_PAGES, len(tokens)))


def token_facts(item):
    """What the modules return about a token: never its secret (KSeF never sends it again)."""
    return dict(reference_number=item['referenceNumber'], description=item['description'],
                permissions=sorted(item.get('requestedPermissions') or []), status=item['status'],
                author=item.get('authorIdentifier'), context=item.get('contextIdentifier'),
                date_created=item.get('dateCreated'), last_use_date=item.get('lastUseDate'),
                status_details=item.get('statusDetails'))


def get_token(session, reference):
    """GET /tokens/{referenceNumber}, checked."""
    dummy, item, dummy2 = session.call('GET', token_endpoint(reference), shape=TOKEN_SHAPE)
    return item


def wait_for_status(session, reference, wanted, interval=1.0):
    """Poll a token until its status is in ``wanted`` or no longer Pending; the polling is charged to max_wait."""
    while True:
        item = get_token(session, reference)
        if item['status'] in wanted or item['status'] not in ('Pending', 'Revoking'):
            return item
        if not session.client.pause(interval):
            return item
