# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Backend of tokenfleet.pki.token_key. Private to the collection."""

from __future__ import annotations

import re

from ansible_collections.tokenfleet.pki.plugins.module_utils.keys import make_token_key, swap_token_key
from ansible_collections.tokenfleet.pki.plugins.module_utils.token import (
    HAS_PKCS11,
    TokenError,
    open_token,
    parse_hex_id,
)
from ansible_collections.tokenfleet.pki.plugins.module_utils.token_objects import (
    DEFAULT_USAGE,
    RSA_SIZES,
    check_key_mechanism,
    destroy,
    generate_key_pair,
    key_facts,
    key_size_and_curve,
    key_type_name,
    key_usage,
    matching_public_object,
    set_attributes,
    usage_attributes,
)

if HAS_PKCS11:
    from pkcs11 import Attribute, ObjectClass

DEFAULT_LABEL_PATTERN = r'^[A-Za-z0-9._-]{1,32}$'
_POSSIBLE_USAGE = {'rsa': ('decrypt', 'sign', 'unwrap'), 'ec': ('derive', 'sign'), 'ed25519': ('sign',)}


def validate_label(label, pattern, option='label'):
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise TokenError('label_pattern %r is not a valid regular expression: %s' % (pattern, exc))
    if not regex.search(label):
        raise TokenError('%s %r does not match label_pattern %r' % (option, label, pattern))


class TokenKeyBackend(object):
    def __init__(self, module):
        self.module = module
        params = module.params
        self.state = params['state']
        self.label = params['label']
        self.force = params['force']
        self.key_type = params['type']
        validate_label(self.label, params['label_pattern'])
        self.object_id = parse_hex_id(params['id']) if params['id'] is not None else None
        if self.key_type == 'rsa':
            if params['curve'] is not None:
                raise TokenError('curve applies to type=ec only, not to type=rsa')
            self.size = params['size'] or 2048
            if self.size not in RSA_SIZES:
                raise TokenError('size must be one of %s for type=rsa (got %s)' % (', '.join(map(str, RSA_SIZES)), self.size))
            self.curve = None
        else:
            if params['size'] is not None:
                raise TokenError('size applies to type=rsa only; use curve for type=ec')
            if self.key_type == 'ed25519' and params['curve'] is not None:
                raise TokenError('curve applies to type=ec only; ed25519 has a fixed curve')
            self.curve = (params['curve'] or 'secp256r1') if self.key_type == 'ec' else None
            self.size = None
        self.usage = sorted(set(params['usage'] if params['usage'] is not None else DEFAULT_USAGE[self.key_type]))
        impossible = set(self.usage) - set(_POSSIBLE_USAGE[self.key_type])
        if impossible:
            raise TokenError('usage %s is not possible for type=%s (possible: %s)'
                             % (', '.join(sorted(impossible)), self.key_type, ', '.join(_POSSIBLE_USAGE[self.key_type])))
        self.extractable = params['extractable']
        self.check_mode = module.check_mode
        self.changed = False
        self.actions = []

    def _wanted(self):
        return dict(label=self.label, type=self.key_type, size=self.size if self.key_type == 'rsa' else None,
                    curve=self.curve, usage=self.usage, id=self.object_id.hex() if self.object_id else None)

    @staticmethod
    def _summary(facts):
        if facts is None:
            return {}
        return dict((k, facts.get(k)) for k in ('label', 'id', 'type', 'size', 'curve', 'usage', 'public_key_fingerprint'))

    def run(self):
        dummy, token, session = open_token(self.module, rw=not self.check_mode, require_login=True)
        with session:
            self.token, self.session = token, session
            if not self.check_mode and swap_token_key(session, self.label, keep_old=False):
                # A replace killed after its new key was made: the new key takes the label, as that run intended.
                self.changed = True
                self.actions.append('completed an interrupted replace')
            private = session.find_one(ObjectClass.PRIVATE_KEY, label=self.label)
            public = matching_public_object(session, private) if private is not None else None
            before = key_facts(token, private, public) if private is not None else None
            if self.state == 'absent':
                result = self._absent(private, public)
            else:
                result = self._present(private, public, before)
        result['diff'] = dict(before=self._summary(before), after=self._summary(result if self.state == 'present' else None))
        result['changed'] = self.changed
        result['actions'] = self.actions
        return result

    def _mismatch(self, private):
        size, curve = key_size_and_curve(private)
        have = key_type_name(private)
        if have != self.key_type:
            return 'it is a %s key, %s was requested' % (have, self.key_type)
        if self.key_type == 'rsa' and size != self.size:
            return 'it has %d bits, %d were requested' % (size, self.size)
        if self.key_type == 'ec' and curve != self.curve:
            return 'it is on curve %s, %s was requested' % (curve, self.curve)
        return None

    def _present(self, private, public, before):
        if private is not None:
            mismatch = self._mismatch(private)
            if mismatch is None:
                return self._update(private, public)
            if not self.force:
                raise TokenError("key %r already exists on token '%s' but %s; set force=true to replace it "
                                 '(this destroys the old key and any certificate with its id)'
                                 % (self.label, self.token.label, mismatch))
        check_key_mechanism(self.token, self.key_type, self.size, self.curve)
        self.changed = True
        if private is None:
            self.actions.append('generate')
        else:
            self.actions.append('replace')
        if self.check_mode:
            return self._predicted()
        object_id = self.object_id
        if private is None:
            new_public, new_private = generate_key_pair(self.session, self.key_type, self.size, self.curve, self.label,
                                                        object_id, self.usage, self.extractable)
        else:
            # The old key stays until the new one exists as <label>.new; then the old pair and its certificates go
            # and the new pair takes the label (keys.swap_token_key, which a later run also uses to finish this).
            new_public, new_private = make_token_key(self.session, self.label, self.key_type, self.size, self.curve,
                                                     object_id, self.usage, self.extractable)
            swap_token_key(self.session, self.label, keep_old=False)
            new_private = self.session.find_one(ObjectClass.PRIVATE_KEY, label=self.label)
            new_public = matching_public_object(self.session, new_private)
        return key_facts(self.token, new_private, new_public)

    def _predicted(self):
        wanted = self._wanted()
        wanted.update(public_key=None, public_key_fingerprint=None, uri=None,
                      sensitive=True, extractable=self.extractable)
        return wanted

    def _update(self, private, public):
        """An existing key of the right kind: align usage and id, which the token lets us change."""
        halves = [private] + ([public] if public is not None else [])
        if key_usage(private) != self.usage:
            self.changed = True
            self.actions.append('set usage')
            if not self.check_mode:
                set_attributes([private], usage_attributes(self.usage))
                if public is not None:
                    set_attributes([public], usage_attributes(self.usage, public=True))
        if self.object_id is not None and private.id != self.object_id:
            self.changed = True
            self.actions.append('set id')
            if not self.check_mode:
                certificates = self.session.find(ObjectClass.CERTIFICATE, object_id=private.id) if private.id else []
                set_attributes(halves + certificates, {Attribute.ID: self.object_id})
        facts = key_facts(self.token, private, public)
        if self.check_mode:
            facts.update(usage=self.usage)
            if self.object_id is not None:
                facts['id'] = self.object_id.hex()
        return facts

    def _absent(self, private, public):
        objects = []
        if private is not None:
            objects = [private] + ([public] if public is not None else [])
            if private.id:
                objects += self.session.find(ObjectClass.CERTIFICATE, object_id=private.id)
        else:
            objects = self.session.find(ObjectClass.PUBLIC_KEY, label=self.label)
        if objects:
            self.changed = True
            self.actions.append('delete %d objects' % len(objects))
            if not self.check_mode:
                destroy(objects)
        return dict(label=self.label)
