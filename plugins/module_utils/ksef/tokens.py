# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""KSeF token endpoints (/tokens) and the options every KSeF module shares. Private to the collection."""

from __future__ import annotations

import time

from ansible.module_utils.basic import env_fallback

from ansible_collections.tokenfleet.pki.plugins.module_utils.ksef.auth import KsefSession, context_identifier
from ansible_collections.tokenfleet.pki.plugins.module_utils.ksef.client import ENVIRONMENTS, KsefClient, KsefError
from ansible_collections.tokenfleet.pki.plugins.module_utils.signer import KeySource, key_source_argument_spec
from ansible_collections.tokenfleet.pki.plugins.module_utils.x509 import load_certificate
from ansible_collections.tokenfleet.pki.plugins.module_utils.files import read_file

# TokenPermissionType of the KSeF API (2.6), plus CollectiveIdentifierManage from 2.7.
PERMISSIONS = ('InvoiceRead', 'InvoiceWrite', 'CredentialsRead', 'CredentialsManage', 'SubunitManage',
               'EnforcementOperations', 'Introspection', 'CollectiveIdentifierManage')
STATUSES = ('Pending', 'Active', 'Revoking', 'Revoked', 'Failed')
PAGE_SIZE = 100


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


def list_tokens(session, statuses=None, description=None, author_identifier=None):
    """Every token of the context matching the filters, following the continuation token across pages."""
    query = [('pageSize', PAGE_SIZE)]
    query += [('status', status) for status in statuses or []]
    if description:
        query.append(('description', description))
    if author_identifier:
        query.append(('authorIdentifier', author_identifier))
    tokens, continuation = [], None
    for dummy in range(10000):
        headers = {'x-continuation-token': continuation} if continuation else None
        dummy2, page, dummy3 = session.call('GET', '/tokens', query=query, headers=headers)
        tokens.extend(page.get('tokens') or [])
        continuation = page.get('continuationToken')
        if not continuation:
            return tokens
    raise KsefError('KSeF kept sending continuation tokens for /tokens; stopped after 10000 pages')


def token_facts(item):
    """What the modules return about a token: never its secret (KSeF never sends it again)."""
    return dict(reference_number=item['referenceNumber'], description=item['description'],
                permissions=sorted(item.get('requestedPermissions') or []), status=item['status'],
                author=item.get('authorIdentifier'), context=item.get('contextIdentifier'),
                date_created=item.get('dateCreated'), last_use_date=item.get('lastUseDate'),
                status_details=item.get('statusDetails'))


def wait_for_status(session, reference, wanted, max_wait, interval=1.0):
    """Poll a token until its status is in ``wanted`` or no longer Pending; bounded by ``max_wait``."""
    deadline = time.monotonic() + max_wait
    while True:
        dummy, item, dummy2 = session.call('GET', '/tokens/%s' % reference)
        if item['status'] in wanted or item['status'] not in ('Pending', 'Revoking'):
            return item
        if time.monotonic() > deadline:
            return item
        time.sleep(interval)
