# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Backend of tokenfleet.pki.token_init. Private to the collection."""

from __future__ import annotations

import secrets
import string

from ansible_collections.tokenfleet.pki.plugins.module_utils.files import StagedFile, check_parent_directory
from ansible_collections.tokenfleet.pki.plugins.module_utils.token import (
    HAS_PKCS11,
    Pkcs11Library,
    TokenError,
    TokenSession,
    describe_error,
    token_serial,
    token_summary,
)

if HAS_PKCS11:
    import pkcs11
    from pkcs11 import TokenFlag

RANDOM_PIN = 'random'
PIN_LENGTH_RANGE = (4, 31)


def random_pin(length, digits_only):
    alphabet = string.digits if digits_only else string.ascii_letters + string.digits
    return ''.join(secrets.choice(alphabet) for dummy in range(length))


class TokenInitBackend(object):
    def __init__(self, module):
        self.module = module
        params = module.params
        self.label = params['label']
        # Empty values (blank AWX credential fields, unset variables) mean "not given", never an empty PIN.
        self.so_pin = params['so_pin'] or None
        self.user_pin = params['user_pin'] or None
        self.new_user_pin = params['new_user_pin'] or None
        self.force = params['force']
        self.check_mode = module.check_mode
        self.changed = False
        self.actions = []
        if len(self.label.encode('utf-8')) > 32:
            raise TokenError('label must be at most 32 bytes long (PKCS#11 token labels are 32 bytes)')
        if self.user_pin == RANDOM_PIN:
            low, high = PIN_LENGTH_RANGE
            if not low <= params['user_pin_length'] <= high:
                raise TokenError('user_pin_length must be between %d and %d (got %d)' % (low, high, params['user_pin_length']))
            if not params['user_pin_path']:
                raise TokenError('a generated user PIN needs user_pin_path: the PIN is only ever written to that file')
            if self.new_user_pin is not None:
                raise TokenError('new_user_pin cannot be combined with a generated user_pin')
            check_parent_directory(params['user_pin_path'], 'user_pin_path')

    def run(self):
        library = Pkcs11Library(self.module.params['pkcs11_module'])
        self.library = library
        slot, token = self._select(library)
        if self._needs_init(token):
            self._initialise(slot, token)
        else:
            token = self._ensure_user_pin(slot, token)
            if self.new_user_pin is not None:
                self._change_user_pin(slot, token)
        token = slot.get_token()
        return dict(
            changed=self.changed,
            actions=self.actions,
            label=self.label,
            serial=token_serial(token) if not (self.check_mode and self.changed) else None,
            slot_id=slot.slot_id,
            user_pin_path=self.module.params['user_pin_path'],
        )

    def _select(self, library):
        """(slot, token) to work on: the token with the label, else the selected or first empty one."""
        present = library.slots_with_tokens()
        labelled = [(s, t) for s, t in present if t.flags & TokenFlag.TOKEN_INITIALIZED and t.label == self.label]
        if len(labelled) > 1:
            raise TokenError("%d initialised tokens are labelled '%s': %s; select one with token_serial"
                             % (len(labelled), self.label, ', '.join(token_summary(t) for dummy, t in labelled)))
        serial, slot_id = self.module.params['token_serial'], self.module.params['slot_id']
        if serial is not None:
            chosen = [(s, t) for s, t in present if token_serial(t) == serial]
            wanted = "serial '%s'" % serial
        elif slot_id is not None:
            chosen = [(s, t) for s, t in present if s.slot_id == slot_id]
            wanted = 'slot %d' % slot_id
        elif labelled:
            return labelled[0]
        else:
            chosen = [(s, t) for s, t in present if not t.flags & TokenFlag.TOKEN_INITIALIZED][:1]
            wanted = 'no label %r and no uninitialised token' % self.label
        if not chosen:
            known = ', '.join('%s in slot %d' % (token_summary(t), s.slot_id) for s, t in present) or 'none'
            raise TokenError('no token with %s; tokens present: %s' % (wanted, known))
        if labelled and labelled[0][0].slot_id != chosen[0][0].slot_id:
            raise TokenError("token %s is already labelled '%s'; the token selected by %s is another one"
                             % (token_summary(labelled[0][1]), self.label, wanted))
        return chosen[0]

    def _needs_init(self, token):
        if not token.flags & TokenFlag.TOKEN_INITIALIZED:
            return True
        if token.label == self.label:
            return self.force
        if not self.force:
            raise TokenError("token %s is initialised with another label; initialising it as '%s' wipes every "
                             'key and certificate on it, so it needs force=true' % (token_summary(token), self.label))
        return True

    def _require_so_pin(self, why):
        if self.so_pin is None:
            raise TokenError('so_pin is required to %s (or set PKCS11_SO_PIN)' % why)

    def _initialise(self, slot, token):
        self._require_so_pin('initialise a token')
        if self.user_pin is None:
            raise TokenError('user_pin is required when a token is initialised (a PIN, or "random" to generate one)')
        self.changed = True
        self.actions.append('initialise token' if not token.flags & TokenFlag.TOKEN_INITIALIZED else 'wipe and re-initialise token')
        self.actions.append('set user PIN')
        if self.check_mode:
            return
        self.library.init_token(slot.slot_id, self.so_pin, self.label)
        self._set_user_pin(slot.get_token(), self.new_user_pin if self.new_user_pin is not None else self.user_pin)

    def _ensure_user_pin(self, slot, token):
        if token.flags & TokenFlag.USER_PIN_INITIALIZED:
            return token
        if self.user_pin is None:
            raise TokenError('token %s has no user PIN yet; give user_pin (a PIN, or "random" to generate one)'
                             % token_summary(token))
        self._require_so_pin('set the first user PIN')
        self.changed = True
        self.actions.append('set user PIN')
        if not self.check_mode:
            self._set_user_pin(token, self.new_user_pin if self.new_user_pin is not None else self.user_pin)
            token = slot.get_token()
        return token

    def _set_user_pin(self, token, pin):
        """C_InitPIN as SO; a generated PIN is staged in its file first and put in place once it is set."""
        staged = None
        if pin == RANDOM_PIN:
            params = self.module.params
            pin = random_pin(params['user_pin_length'], params['user_pin_digits_only'])
            staged = StagedFile(self.module, params['user_pin_path'], pin + '\n')
        try:
            with TokenSession(self.library, token, rw=True, so_pin=self.so_pin) as session:
                session.session.init_pin(pin)
        except pkcs11.PKCS11Error as exc:
            if staged:
                staged.discard()
            raise TokenError('setting the user PIN of %s failed: %s' % (token_summary(token), describe_error(exc)))
        except TokenError:
            if staged:
                staged.discard()
            raise
        if staged:
            staged.commit()

    def _change_user_pin(self, slot, token):
        """Make the user PIN ``new_user_pin``.

        Whether it already is can only be learnt by logging in with it. That probe is skipped when
        the token reports earlier failed attempts, so a probe never brings a token near its lock.
        """
        failed_before = TokenFlag.USER_PIN_COUNT_LOW | TokenFlag.USER_PIN_FINAL_TRY | TokenFlag.USER_PIN_LOCKED
        if not token.flags & failed_before:
            try:
                TokenSession(self.library, token, user_pin=self.new_user_pin).close()
                return
            except TokenError:
                token = slot.get_token()
        self.changed = True
        if self.user_pin is not None:
            self.actions.append('change user PIN')
            if not self.check_mode:
                with TokenSession(self.library, token, rw=True, user_pin=self.user_pin) as session:
                    try:
                        session.session.set_pin(self.user_pin, self.new_user_pin)
                    except pkcs11.PKCS11Error as exc:
                        raise TokenError('changing the user PIN of %s failed: %s' % (token_summary(token), describe_error(exc)))
        else:
            self._require_so_pin('reset the user PIN without the current one')
            self.actions.append('reset user PIN as SO')
            if not self.check_mode:
                self._set_user_pin(token, self.new_user_pin)
