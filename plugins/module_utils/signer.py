# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""One private-key interface for a key on a token or in a file. Private to the collection.

Token keys are wrapped in subclasses of cryptography's private key classes whose ``sign()``
asks the token, so every cryptography builder (CSRs, certificates, CMS for SCEP) can use a key
that never leaves its token. Nothing here is specific to one kind of document.
"""

from __future__ import annotations

from ansible_collections.tokenfleet.pki.plugins.module_utils.common import PkiError
from ansible_collections.tokenfleet.pki.plugins.module_utils.files import read_file
from ansible_collections.tokenfleet.pki.plugins.module_utils.token import (
    HAS_PKCS11,
    describe_error,
    describe_selector,
    open_token,
    parse_hex_id,
    require_pkcs11,
    token_argument_spec,
)
from ansible_collections.tokenfleet.pki.plugins.module_utils.token_objects import (
    matching_public_object,
    public_key_from_objects,
)
from ansible_collections.tokenfleet.pki.plugins.module_utils.x509 import HAS_CRYPTOGRAPHY, require_cryptography

if HAS_PKCS11:
    import pkcs11
    from pkcs11 import MGF, KeyType, Mechanism, ObjectClass
    from pkcs11.util.ec import encode_ecdsa_signature

if HAS_CRYPTOGRAPHY:
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa, utils
    from cryptography.hazmat.primitives.asymmetric import padding as asym_padding

    _RSAPrivateKey = rsa.RSAPrivateKey
    _ECPrivateKey = ec.EllipticCurvePrivateKey
    _Ed25519PrivateKey = ed25519.Ed25519PrivateKey
else:
    _RSAPrivateKey = _ECPrivateKey = _Ed25519PrivateKey = object


class SignerError(PkiError):
    """A key that cannot be used; the message never contains a PIN or passphrase."""


def key_source_argument_spec():
    """Options choosing the signing key: a file, or a key on a token (with the shared token options)."""
    spec = token_argument_spec()
    spec.update(
        private_key_path=dict(type='path'),
        private_key_passphrase=dict(type='str', no_log=True),
        key_label=dict(type='str', no_log=False),
        key_id=dict(type='str', no_log=False),
        so_pin=dict(type='str', no_log=True),
    )
    return spec


def require_key_source_libraries(module):
    """cryptography always; python-pkcs11 when the key is on a token (key_label or key_id)."""
    require_cryptography(module)
    if module.params['key_label'] is not None or module.params['key_id'] is not None:
        require_pkcs11(module)


KEY_SOURCE_MUTUALLY_EXCLUSIVE = [
    ('token_label', 'token_serial'),
    ('private_key_path', 'key_label'),
    ('private_key_path', 'key_id'),
]

_HASH_NAMES = ('SHA1', 'SHA224', 'SHA256', 'SHA384', 'SHA512')


def _hash_mechanism_suffix(algorithm):
    """'SHA256' for hashes.SHA256(), the part python-pkcs11's mechanism names share."""
    name = algorithm.name.upper().replace('-', '')
    if name not in _HASH_NAMES:
        raise SignerError('the token cannot sign with digest %s' % algorithm.name)
    return name


def _digest(data, algorithm):
    digest = hashes.Hash(algorithm)
    digest.update(data)
    return digest.finalize()


def _token_sign(key_object, data, mechanism, mechanism_param=None):
    try:
        return key_object.sign(data, mechanism=mechanism, mechanism_param=mechanism_param)
    except pkcs11.PKCS11Error as exc:
        raise SignerError('the token refused to sign with key %r (%s): %s'
                          % (key_object.label, mechanism.name, describe_error(exc)))


class _TokenKey(object):
    """What the three token key classes share: the token object, its public key, no export."""

    def __init__(self, key_object, public_key, mechanisms):
        self._key = key_object
        self._public_key = public_key
        self._mechanisms = mechanisms

    def public_key(self):
        return self._public_key

    def private_bytes(self, *args, **kwargs):
        raise SignerError('a key on a token cannot be exported')

    private_numbers = private_bytes_raw = private_bytes

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self


class TokenRSAPrivateKey(_TokenKey, _RSAPrivateKey):
    """An RSA key on a token: PKCS#1 v1.5 and PSS signatures by the token."""

    def sign(self, data, padding, algorithm):
        prehashed = isinstance(algorithm, utils.Prehashed)
        hash_algorithm = algorithm._algorithm if prehashed else algorithm
        suffix = _hash_mechanism_suffix(hash_algorithm)
        if isinstance(padding, asym_padding.PSS):
            params = (getattr(Mechanism, suffix.replace('SHA1', 'SHA_1')), getattr(MGF, suffix),
                      self._pss_salt_length(padding, hash_algorithm))
            combined = getattr(Mechanism, '%s_RSA_PKCS_PSS' % suffix)
            if not prehashed and combined in self._mechanisms:
                return _token_sign(self._key, data, combined, params)
            digest = data if prehashed else _digest(data, hash_algorithm)
            return _token_sign(self._key, digest, Mechanism.RSA_PKCS_PSS, params)
        if not isinstance(padding, asym_padding.PKCS1v15):
            raise SignerError('a token RSA key signs with PKCS#1 v1.5 or PSS padding only')
        combined = getattr(Mechanism, '%s_RSA_PKCS' % suffix)
        if not prehashed and combined in self._mechanisms:
            return _token_sign(self._key, data, combined)
        digest = data if prehashed else _digest(data, hash_algorithm)
        return _token_sign(self._key, _digest_info(hash_algorithm, digest), Mechanism.RSA_PKCS)

    def _pss_salt_length(self, padding, algorithm):
        salt = padding._salt_length
        if isinstance(salt, int):
            return salt
        if salt is asym_padding.PSS.MAX_LENGTH:
            return (self.key_size + 7) // 8 - algorithm.digest_size - 2
        return algorithm.digest_size  # DIGEST_LENGTH and AUTO

    @property
    def key_size(self):
        return self._public_key.key_size

    def decrypt(self, ciphertext, padding):
        """Decrypt on the token, as a SCEP reply's key transport needs."""
        if isinstance(padding, asym_padding.PKCS1v15):
            mechanism, params = Mechanism.RSA_PKCS, None
        elif isinstance(padding, asym_padding.OAEP):
            suffix = _hash_mechanism_suffix(getattr(padding, 'algorithm', None) or padding._algorithm)
            params = (getattr(Mechanism, suffix.replace('SHA1', 'SHA_1')), getattr(MGF, suffix), None)
            mechanism = Mechanism.RSA_PKCS_OAEP
        else:
            raise SignerError('a token RSA key decrypts with PKCS#1 v1.5 or OAEP padding only')
        try:
            return self._key.decrypt(ciphertext, mechanism=mechanism, mechanism_param=params)
        except pkcs11.PKCS11Error as exc:
            raise SignerError('the token could not decrypt with key %r (%s): %s'
                              % (self._key.label, mechanism.name, describe_error(exc)))


def _digest_info(algorithm, digest):
    """DER DigestInfo for raw CKM_RSA_PKCS signing (RFC 8017 section 9.2)."""
    from asn1crypto.algos import DigestInfo

    return DigestInfo({'digest_algorithm': {'algorithm': algorithm.name.replace('-', '')}, 'digest': digest}).dump()


class TokenECPrivateKey(_TokenKey, _ECPrivateKey):
    """An EC key on a token: ECDSA, hashed on the host when the token lacks ECDSA_SHA* (SoftHSM 2.6)."""

    def sign(self, data, signature_algorithm):
        if not isinstance(signature_algorithm, ec.ECDSA):
            raise SignerError('a token EC key signs with ECDSA only')
        algorithm = signature_algorithm.algorithm
        if isinstance(algorithm, utils.Prehashed):
            raw = _token_sign(self._key, data, Mechanism.ECDSA)
        else:
            combined = getattr(Mechanism, 'ECDSA_%s' % _hash_mechanism_suffix(algorithm), None)
            if combined is not None and combined in self._mechanisms:
                raw = _token_sign(self._key, data, combined)
            else:
                raw = _token_sign(self._key, _digest(data, algorithm), Mechanism.ECDSA)
        return encode_ecdsa_signature(raw)

    @property
    def curve(self):
        return self._public_key.curve

    @property
    def key_size(self):
        return self._public_key.key_size

    def exchange(self, algorithm, peer_public_key):
        raise SignerError('key agreement with a token key is not supported')


class TokenEd25519PrivateKey(_TokenKey, _Ed25519PrivateKey):
    """An Ed25519 key on a token (CKM_EDDSA)."""

    def sign(self, data):
        return _token_sign(self._key, data, Mechanism.EDDSA)


def token_private_key(token, session, key_object, public_object=None):
    """A cryptography private key whose signatures are made by ``key_object`` on the token."""
    public_key = public_key_from_objects(key_object, public_object)
    if public_key is None:
        raise SignerError("the key %r on token '%s' has no public key object, so its public key is unknown"
                          % (key_object.label, token.label))
    mechanisms = token.slot.get_mechanisms()
    wrapper = {KeyType.RSA: TokenRSAPrivateKey, KeyType.EC: TokenECPrivateKey,
               KeyType.EC_EDWARDS: TokenEd25519PrivateKey}.get(key_object.key_type)
    if wrapper is None:
        raise SignerError('the key %r has type %s, which cannot sign here' % (key_object.label, key_object.key_type))
    return wrapper(key_object, public_key, mechanisms)


def load_private_key_file(path, passphrase):
    """A private key from a PEM or DER file; errors name the option, never the passphrase."""
    data = read_file(path, 'private_key_path')
    secret = passphrase.encode('utf-8') if passphrase is not None else None
    loader = serialization.load_pem_private_key if b'-----BEGIN' in data else serialization.load_der_private_key
    try:
        return loader(data, password=secret)
    except TypeError:
        if secret is None:
            raise SignerError('private_key_path %s is encrypted: give private_key_passphrase' % path)
        raise SignerError('private_key_passphrase was given but private_key_path %s is not encrypted' % path)
    except ValueError:
        if secret is not None:
            raise SignerError('private_key_passphrase does not decrypt private_key_path %s (wrong passphrase, '
                              'or not a private key)' % path)
        raise SignerError('private_key_path %s is not a PEM or DER private key' % path)


class KeySource(object):
    """Context manager giving the signing key chosen by the key-source options.

    For a token key it keeps the one session (logged in as the user) open until it exits.
    """

    def __init__(self, module, require=True, rw=False):
        self.module = module
        self.rw = rw
        params = module.params
        self.on_token = params.get('key_label') is not None or params.get('key_id') is not None
        self.in_file = params.get('private_key_path') is not None
        if require and not (self.on_token or self.in_file):
            raise SignerError('no key given: set private_key_path for a key file, or key_label and/or key_id '
                              '(with pkcs11_module) for a key on a token')
        if params.get('so_pin') is not None:
            raise SignerError('so_pin is not accepted: signing with a key is the user\'s act, so a token key is used '
                              'only after a login with user_pin (the SO role cannot use keys)')
        if self.on_token and not params.get('pkcs11_module'):
            raise SignerError('a key on a token needs pkcs11_module (or the PKCS11_MODULE environment variable)')
        self.key_id = parse_hex_id(params['key_id'], 'key_id') if params.get('key_id') is not None else None
        self.session = None
        self.token = None
        self.key_object = None
        self.before_lookup = None  # callable(session), run before the key is looked up (scep_enroll's swap replay)

    def __enter__(self):
        params = self.module.params
        if self.in_file:
            return load_private_key_file(params['private_key_path'], params.get('private_key_passphrase'))
        dummy, self.token, self.session = open_token(self.module, rw=self.rw, require_login=True)
        try:
            if self.before_lookup is not None:
                self.before_lookup(self.session)
            self.key_object = self.session.find_one(ObjectClass.PRIVATE_KEY, label=params.get('key_label'),
                                                    object_id=self.key_id)
            if self.key_object is None:
                raise SignerError("no private key with %s on token '%s'"
                                  % (describe_selector(params.get('key_label'), self.key_id), self.token.label))
            public = matching_public_object(self.session, self.key_object)
            return token_private_key(self.token, self.session, self.key_object, public)
        except PkiError:
            self.session.close()
            raise

    def __exit__(self, *exc_info):
        if self.session is not None:
            self.session.close()
            self.session = None
