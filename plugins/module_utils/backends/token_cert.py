# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Backend of tokenfleet.pki.token_cert. Private to the collection."""

from __future__ import annotations

import os

from ansible_collections.tokenfleet.pki.plugins.module_utils.files import read_file
from ansible_collections.tokenfleet.pki.plugins.module_utils.signer import SignerError, TokenECPrivateKey
from ansible_collections.tokenfleet.pki.plugins.module_utils.token import (
    HAS_PKCS11,
    TokenError,
    describe_error,
    open_token,
    parse_hex_id,
    pkcs11_uri,
)
from ansible_collections.tokenfleet.pki.plugins.module_utils.token_objects import (
    DEFAULT_USAGE,
    certificate_object_facts,
    create_certificate,
    destroy,
    find_key_for_public_key,
    import_private_key,
    matching_public_object,
    public_key_from_objects,
)
from ansible_collections.tokenfleet.pki.plugins.module_utils.x509 import (
    HAS_CRYPTOGRAPHY,
    CertificateError,
    certificate_der,
    certificate_facts,
    load_certificate,
    public_key_der,
    subject_key_identifier,
)

if HAS_PKCS11:
    import pkcs11
    from pkcs11 import Attribute, ObjectClass

if HAS_CRYPTOGRAPHY:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
    from cryptography.hazmat.primitives.serialization import pkcs12

try:
    from asn1crypto.pkcs12 import Pfx
except ImportError:  # asn1crypto comes with python-pkcs11; its absence is reported for pkcs11
    Pfx = None

_FACT_KEYS = ('label', 'id', 'subject', 'issuer', 'serial_number', 'not_before', 'not_after', 'fingerprint_sha256')


def _is_pkcs12_structure(data):
    """Whether ``data`` is a well-formed PFX (so that a decryption failure means a wrong passphrase)."""
    if Pfx is None:
        return True
    try:
        pfx = Pfx.load(data, strict=True)
        pfx['version'].native
        pfx['auth_safe']['content_type'].native
    except (ValueError, TypeError, KeyError):
        return False
    return True


def load_pkcs12(path, passphrase):
    """(private key, certificate) from a .p12 file. Extra CA certificates in it are ignored.

    The error messages never contain the passphrase.
    """
    data = read_file(path, 'pkcs12_path')
    secret = passphrase.encode('utf-8') if passphrase else None
    try:
        private_key, certificate, dummy = pkcs12.load_key_and_certificates(data, secret)
    except ValueError:
        if not _is_pkcs12_structure(data):
            raise TokenError('pkcs12_path %s is not a PKCS#12 (.p12/.pfx) file' % path)
        if secret is None:
            raise TokenError('pkcs12_path %s is protected by a passphrase: give pkcs12_passphrase '
                             '(or set the PKCS12_PASSPHRASE environment variable)' % path)
        raise TokenError('pkcs12_passphrase does not open pkcs12_path %s: the passphrase is not the right one, the file is '
                         'damaged, or it uses an encryption this host\'s OpenSSL does not support' % path)
    if certificate is None:
        raise TokenError('pkcs12_path %s contains no certificate for its key' % path)
    if private_key is None:
        raise TokenError('pkcs12_path %s contains no private key; to write only its certificate, '
                         'use certificate_path with a PEM or DER file' % path)
    if not isinstance(private_key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        raise TokenError('pkcs12_path %s holds a %s key; only RSA and EC keys can be imported to a token'
                         % (path, type(private_key).__name__.lstrip('_')))
    if public_key_der(private_key.public_key()) != public_key_der(certificate.public_key()):
        raise TokenError('pkcs12_path %s is inconsistent: its certificate is not for its private key' % path)
    return private_key, certificate


def _handle_set(objects):
    return set(obj.handle for obj in objects)


def _signs_for(private, public_key):
    """Whether the token EC key ``private`` makes signatures that ``public_key`` verifies."""
    digest = os.urandom(32)
    algorithm = ec.ECDSA(Prehashed(hashes.SHA256()))
    try:
        signature = TokenECPrivateKey(private, public_key, []).sign(digest, algorithm)
        public_key.verify(signature, digest, algorithm)
    except (SignerError, InvalidSignature):
        return False
    return True


class TokenCertBackend(object):
    def __init__(self, module):
        self.module = module
        params = module.params
        self.state = params['state']
        self.label = params['label']
        self.object_id = parse_hex_id(params['id']) if params['id'] is not None else None
        self.allow_orphan = params['allow_orphan']
        self.pkcs12_path = params['pkcs12_path']
        self.check_mode = module.check_mode
        self.changed = False
        self.actions = []
        self.private_key = None
        self.certificate = None
        if self.label is not None and not self.label:
            raise TokenError('label must not be empty')
        if self.pkcs12_path is not None:
            if self.state == 'absent':
                raise TokenError('pkcs12_path applies to state=present only; remove an imported key and its '
                                 'certificate with tokenfleet.pki.token_key state=absent')
            self.private_key, self.certificate = load_pkcs12(self.pkcs12_path, params['pkcs12_passphrase'])
        elif params['certificate_path'] is not None:
            path = params['certificate_path']
            self.certificate = load_certificate(read_file(path, 'certificate_path'), 'certificate_path %s' % path)
        elif params['certificate_content'] is not None:
            self.certificate = load_certificate(params['certificate_content'].encode('utf-8'), 'certificate_content')
        if self.state == 'present' and self.certificate is None:
            raise TokenError('state=present needs one of certificate_path, certificate_content or pkcs12_path')
        if self.state == 'absent' and self.certificate is None and self.label is None and self.object_id is None:
            raise TokenError('state=absent needs label, id, certificate_path or certificate_content to select '
                             'the certificates to remove')

    def run(self):
        dummy, token, session = open_token(self.module, rw=not self.check_mode, require_login=True)
        with session:
            self.token, self.session = token, session
            if self.state == 'absent':
                result = self._absent()
            else:
                result = self._present()
        result['changed'] = self.changed
        result['actions'] = self.actions
        return result

    # -- reading the token -------------------------------------------------------------------

    def _facts(self, obj):
        """Facts of a certificate object; one that does not parse is still described by label and id."""
        try:
            facts = certificate_object_facts(self.token, obj)
        except CertificateError:
            label, object_id = obj[Attribute.LABEL], obj[Attribute.ID]
            facts = dict(label=label, id=object_id.hex(), uri=pkcs11_uri(self.token, label, object_id, 'cert'))
        return dict((key, facts.get(key)) for key in _FACT_KEYS)

    def _certificates(self, label=None, object_id=None):
        found = self.session.find(ObjectClass.CERTIFICATE, label=label, object_id=object_id)
        return sorted(found, key=lambda obj: obj.handle)

    @staticmethod
    def _value(obj):
        try:
            return obj[Attribute.VALUE]
        except pkcs11.PKCS11Error as exc:
            raise TokenError('cannot read certificate %r on the token: %s' % (obj[Attribute.LABEL], describe_error(exc)))

    # -- state=present ------------------------------------------------------------------------

    def _target(self, key):
        """(label, id) the certificate gets, from the options or the matching key."""
        if key is not None:
            label = self.label if self.label is not None else key.label
            object_id = self.object_id if self.object_id is not None else key.id
            if not label:
                raise TokenError('the key matching the certificate has no label on token %r; give label'
                                 % self.token.label)
            if not object_id:
                raise TokenError("the key %r matching the certificate has no id (CKA_ID) on token '%s'; give id, "
                                 'or set one on the key first with tokenfleet.pki.token_key id=...'
                                 % (key.label, self.token.label))
            return label, object_id
        if self.private_key is None and not self.allow_orphan:
            raise TokenError("the public key of the certificate (subject '%s') matches no key on token '%s'; "
                             'generate or import the key first, or set allow_orphan=true to store the certificate '
                             'alone (for example a CA certificate)'
                             % (self.certificate.subject.rfc4514_string(), self.token.label))
        if self.label is None:
            raise TokenError('label is required for a certificate whose key is not on the token (allow_orphan=true)')
        object_id = self.object_id if self.object_id is not None else subject_key_identifier(self.certificate.public_key())
        return self.label, object_id

    def _check_import_conflicts(self, label, object_id):
        """Refuse to import a p12 key next to a different key with the same label or id."""
        for selector, value in (('label', label), ('id', object_id)):
            kwargs = {'label': label} if selector == 'label' else {'object_id': object_id}
            others = self.session.find(ObjectClass.PRIVATE_KEY, **kwargs)
            if others:
                shown = value if selector == 'label' else value.hex()
                raise TokenError("token '%s' already has a different private key with %s %s; the key of pkcs12_path "
                                 'would not be told apart from it. Remove the old key with tokenfleet.pki.token_key '
                                 'state=absent, or choose another label/id' % (self.token.label, selector, shown))

    def _check_label_owner(self, same_label_only, key_private):
        """A certificate that only shares our label but belongs to another key on the token is not ours to replace."""
        ours = key_private.handle if key_private is not None else None
        for obj in same_label_only:
            other_id = obj[Attribute.ID]
            if not other_id:
                continue
            owners = [k for k in self.session.find(ObjectClass.PRIVATE_KEY, object_id=other_id) if k.handle != ours]
            if owners:
                raise TokenError("certificate label %r on token '%s' is already used by the certificate of another "
                                 'key (id %s); choose another label'
                                 % (obj[Attribute.LABEL], self.token.label, other_id.hex()))

    def _present(self):
        certificate = self.certificate
        der = certificate_der(certificate)
        key_private, key_public = find_key_for_public_key(self.session, certificate.public_key())
        if self.private_key is not None:
            # a p12 key is imported unless its private half is already on the token
            if key_private is None:
                key_private = self._imported_private_half(key_public)
            key = key_private if key_private is not None else key_public
        else:
            key = key_private if key_private is not None else key_public
        key_found = key_private is not None if self.private_key is not None else key is not None
        label, object_id = self._target(key)
        import_private = self.private_key is not None and key_private is None
        import_public = self.private_key is not None and key_public is None
        if import_private:
            self._check_import_conflicts(label, object_id)

        existing = self._certificates(object_id=object_id)
        seen = _handle_set(existing)
        existing += [obj for obj in self._certificates(label=label) if obj.handle not in seen]
        exact = [obj for obj in existing
                 if self._value(obj) == der and obj[Attribute.LABEL] == label and obj[Attribute.ID] == object_id]
        keep = exact[0] if exact else None
        stale = [obj for obj in existing if keep is None or obj.handle != keep.handle]
        self._check_label_owner([obj for obj in stale if obj[Attribute.ID] != object_id], key_private)

        before = [self._facts(obj) for obj in existing]
        if import_private or import_public:
            self.actions.append({(True, True): 'import key', (True, False): 'import private key',
                                 (False, True): 'import public key'}[(import_private, import_public)])
        if keep is None:
            self.actions.append('write certificate')
        if stale:
            self.actions.append('delete %d old certificate%s' % (len(stale), '' if len(stale) == 1 else 's'))
        self.changed = bool(self.actions)

        if self.changed and not self.check_mode:
            self._write(label, object_id, der, (import_public, import_private), keep is None, stale)

        facts = dict(label=label, id=object_id.hex(), uri=pkcs11_uri(self.token, label, object_id, 'cert'))
        facts.update(certificate_facts(certificate))
        after = [dict((key, facts.get(key)) for key in _FACT_KEYS)]
        result = dict(facts, key_found=key_found)
        result['diff'] = dict(before=dict(certificates=before), after=dict(certificates=after))
        if self.private_key is not None:
            result['diff']['before']['key_on_token'] = not import_private
            result['diff']['after']['key_on_token'] = True
        return result

    def _imported_private_half(self, key_public):
        """The private half of the p12 key left on the token by an import that was killed, or None.

        An EC private key object carries no public point, so it is recognised by a test signature
        that the p12's public key verifies. Only keys with the label or id the import gives are tried.
        """
        public_key = self.private_key.public_key()
        if not isinstance(public_key, ec.EllipticCurvePublicKey):
            return None  # an RSA private key carries its modulus: find_key_for_public_key has looked already
        labels = set(x for x in (self.label, key_public.label if key_public is not None else None) if x)
        ids = set(x for x in (self.object_id, subject_key_identifier(public_key),
                              key_public.id if key_public is not None else None) if x)
        candidates = {}
        for value in labels:
            candidates.update((obj.handle, obj) for obj in self.session.find(ObjectClass.PRIVATE_KEY, label=value))
        for value in ids:
            candidates.update((obj.handle, obj) for obj in self.session.find(ObjectClass.PRIVATE_KEY, object_id=value))
        for obj in candidates.values():
            if public_key_from_objects(obj, matching_public_object(self.session, obj)) is None and _signs_for(obj, public_key):
                return obj
        return None

    def _write(self, label, object_id, der, import_key, write_certificate, stale):
        """New objects first; the old certificates go only once the new one reads back correctly.

        ``import_key`` is (public half, private half) of the p12 key still to import; the key goes
        before the certificate, so a kill never leaves a certificate for a key that is not there.
        """
        import_public, import_private = import_key
        created = []
        try:
            if import_public or import_private:
                usage = DEFAULT_USAGE['rsa' if isinstance(self.private_key, rsa.RSAPrivateKey) else 'ec']
                created += import_private_key(self.session, self.private_key, label, object_id, usage,
                                              public=import_public, private=import_private)
            if write_certificate:
                new = create_certificate(self.session, self.certificate, label, object_id)
                created.append(new)
                if self._value(new) != der:
                    raise TokenError("the certificate written to token '%s' does not read back unchanged"
                                     % self.token.label)
        except TokenError as exc:
            raise TokenError('%s%s' % (exc, self._roll_back(created)))
        destroy(stale)

    @staticmethod
    def _roll_back(created):
        if not created:
            return ''
        try:
            destroy(list(reversed(created)))
        except TokenError as exc:
            return '; removing the %d objects written so far also failed: %s' % (len(created), exc)
        return '; the objects written so far were removed again, the token is as it was'

    # -- state=absent -------------------------------------------------------------------------

    def _absent(self):
        if self.label is not None or self.object_id is not None:
            selected = self._certificates(label=self.label, object_id=self.object_id)
        else:
            selected = self._certificates()
        if self.certificate is not None:
            der = certificate_der(self.certificate)
            selected = [obj for obj in selected if self._value(obj) == der]
        before = [self._facts(obj) for obj in selected]
        if selected:
            self.changed = True
            self.actions.append('delete %d certificate%s' % (len(selected), '' if len(selected) == 1 else 's'))
            if not self.check_mode:
                destroy(selected)
        result = dict(label=self.label, id=self.object_id.hex() if self.object_id is not None else None)
        result['diff'] = dict(before=dict(certificates=before), after=dict(certificates=[]))
        return result
