# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Backends of tokenfleet.pki.ksef_token and ksef_token_info. Private to the collection."""

from __future__ import annotations

import os
import re

from ansible_collections.tokenfleet.pki.plugins.module_utils.bounded_http import server_text
from ansible_collections.tokenfleet.pki.plugins.module_utils.files import (
    check_destination,
    private_file_args,
    read_file,
    remove_leftovers,
    write_file,
)
from ansible_collections.tokenfleet.pki.plugins.module_utils.ksef.client import KsefApiError, KsefError, check_shape
from ansible_collections.tokenfleet.pki.plugins.module_utils.ksef.tokens import (
    CREATED_SHAPE,
    PERMISSIONS,
    get_token,
    list_tokens,
    open_session,
    token_endpoint,
    token_facts,
    wait_for_status,
)

LIVE = ('Pending', 'Active')
# A KSeF token secret starts with its token's reference number: {referenceNumber}|{context}|{hex}.
_SECRET_REFERENCE = re.compile(r'^(\d{8}-[A-Z]{2}-[0-9A-F]{10}-[0-9A-F]{10}-[0-9A-F]{2})\|')
UNKNOWN = 'unknown'


def _creation_refused(exc):
    """KSeF's refusal to create a token, said the way the permission rules put it."""
    text = str(exc)
    if 'auth-method-not-allowed' in text:
        return ('a session authenticated with a KSeF token may not create tokens; authenticate with a certificate '
                '(auth_certificate_path and its key) instead. %s' % text)
    if 26001 in exc.codes:
        return 'you cannot grant permissions you do not hold yourself in this context. %s' % text
    if 26002 in exc.codes:
        return 'this context cannot have KSeF tokens (only NIP and InternalId contexts can). %s' % text
    return text


class KsefTokenBackend(object):
    def __init__(self, module):
        self.module = module
        params = module.params
        self.state = params['state']
        self.description = params['description']
        self.reference_number = params['reference_number']
        if self.state == 'present':
            if self.description is None:
                raise KsefError('description is required with state=present: it identifies the token')
            if params['permissions'] is None:
                raise KsefError('permissions is required with state=present')
            unknown = [name for name in params['permissions'] if name not in PERMISSIONS]
            if unknown:
                raise KsefError('unknown permission %s; KSeF token permissions are %s'
                                % (', '.join(unknown), ', '.join(PERMISSIONS)))
        elif self.description is None and self.reference_number is None:
            raise KsefError('state=absent needs description or reference_number to select the tokens to revoke')
        if self.description is not None and not 5 <= len(self.description) <= 256:
            raise KsefError('description must be 5 to 256 characters long (got %d)' % len(self.description))
        self.permissions = sorted(set(params['permissions'] or []))
        self.token_path = params['token_path']
        if self.token_path:
            check_destination(self.token_path, 'token_path', module)
        self.check_mode = module.check_mode
        self.changed = False
        self.actions = []
        self.backups = {} if params['backup'] else None
        self.before = None  # the tokens the task is about, as found; see _diff()
        self.revoked = []
        self.created = None

    def run(self):
        if self.token_path and not self.check_mode:
            remove_leftovers(self.token_path)  # a run killed while writing a secret left it in a temp file
        with open_session(self.module) as session:
            self.session = session
            result = self._absent() if self.state == 'absent' else self._present()
        if self.backups:
            result['backup_file'] = self.backups[os.path.abspath(self.token_path)]
        if self.module._diff:
            result['diff'] = self._diff()
        return result

    def _diff(self):
        """The tokens before and after (reference numbers, descriptions, permissions, status), and whose secret
        token_path holds, by reference number; never a secret. In check mode a token to be made has no reference yet."""
        after = dict(self.before, tokens=[item for item in self.before['tokens']
                                          if item['reference_number'] not in self.revoked])
        if self.created is not None:
            after['tokens'].append(self.created)
            if 'token_path_reference' in after:
                after['token_path_reference'] = self.created['reference_number']
        return dict(before=self.before, after=after)

    @staticmethod
    def _diff_token(item):
        facts = token_facts(item)
        return dict((key, facts[key]) for key in ('reference_number', 'description', 'permissions', 'status'))

    def _found(self, items, held=None):
        self.before = dict(tokens=[self._diff_token(item) for item in items])
        if self.state == 'present' and self.token_path:
            self.before['token_path_reference'] = held

    def _matching(self):
        """Pending or Active tokens whose description is exactly ours (KSeF filters by substring)."""
        found = list_tokens(self.session, statuses=LIVE, description=self.description)
        return [item for item in found if item['description'] == self.description]

    def _held(self):
        """What token_path holds: None (no file, or empty), the reference number of the KSeF token whose secret it
        is, or UNKNOWN (content of another form, trusted to be the secret). The secret itself is not kept."""
        if not self.token_path or not os.path.lexists(self.token_path):
            return None
        content = read_file(self.token_path, 'token_path').decode('utf-8', 'replace').strip()
        if not content:
            return None
        match = _SECRET_REFERENCE.match(content)
        return match.group(1) if match else UNKNOWN

    def _present(self):
        """A matching token counts as present only when its secret is where the task keeps it (token_path).

        A matching token whose secret never reached token_path (a run that failed after KSeF made the token) is
        useless: it is revoked and a new one made, with a warning. Without token_path the module cannot tell.
        """
        force = self.module.params['force']
        matching = self._matching()
        same = [item for item in matching if sorted(item.get('requestedPermissions') or []) == self.permissions]
        other = [item for item in matching if item not in same]
        if other and not force:
            raise KsefError('a token described %r already exists with permissions %s, not %s; KSeF token permissions '
                            'cannot change: set force=true to revoke it and make a new one'
                            % (self.description, ', '.join(sorted(other[0].get('requestedPermissions') or [])),
                               ', '.join(self.permissions)))
        held = self._held()
        self._found(matching, held)
        ours = [item for item in same if not self.token_path or held in (UNKNOWN, item['referenceNumber'])]
        if ours:
            if not other:
                return dict(token_facts(ours[0]), changed=False, actions=[])
            self.changed = True  # force with duplicates: the ones with other permissions go, the matching one stays
            for item in other:
                self._revoke(item)
            return dict(token_facts(ours[0]), changed=True, actions=self.actions)
        lost = same
        if held is not None and not force:
            if lost:
                raise KsefError('the token described %r exists in KSeF (%s) but token_path %s holds the secret of another '
                                'token (%s); set force=true to revoke it and make a new one written to token_path, or '
                                'choose another token_path'
                                % (self.description, ', '.join(item['referenceNumber'] for item in lost), self.token_path, held))
            raise KsefError('token_path %s already exists and a new token would overwrite it; set force=true or '
                            'choose another file' % self.token_path)
        self.changed = True
        for item in other + lost:
            self._revoke(item)
        if lost:
            references = ', '.join(item['referenceNumber'] for item in lost)
            self.module.warn('the token described %r exists in KSeF (%s) but its secret is not in token_path %s (an '
                             'earlier run failed after KSeF had made it, or the file was removed); it is useless without '
                             'the secret, so it %s revoked and a new one made'
                             % (self.description, references, self.token_path, 'would be' if self.check_mode else 'is'))
        self.actions.append('create')
        if self.check_mode:
            self.created = dict(reference_number=None, description=self.description, permissions=self.permissions,
                                status=None)
            return dict(changed=True, actions=self.actions, reference_number=None, status=None,
                        description=self.description, permissions=self.permissions)
        return self._create()

    def _create(self):
        params = self.module.params
        body = {'permissions': self.permissions, 'description': self.description}
        try:
            dummy, created, dummy2 = self.session.call('POST', '/tokens', body=body)
        except KsefApiError as exc:
            raise KsefError(_creation_refused(exc))
        secret = created.get('token') if isinstance(created, dict) else None
        if self.token_path and isinstance(secret, str) and secret:
            # Before anything else can fail: KSeF shows the secret only now.
            write_file(self.module, self.token_path, secret + '\n', 0o600, private_file_args(self.module, self.token_path),
                       backups=self.backups)
        check_shape(created, CREATED_SHAPE, 'POST /tokens')
        reference = created['referenceNumber']
        try:
            item = wait_for_status(self.session, reference, ('Active',))
        except KsefError as exc:
            # The token exists and its secret is delivered: a status that cannot be read does not undo that.
            self.module.warn('the token %s was made, but its status could not be read: %s' % (reference, exc))
            item = dict(referenceNumber=reference, description=self.description, requestedPermissions=self.permissions,
                        status=None)
        self.created = self._diff_token(item)
        result = dict(token_facts(item), changed=True, actions=self.actions)
        if item['status'] not in ('Active', None):
            details = '; '.join(item.get('statusDetails') or [])
            self.module.warn('the token %s is %s, not Active yet%s' % (reference, server_text(item['status'], 40),
                                                                       ' (%s)' % server_text(details) if details else ''))
        if params['return_token']:
            result['token'] = secret
        return result

    def _revoke(self, item):
        self.actions.append('revoke %s' % item['referenceNumber'])
        self.revoked.append(item['referenceNumber'])
        if not self.check_mode:
            self.session.call('DELETE', token_endpoint(item['referenceNumber']))

    def _absent(self):
        try:
            if self.reference_number is not None:
                item = get_token(self.session, self.reference_number)
                targets = [item] if item['status'] in LIVE else []
            else:
                targets = self._matching()
            self._found(targets)
            for item in targets:
                self._revoke(item)
        except KsefApiError as exc:
            if exc.status != 403:
                raise
            raise KsefError('revoking (or seeing) tokens made by others needs the CredentialsManage permission in '
                            'this context; a session without it may only revoke its own tokens. %s' % exc)
        self.changed = bool(targets)
        return dict(changed=self.changed, actions=self.actions, revoked=[token_facts(item) for item in targets],
                    description=self.description, reference_number=self.reference_number)


class KsefTokenInfoBackend(object):
    def __init__(self, module):
        self.module = module

    def run(self):
        params = self.module.params
        with open_session(self.module) as session:
            found = list_tokens(session, statuses=params['status'], description=params['description'],
                                author_identifier=params['author_identifier'])
        return dict(changed=False, tokens=[token_facts(item) for item in found])
