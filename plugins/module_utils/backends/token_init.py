# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Backend of tokenfleet.pki.token_init. Private to the collection."""

from __future__ import annotations

import json
import os
import secrets
import string

from ansible_collections.tokenfleet.pki.plugins.module_utils.files import StagedFile, check_destination, remove_leftovers
from ansible_collections.tokenfleet.pki.plugins.module_utils.token import (
    HAS_PKCS11,
    LoginFailed,
    Pkcs11Library,
    TokenError,
    TokenSession,
    describe_error,
    token_serial,
    token_summary,
)

if HAS_PKCS11:
    import pkcs11
    from pkcs11 import Attribute, ObjectClass, TokenFlag

RANDOM_PIN = 'random'
PIN_LENGTH_RANGE = (4, 31)
VERSION_MAX_LENGTH = 64


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
        self.version = params['new_user_pin_version'] or None
        self.force = params['force']
        self.check_mode = module.check_mode
        self.changed = False
        self.pin_set = False
        self.actions = []
        self.backups = {} if params['backup'] else None
        if len(self.label.encode('utf-8')) > 32:
            raise TokenError('label must be at most 32 bytes long (PKCS#11 token labels are 32 bytes)')
        if self.version is not None:
            if self.new_user_pin is None:
                raise TokenError('new_user_pin_version names new_user_pin; give new_user_pin too')
            if len(self.version) > VERSION_MAX_LENGTH or not self.version.isprintable():
                raise TokenError('new_user_pin_version must be at most %d printable characters' % VERSION_MAX_LENGTH)
            if self.version in (self.user_pin, self.new_user_pin, self.so_pin):
                raise TokenError('new_user_pin_version is stored on the token for anyone to read, so it must not be a PIN')
        if self.user_pin == RANDOM_PIN:
            low, high = PIN_LENGTH_RANGE
            if not low <= params['user_pin_length'] <= high:
                raise TokenError('user_pin_length must be between %d and %d (got %d)' % (low, high, params['user_pin_length']))
            if not params['user_pin_path']:
                raise TokenError('a generated user PIN needs user_pin_path: the PIN is only ever written to that file')
            if self.new_user_pin is not None:
                raise TokenError('new_user_pin cannot be combined with a generated user_pin')
            check_destination(params['user_pin_path'], 'user_pin_path', module)

    def run(self):
        if self.module.params['user_pin_path'] and not self.check_mode:
            remove_leftovers(self.module.params['user_pin_path'])  # a generated PIN a killed run left in a temp file
        library = Pkcs11Library(self.module.params['pkcs11_module'])
        self.library = library
        slot, token = self._select(library)
        before = self._facts(slot, token) if self.module._diff else None
        if self._needs_init(token):
            self._initialise(slot, token)
        else:
            token = self._ensure_user_pin(slot, token)
            if self.new_user_pin is not None:
                self._change_user_pin(slot, token)
        token = slot.get_token()
        result = dict(
            changed=self.changed,
            actions=self.actions,
            label=self.label,
            serial=token_serial(token) if not (self.check_mode and self.changed) else None,
            slot_id=slot.slot_id,
            user_pin_path=self.module.params['user_pin_path'],
        )
        if self.backups:
            result['backup_file'] = self.backups[os.path.abspath(self.module.params['user_pin_path'])]
        if before is not None:
            after = self._predicted(before) if self.check_mode else self._facts(slot, token)
            result['diff'] = dict(before=before, after=after)
        return result

    def _facts(self, slot, token):
        """What the diff shows of a token: label, serial, slot, flags, the version of the PIN token_init recorded.

        Never a PIN: the version is the public name PinRecord keeps (new_user_pin_version).
        """
        initialised = bool(token.flags & TokenFlag.TOKEN_INITIALIZED)
        record = PinRecord.read(self.library, token) if initialised else None
        return dict(label=token.label if initialised else None, serial=token_serial(token), slot_id=slot.slot_id,
                    initialized=initialised, user_pin_initialized=bool(token.flags & TokenFlag.USER_PIN_INITIALIZED),
                    user_pin_locked=bool(token.flags & TokenFlag.USER_PIN_LOCKED),
                    user_pin_version=record.version if record is not None and record.state == PinRecord.SET else None)

    def _predicted(self, before):
        """The facts after the actions check mode found; serial and slot of a token to initialise are not known yet."""
        after = dict(before)
        version = self.version if self.new_user_pin is not None else None
        if any(action.endswith('initialise token') for action in self.actions):
            after.update(label=self.label, serial=None, slot_id=None, initialized=True, user_pin_initialized=True,
                         user_pin_locked=False, user_pin_version=version)
        elif 'set user PIN' in self.actions:  # the SO sets new_user_pin (recorded with its version) or user_pin
            after.update(user_pin_initialized=True,
                         user_pin_version=version if self.new_user_pin is not None else before['user_pin_version'])
        if set(self.actions) & {'change user PIN', 'reset user PIN as SO', 'record user PIN version'}:
            after.update(user_pin_version=self.version, user_pin_locked=False)
        return after

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
        self.pin_set = True
        self.actions.append('set user PIN')
        if not self.check_mode:
            self._set_user_pin(token, self.new_user_pin if self.new_user_pin is not None else self.user_pin)
            token = slot.get_token()
        return token

    def _set_user_pin(self, token, pin):
        """C_InitPIN as SO; a generated PIN is staged in its file first and put in place once it is set.

        Setting new_user_pin also records that on the token (see PinRecord), in the same SO session.
        A kill between the two leaves a record of a PIN that is not set; the next run finds
        new_user_pin refused and the SO sets it again.
        """
        staged = None
        record = pin is not None and pin == self.new_user_pin
        if pin == RANDOM_PIN:
            params = self.module.params
            pin = random_pin(params['user_pin_length'], params['user_pin_digits_only'])
            staged = StagedFile(self.module, params['user_pin_path'], pin + '\n', backups=self.backups)
        try:
            with TokenSession(self.library, token, rw=True, so_pin=self.so_pin) as session:
                if record:  # first, so that a token that cannot keep the record is left as it was
                    PinRecord.write(session, PinRecord.SET, self.version)
                try:
                    session.session.init_pin(pin)
                except pkcs11.PKCS11Error:
                    if record:
                        PinRecord.write(session, None, None, remove=True)
                    raise
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
        """Make the user PIN ``new_user_pin``, with at most one failed login.

        Which of user_pin and new_user_pin is current cannot be learnt from the token without a login,
        and a login that fails costs a try. The record token_init keeps on the token (PinRecord) says
        whether it set new_user_pin of this new_user_pin_version; the one PIN it points to is tried, and
        a failed login ends the run. Check mode reads the record only and never logs in.
        """
        if self.pin_set:
            return  # just set to new_user_pin by the SO
        record = PinRecord.read(self.library, token)
        matches = record is not None and record.version == self.version
        if self.user_pin == self.new_user_pin:
            self._confirm_new_pin(token, record if matches else None)
        elif self.user_pin is None:
            self._reset_as_so(token, matches and record.state == PinRecord.SET)
        elif matches and record.state == PinRecord.SET:
            if not self.check_mode:
                self._log_in(token, self.new_user_pin, 'new_user_pin', self._why_new_pin()).close()
        else:
            self.changed = True
            self.actions.append('change user PIN')
            if not self.check_mode:
                interrupted = matches and record.state == PinRecord.CHANGING
                self._change_with_current_pin(token, record if interrupted else None)

    def _why_new_pin(self):
        shown = "new_user_pin_version '%s'" % self.version if self.version is not None else 'no new_user_pin_version'
        return ('new_user_pin was tried because the record token_init keeps on the token says it set new_user_pin '
                '(%s). The PIN was changed outside token_init since, or this run starts a new rotation: give the '
                'current PIN as user_pin and a new new_user_pin_version' % shown)

    def _log_in(self, token, pin, option, why, rw=False):
        """A user session logged in with ``pin``; a refused PIN ends the run with a message naming ``option``."""
        try:
            return TokenSession(self.library, token, rw=rw, user_pin=pin)
        except LoginFailed as exc:
            if not exc.pin_incorrect:
                raise
            raise LoginFailed('%s was rejected by %s (PIN incorrect): one login try was spent and no other PIN is '
                              'tried in this run, so that the token does not lock. %s'
                              % (option, token_summary(token), why), pin_incorrect=True)

    def _confirm_new_pin(self, token, record):
        """user_pin equals new_user_pin: check it once and record it, so that later rotations know it."""
        if record is not None and record.state == PinRecord.SET:
            if not self.check_mode:
                self._log_in(token, self.new_user_pin, 'new_user_pin', 'user_pin is the same PIN.').close()
            return
        self.changed = True
        self.actions.append('record user PIN version')
        if not self.check_mode:
            with self._log_in(token, self.new_user_pin, 'new_user_pin', 'user_pin is the same PIN.', rw=True) as session:
                PinRecord.write(session, PinRecord.SET, self.version)

    def _reset_as_so(self, token, recorded):
        """No user_pin: the SO sets new_user_pin, unless the record says it is set and a login confirms it."""
        if recorded:
            if self.check_mode:
                return
            if self.so_pin is None:
                self._log_in(token, self.new_user_pin, 'new_user_pin', self._why_new_pin()).close()
                return
            try:
                TokenSession(self.library, token, user_pin=self.new_user_pin).close()
                return
            except LoginFailed:
                pass  # the SO's C_InitPIN below sets the PIN and its retry counter afresh
        self._require_so_pin('reset the user PIN without the current one')
        self.changed = True
        self.actions.append('reset user PIN as SO')
        if not self.check_mode:
            self._set_user_pin(token, self.new_user_pin)

    def _change_with_current_pin(self, token, interrupted):
        """Log in once with user_pin and change the PIN; the record says 'changing' while C_SetPIN runs.

        ``interrupted`` is the record of an earlier run killed between those steps: the PIN is then
        user_pin or new_user_pin. user_pin is tried; if the token refuses it, the change had gone
        through, which is recorded for the next run (that checks new_user_pin) before this one stops.
        """
        if interrupted is not None:
            why = ('An earlier run of token_init was interrupted while changing the user PIN to new_user_pin; the token '
                   'refusing user_pin means that change went through, which is now recorded, so the next run checks '
                   'new_user_pin.')
        elif self.version is not None:
            why = ("user_pin was tried because the token has no record that token_init set new_user_pin of "
                   "new_user_pin_version '%s'." % self.version)
        else:
            why = 'user_pin was tried because the token has no record that token_init set new_user_pin.'
        try:
            session = self._log_in(token, self.user_pin, 'user_pin', why, rw=True)
        except LoginFailed as exc:
            if interrupted is not None and exc.pin_incorrect:
                with TokenSession(self.library, token, rw=True) as public:
                    PinRecord.write(public, PinRecord.SET, self.version)
            raise
        with session:
            PinRecord.write(session, PinRecord.CHANGING, self.version)
            try:
                session.session.set_pin(self.user_pin, self.new_user_pin)
            except pkcs11.PKCS11Error as exc:
                PinRecord.write(session, PinRecord.SET, None, remove=True)
                raise TokenError('changing the user PIN of %s failed: %s' % (token_summary(token), describe_error(exc)))
            PinRecord.write(session, PinRecord.SET, self.version)


class PinRecord(object):
    """A public data object on the token: token_init set the user PIN to new_user_pin of a version.

    Its value is ``{"seq": n, "state": "set" or "changing", "version": new_user_pin_version or null}``
    and nothing else: no hash, MAC or any other bytes derived from a PIN, so it tells no one anything
    that helps to guess a PIN. Tokens do not let CKA_VALUE change, so a new record is written before
    the old one is removed, and the highest ``seq`` wins when a kill left both. Anyone may change or
    remove it; at worst a run then tries the other PIN, and still only once.
    """

    LABEL = 'tokenfleet.pki user PIN'
    APPLICATION = 'tokenfleet.pki.token_init'
    SET = 'set'
    CHANGING = 'changing'

    def __init__(self, seq, state, version):
        self.seq = seq
        self.state = state
        self.version = version

    @classmethod
    def _objects(cls, session):
        template = {Attribute.CLASS: ObjectClass.DATA, Attribute.LABEL: cls.LABEL, Attribute.APPLICATION: cls.APPLICATION}
        try:
            return list(session.session.get_objects(template))
        except pkcs11.PKCS11Error as exc:
            raise TokenError('reading the user PIN record on %s failed: %s' % (token_summary(session.token), describe_error(exc)))

    @classmethod
    def _parse(cls, obj):
        try:
            data = json.loads(bytes(obj[Attribute.VALUE]).decode('ascii'))
        except (pkcs11.PKCS11Error, ValueError):
            return None
        if not isinstance(data, dict) or set(data) != {'seq', 'state', 'version'} or data['state'] not in (cls.SET, cls.CHANGING):
            return None
        if not isinstance(data['seq'], int) or not (data['version'] is None or isinstance(data['version'], str)):
            return None
        return cls(data['seq'], data['state'], data['version'])

    @classmethod
    def _newest(cls, objects):
        """The record with the highest seq; None when there is none or two share it."""
        records = [r for r in (cls._parse(obj) for obj in objects) if r is not None]
        if not records:
            return None
        newest = max(r.seq for r in records)
        top = [r for r in records if r.seq == newest]
        return top[0] if len(top) == 1 else None

    @classmethod
    def read(cls, library, token):
        """The record on the token, read without a login; None when there is none to go by."""
        with TokenSession(library, token) as session:
            return cls._newest(cls._objects(session))

    @classmethod
    def write(cls, session, state, version, remove=False):
        """Make the one record say ``state``/``version`` (or remove every record) in a read-write session."""
        found = cls._objects(session)
        seq = max([r.seq for r in (cls._parse(obj) for obj in found) if r is not None] or [0]) + 1
        try:
            if not remove:
                value = json.dumps(dict(seq=seq, state=state, version=version), sort_keys=True, separators=(',', ':'))
                session.session.create_object({
                    Attribute.CLASS: ObjectClass.DATA, Attribute.TOKEN: True, Attribute.PRIVATE: False,
                    Attribute.LABEL: cls.LABEL, Attribute.APPLICATION: cls.APPLICATION, Attribute.VALUE: value.encode('ascii'),
                })
            for obj in found:
                obj.destroy()
        except pkcs11.PKCS11Error as exc:
            raise TokenError("writing the user PIN record ('%s', a public data object token_init needs to change the PIN with "
                             'one login try) on %s failed: %s' % (cls.LABEL, token_summary(session.token), describe_error(exc)))
