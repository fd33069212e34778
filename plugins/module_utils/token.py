# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""PKCS#11 access shared by every token module.

Private to the collection. One process loads a PKCS#11 module once, picks one token by
label or serial, opens one session and logs in at most once. Error messages are built
here from the exception type only, so they never carry a PIN.
"""

from __future__ import annotations

import ctypes
import os
import traceback

from ansible.module_utils.basic import env_fallback, missing_required_lib

from ansible_collections.tokenfleet.pki.plugins.module_utils.common import PkiError

try:
    import pkcs11
    from pkcs11 import Attribute, ObjectClass, TokenFlag
except ImportError:
    HAS_PKCS11 = False
    PKCS11_IMPORT_ERROR = traceback.format_exc()
else:
    HAS_PKCS11 = True
    PKCS11_IMPORT_ERROR = None


class TokenError(PkiError):
    """A failure whose message is safe to show: it never contains a PIN or passphrase."""


class LoginFailed(TokenError):
    """A login that did not succeed; ``pin_incorrect`` says whether the token counted a failed try."""

    def __init__(self, message, pin_incorrect=False):
        super(LoginFailed, self).__init__(message)
        self.pin_incorrect = pin_incorrect


def pkcs11_module_argument_spec():
    """The module option (``tokenfleet.pki.token.module`` fragment)."""
    return dict(pkcs11_module=dict(type='path', fallback=(env_fallback, ['PKCS11_MODULE'])))


def token_argument_spec():
    """The options every token module shares (``tokenfleet.pki.token`` and ``.module`` fragments)."""
    spec = pkcs11_module_argument_spec()
    spec.update(
        token_label=dict(type='str', no_log=False),
        token_serial=dict(type='str', no_log=False),
        user_pin=dict(type='str', no_log=True, fallback=(env_fallback, ['PKCS11_USER_PIN'])),
    )
    return spec


TOKEN_MUTUALLY_EXCLUSIVE = [('token_label', 'token_serial')]


def require_pkcs11(module):
    if not HAS_PKCS11:
        module.fail_json(msg=missing_required_lib('python-pkcs11 >= 0.9.4'), exception=PKCS11_IMPORT_ERROR)


def _login_failure_message(exc, role, token_label):
    """Turn a failed C_Login into a message that names the cause and never the PIN."""
    where = "token '%s'" % token_label
    if isinstance(exc, pkcs11.PinIncorrect):
        return ('the %s PIN was rejected by %s (PIN incorrect). It was tried once and is not retried, '
                'so that the token does not lock' % (role, where))
    if isinstance(exc, pkcs11.PinLocked):
        return ('the %s PIN of %s is locked; no login was attempted. Unblock it with the SO PIN '
                '(tokenfleet.pki.token_init with new_user_pin) or the vendor tool' % (role, where))
    if isinstance(exc, pkcs11.PinExpired):
        return 'the %s PIN of %s has expired and must be changed first' % (role, where)
    if isinstance(exc, (pkcs11.PinLenRange, pkcs11.PinInvalid)):
        return 'the %s PIN does not meet the rules of %s (length or characters)' % (role, where)
    if isinstance(exc, pkcs11.UserPinNotInitialized):
        return '%s has no user PIN yet; set one with tokenfleet.pki.token_init' % where
    return 'logging in to %s as %s failed: %s' % (where, role, describe_error(exc))


_ERROR_TEXT = {
    'TokenNotPresent': 'the token is not present',
    'TokenNotRecognised': 'the token is not recognised by the PKCS#11 module',
    'DeviceRemoved': 'the token was removed',
    'DeviceError': 'the token reported a device error',
    'DeviceMemory': 'the token is out of memory',
    'TokenWriteProtected': 'the token is write protected',
    'MechanismInvalid': 'the token does not support the mechanism',
    'KeySizeRange': 'the token does not support this key size',
    'TemplateInconsistent': 'the token refused the object attributes (template inconsistent)',
    'TemplateIncomplete': 'the token refused the object attributes (template incomplete)',
    'AttributeReadOnly': 'the token does not allow changing this attribute',
    'AttributeValueInvalid': 'the token refused an attribute value',
    'UserNotLoggedIn': 'this operation needs a user login (give user_pin)',
    'SessionReadOnlyExists': 'another read-only session is open on the token',
    'SessionExists': 'a session is open on the token',
    'PinLocked': 'the PIN is locked',
    'PinIncorrect': 'the PIN was rejected',
    'NoSuchKey': 'no such object',
    'GeneralError': 'the PKCS#11 module reported a general error (check its configuration)',
}


def describe_error(exc):
    """A short, PIN-free description of a PKCS#11 error."""
    name = type(exc).__name__
    return '%s (%s)' % (_ERROR_TEXT.get(name, 'PKCS#11 error'), name)


def _text(value):
    if isinstance(value, bytes):
        value = value.decode('utf-8', 'replace')
    return value.rstrip(' \x00')


class _CkVersion(ctypes.Structure):
    _fields_ = [('major', ctypes.c_ubyte), ('minor', ctypes.c_ubyte)]


class _CkTokenInfo(ctypes.Structure):
    _fields_ = [
        ('label', ctypes.c_char * 32), ('manufacturer_id', ctypes.c_char * 32),
        ('model', ctypes.c_char * 16), ('serial_number', ctypes.c_char * 16),
        ('flags', ctypes.c_ulong), ('max_session_count', ctypes.c_ulong),
        ('session_count', ctypes.c_ulong), ('max_rw_session_count', ctypes.c_ulong),
        ('rw_session_count', ctypes.c_ulong), ('max_pin_len', ctypes.c_ulong),
        ('min_pin_len', ctypes.c_ulong), ('total_public_memory', ctypes.c_ulong),
        ('free_public_memory', ctypes.c_ulong), ('total_private_memory', ctypes.c_ulong),
        ('free_private_memory', ctypes.c_ulong), ('hardware_version', _CkVersion),
        ('firmware_version', _CkVersion), ('utc_time', ctypes.c_char * 16),
    ]


_CK_UNAVAILABLE_INFORMATION = ctypes.c_ulong(-1).value
_CKR_PIN_INCORRECT = 0xA0
_CKR_PIN_LOCKED = 0xA4
_CKR_PIN_LEN_RANGE = 0xA2
_CKR_SESSION_EXISTS = 0xB6
_CKR_TOKEN_NOT_PRESENT = 0xE0


def token_serial(token):
    return _text(token.serial)


def token_summary(token):
    if not token.flags & TokenFlag.TOKEN_INITIALIZED:
        return 'an uninitialised token (serial %s)' % (token_serial(token) or 'none')
    return "'%s' (serial %s)" % (token.label, token_serial(token))


class Pkcs11Library(object):
    """A PKCS#11 module loaded once for this process.

    python-pkcs11 lacks C_InitToken and the memory and PIN-length fields of C_GetTokenInfo;
    those two calls go through ctypes on the same (already initialised) shared object.
    """

    def __init__(self, path):
        if not path:
            raise TokenError('pkcs11_module is required (or set the PKCS11_MODULE environment variable)')
        if not os.path.isfile(path):
            raise TokenError('pkcs11_module %s does not exist or is not a file' % path)
        # The same library under two path strings would be initialised twice.
        self.path = os.path.realpath(path)
        try:
            self.lib = pkcs11.lib(self.path)
        except pkcs11.PKCS11Error as exc:
            raise TokenError('cannot initialise the PKCS#11 module %s: %s' % (path, describe_error(exc)))
        except OSError as exc:
            raise TokenError('cannot load the PKCS#11 module %s: %s' % (path, exc))
        self._cdll = None

    @property
    def cdll(self):
        if self._cdll is None:
            self._cdll = ctypes.CDLL(self.path)
        return self._cdll

    def reset(self):
        """Close every session of this process (C_Finalize + C_Initialize)."""
        self.lib.reinitialize()

    def slots_with_tokens(self):
        """(slot, token) for every slot that holds a token, initialised or not."""
        result = []
        for slot in self.lib.get_slots(token_present=True):
            try:
                result.append((slot, slot.get_token()))
            except (pkcs11.TokenNotPresent, pkcs11.TokenNotRecognised):
                continue
        return result

    def initialised_tokens(self):
        return [token for dummy, token in self.slots_with_tokens() if token.flags & TokenFlag.TOKEN_INITIALIZED]

    def find_token(self, label=None, serial=None):
        """The one initialised token with this label or serial (or the only one when neither is given)."""
        tokens = self.initialised_tokens()
        if label is not None:
            matches = [t for t in tokens if t.label == label]
            wanted = "label '%s'" % label
        elif serial is not None:
            matches = [t for t in tokens if token_serial(t) == serial]
            wanted = "serial '%s'" % serial
        else:
            matches = tokens
            wanted = 'any label (no token_label or token_serial given)'
        if len(matches) == 1:
            return matches[0]
        known = ', '.join(token_summary(t) for t in tokens) or 'none'
        if not matches:
            raise TokenError('no initialised token with %s; tokens present: %s' % (wanted, known))
        raise TokenError('%d tokens match %s: %s; select one with token_label or token_serial'
                         % (len(matches), wanted, ', '.join(token_summary(t) for t in matches)))

    def token_info_extra(self, slot_id):
        """PIN length limits and memory, which python-pkcs11 does not expose; None when unavailable."""
        info = _CkTokenInfo()
        if self.cdll.C_GetTokenInfo(ctypes.c_ulong(slot_id), ctypes.byref(info)) != 0:
            return None

        def known(value):
            return None if value == _CK_UNAVAILABLE_INFORMATION else value

        return dict(
            min_pin_length=known(info.min_pin_len),
            max_pin_length=known(info.max_pin_len),
            total_public_memory=known(info.total_public_memory),
            free_public_memory=known(info.free_public_memory),
            total_private_memory=known(info.total_private_memory),
            free_private_memory=known(info.free_private_memory),
        )

    def init_token(self, slot_id, so_pin, label):
        """C_InitToken: wipes the token in ``slot_id`` and gives it ``label`` and ``so_pin``."""
        pin = so_pin.encode('utf-8')
        padded_label = label.encode('utf-8').ljust(32, b' ')
        func = self.cdll.C_InitToken
        func.argtypes = [ctypes.c_ulong, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
        func.restype = ctypes.c_ulong
        rv = func(slot_id, pin, len(pin), padded_label)
        if rv == 0:
            return
        if rv == _CKR_PIN_INCORRECT:
            raise TokenError('the SO PIN was rejected when initialising the token in slot %s (PIN incorrect). '
                             'It was tried once and is not retried' % slot_id)
        if rv == _CKR_PIN_LOCKED:
            raise TokenError('the SO PIN of the token in slot %s is locked' % slot_id)
        if rv == _CKR_PIN_LEN_RANGE:
            raise TokenError('so_pin has a length the token in slot %s does not accept' % slot_id)
        if rv == _CKR_SESSION_EXISTS:
            raise TokenError('the token in slot %s has open sessions; close other applications using it' % slot_id)
        if rv == _CKR_TOKEN_NOT_PRESENT:
            raise TokenError('the token in slot %s is not present' % slot_id)
        raise TokenError('initialising the token in slot %s failed with PKCS#11 error 0x%X' % (slot_id, rv))


class TokenSession(object):
    """One session on one token, logged in (as user or SO) at most once.

    A failed login is never retried; the library is reset so that the half-open session
    python-pkcs11 leaves behind cannot block a later login.
    """

    def __init__(self, library, token, rw=False, user_pin=None, so_pin=None):
        # An empty PIN (a blank AWX credential field) means no PIN: logging in with it would cost a try.
        user_pin, so_pin = user_pin or None, so_pin or None
        self.library = library
        self.token = token
        role = 'SO' if so_pin is not None else 'user'
        if token.flags & (TokenFlag.SO_PIN_LOCKED if so_pin is not None else TokenFlag.USER_PIN_LOCKED):
            raise LoginFailed(_login_failure_message(pkcs11.PinLocked(), role, token.label))
        try:
            self.session = token.open(rw=rw, user_pin=user_pin, so_pin=so_pin)
        except pkcs11.PKCS11Error as exc:
            library.reset()
            if user_pin is None and so_pin is None:
                raise TokenError("cannot open a session on token '%s': %s" % (token.label, describe_error(exc)))
            raise LoginFailed(_login_failure_message(exc, role, token.label), isinstance(exc, pkcs11.PinIncorrect))
        self.logged_in = user_pin is not None or so_pin is not None

    def close(self):
        self.session.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def find(self, object_class, label=None, object_id=None, key_type=None):
        attrs = {Attribute.CLASS: object_class}
        if label is not None:
            attrs[Attribute.LABEL] = label
        if object_id is not None:
            attrs[Attribute.ID] = object_id
        if key_type is not None:
            attrs[Attribute.KEY_TYPE] = key_type
        try:
            return list(self.session.get_objects(attrs))
        except pkcs11.PKCS11Error as exc:
            raise TokenError('searching token %s failed: %s' % (self.token.label, describe_error(exc)))

    def find_one(self, object_class, label=None, object_id=None):
        """The single object of this class with the label and/or id, None if there is none."""
        found = self.find(object_class, label=label, object_id=object_id)
        if len(found) > 1:
            raise TokenError('%d %s objects on token %s match %s; refusing to guess which one is meant'
                             % (len(found), _CLASS_NAMES.get(object_class, 'matching'), token_summary(self.token),
                                describe_selector(label, object_id)))
        return found[0] if found else None


def describe_selector(label=None, object_id=None):
    parts = []
    if label is not None:
        parts.append("label '%s'" % label)
    if object_id is not None:
        parts.append('id %s' % object_id.hex())
    return ' and '.join(parts) or 'anything'


if HAS_PKCS11:
    _CLASS_NAMES = {
        ObjectClass.PRIVATE_KEY: 'private key',
        ObjectClass.PUBLIC_KEY: 'public key',
        ObjectClass.CERTIFICATE: 'certificate',
    }
else:
    _CLASS_NAMES = {}


def open_token(module, rw=False, require_login=False):
    """Load the module, select the token from the shared options and open one session.

    The session logs in as the user whenever ``user_pin`` is set. Returns (library, token, session).
    """
    library = Pkcs11Library(module.params['pkcs11_module'])
    token = library.find_token(label=module.params.get('token_label'), serial=module.params.get('token_serial'))
    pin = module.params.get('user_pin')
    if require_login and not pin:
        raise TokenError('user_pin is required to work with keys on token %s (or set PKCS11_USER_PIN)'
                         % token_summary(token))
    return library, token, TokenSession(library, token, rw=rw, user_pin=pin)


def parse_hex_id(value, option='id'):
    """CKA_ID from hex ('0a1b', '0A:1B' or '0a 1b'); a clear error names the option otherwise."""
    cleaned = value.replace(':', '').replace(' ', '')
    try:
        result = bytes.fromhex(cleaned)
    except ValueError:
        result = None
    if not result:
        raise TokenError("%s must be a non-empty hexadecimal string such as '01a2' (got %r)" % (option, value))
    return result


def _uri_escape(value, all_bytes=False):
    if isinstance(value, str):
        value = value.encode('utf-8')
    safe = b'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~'
    return ''.join(chr(b) if (b in safe and not all_bytes) else '%%%02X' % b for b in value)


def pkcs11_uri(token, object_label=None, object_id=None, object_type=None):
    """RFC 7512 URI naming an object on a token."""
    parts = ['token=' + _uri_escape(token.label), 'serial=' + _uri_escape(token_serial(token))]
    if object_id:
        parts.append('id=' + _uri_escape(object_id, all_bytes=True))
    if object_label:
        parts.append('object=' + _uri_escape(object_label))
    if object_type:
        parts.append('type=' + object_type)
    return 'pkcs11:' + ';'.join(parts)
