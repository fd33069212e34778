# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Backend of tokenfleet.pki.token_info. Private to the collection."""

from __future__ import annotations

from ansible_collections.tokenfleet.pki.plugins.module_utils.token import (
    HAS_PKCS11,
    Pkcs11Library,
    TokenSession,
    token_serial,
)
from ansible_collections.tokenfleet.pki.plugins.module_utils.token_objects import (
    certificate_object_facts,
    key_facts,
    matching_public_object,
)

if HAS_PKCS11:
    from pkcs11 import ObjectClass, TokenFlag

_PIN_FLAGS = ('pin_initialized', 'pin_count_low', 'pin_final_try', 'pin_locked', 'pin_to_be_changed')


def _pin_state(flags, role):
    """The PIN state flags of one role ('USER' or 'SO') as booleans."""
    state = {}
    for name in _PIN_FLAGS:
        attr = '%s_%s' % (role, name.upper())
        state[name.replace('pin_', '')] = bool(flags & getattr(TokenFlag, attr)) if hasattr(TokenFlag, attr) else None
    if role == 'SO':
        state.pop('initialized')
    return state


def _version(pair):
    return '%d.%d' % tuple(pair)


def token_facts(library, slot, token):
    flags = token.flags
    facts = dict(
        slot_id=slot.slot_id,
        slot_description=slot.slot_description.strip(),
        label=token.label,
        serial=token_serial(token),
        manufacturer=token.manufacturer_id.strip(),
        model=token.model.strip(),
        hardware_version=_version(token.hardware_version),
        firmware_version=_version(token.firmware_version),
        initialized=bool(flags & TokenFlag.TOKEN_INITIALIZED),
        login_required=bool(flags & TokenFlag.LOGIN_REQUIRED),
        write_protected=bool(flags & TokenFlag.WRITE_PROTECTED),
        protected_authentication_path=bool(flags & TokenFlag.PROTECTED_AUTHENTICATION_PATH),
        user_pin=_pin_state(flags, 'USER'),
        so_pin=_pin_state(flags, 'SO'),
        mechanisms=sorted(m.name.lstrip('_') if hasattr(m, 'name') else str(m) for m in slot.get_mechanisms()),
    )
    facts.update(library.token_info_extra(slot.slot_id) or {})
    return facts


class TokenInfoBackend(object):
    def __init__(self, module):
        self.module = module
        params = module.params
        self.label = params['token_label']
        self.serial = params['token_serial']
        self.user_pin = params['user_pin']

    def _selected(self, token):
        if self.label is not None:
            return token.label == self.label
        if self.serial is not None:
            return token_serial(token) == self.serial
        return True

    def run(self):
        library = Pkcs11Library(self.module.params['pkcs11_module'])
        info = library.lib
        result = dict(
            changed=False,
            library=dict(path=library.path, manufacturer=info.manufacturer_id.strip(),
                         description=info.library_description.strip(),
                         version=_version(info.library_version), cryptoki_version=_version(info.cryptoki_version)),
            tokens=[],
        )
        selected = [(slot, token) for slot, token in library.slots_with_tokens() if self._selected(token)]
        if (self.label is not None or self.serial is not None) and not selected:
            # Same message and listing as every other module.
            library.find_token(label=self.label, serial=self.serial)
        for slot, token in selected:
            result['tokens'].append(token_facts(library, slot, token))
        if self.user_pin or self.label is not None or self.serial is not None:
            token = library.find_token(label=self.label, serial=self.serial)
            facts = [f for f in result['tokens'] if f['serial'] == token_serial(token)][0]
            facts.update(self._objects(library, token))
        return result

    def _objects(self, library, token):
        """Certificates (public objects) always; keys only when logged in with the user PIN."""
        objects = {}
        with TokenSession(library, token, user_pin=self.user_pin) as session:
            objects['certificates'] = sorted((certificate_object_facts(token, cert)
                                              for cert in session.find(ObjectClass.CERTIFICATE)), key=_by_label_and_id)
            if self.user_pin:
                objects['keys'] = sorted((key_facts(token, private, matching_public_object(session, private))
                                          for private in session.find(ObjectClass.PRIVATE_KEY)), key=_by_label_and_id)
        return objects


def _by_label_and_id(facts):
    return facts['label'], facts['id']
