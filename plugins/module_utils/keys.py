# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The key lifecycle, written once for scep_enroll (key files and token keys) and token_key (replace).

- make: the new key is made complete beside the current one, as ``<private_key_path>.new`` or with the label
  ``<label>.new`` on the token; nothing else moves before that.
- swap: the new key (and its certificate) takes the current key's place; the old key is kept as ``.old`` or
  removed. Every step first looks at what is already done, so a run killed between two steps is completed by
  the next run from what it finds (scep_enroll also keeps a journal in its state file saying which key is new).
- roll back: a new key that is not the one a journal or a pending request names is removed.

Order of a token swap: the old objects leave the label (removed, or moved to ``.old``), then the new private key
takes the label, then its public key. An object changes label by a copy and the removal of the original, never in
place (see _move), and the halves of the new key are recognised by their key material, so every state between two
steps is understood by the next run.
"""

from __future__ import annotations

import os

from ansible_collections.tokenfleet.pki.plugins.module_utils.files import (
    StagedFile,
    backup_file,
    ensure_content,
    place,
    private_file_args,
    read_file,
    remove_file,
    remove_leftovers,
    write_file,
)
from ansible_collections.tokenfleet.pki.plugins.module_utils.signer import load_private_key_file
from ansible_collections.tokenfleet.pki.plugins.module_utils.token import TokenError, describe_error
from ansible_collections.tokenfleet.pki.plugins.module_utils.token_objects import (
    create_certificate,
    destroy,
    generate_key_pair,
    matching_public_object,
    public_key_from_objects,
)
from ansible_collections.tokenfleet.pki.plugins.module_utils.x509 import (
    HAS_CRYPTOGRAPHY,
    certificate_der,
    public_key_der,
)

if HAS_CRYPTOGRAPHY:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    EC_CURVES = {'secp256r1': ec.SECP256R1, 'secp384r1': ec.SECP384R1}

try:
    import pkcs11
    from pkcs11 import Attribute, KeyType, ObjectClass
except ImportError:  # token keys report the missing library through require_pkcs11
    pass

NEW = '.new'
OLD = '.old'


def key_hex(public_key):
    """The SubjectPublicKeyInfo in hexadecimal: how journals and pending requests name a key (it is public)."""
    return public_key_der(public_key).hex()


# ---- key files ----------------------------------------------------------------------------


class FileKeys(object):
    """The key file, its ``.new`` and ``.old`` companions, and the certificate file that goes with it.

    With a dict ``backups`` (the task's ``backup``), a key or certificate file that is replaced is copied first
    (files.backup_file) and the copy recorded as ``backups[path]``.
    """

    def __init__(self, module, key_path, certificate_path, passphrase=None, backups=None):
        self.module = module
        self.backups = backups
        self.key_path = key_path
        self.new_path = key_path + NEW
        self.old_path = key_path + OLD
        self.certificate_path = certificate_path
        self.passphrase = passphrase

    @staticmethod
    def make(key_type, key_size=2048, curve='secp256r1'):
        """A new key in memory: RSA of ``key_size`` bits, or EC on ``curve`` (secp256r1, secp384r1)."""
        if key_type == 'ec':
            return ec.generate_private_key(EC_CURVES[curve]())
        return rsa.generate_private_key(public_exponent=65537, key_size=key_size)

    def load(self, path):
        """The key in ``path``, None when there is no such file."""
        if not os.path.exists(path):
            return None
        return load_private_key_file(path, self.passphrase)

    def write(self, path, key):
        """PKCS#8 PEM, 0600, encrypted with the passphrase when one is given (the next run loads it with it)."""
        encryption = (serialization.BestAvailableEncryption(self.passphrase.encode('utf-8')) if self.passphrase
                      else serialization.NoEncryption())
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
        write_file(self.module, path, pem, 0o600, private_file_args(self.module, path))

    def new_key(self, wanted_hex):
        """The ``.new`` key if it is the one named by ``wanted_hex``, else None."""
        key = self.load(self.new_path)
        if key is None or key_hex(key.public_key()) != wanted_hex:
            return None
        return key

    def clean(self, keep_new, extra_paths=()):
        """Remove what a killed run left: temp files of every file here, and ``.new`` unless it is still needed."""
        removed = []
        for path in (self.key_path, self.new_path, self.old_path, self.certificate_path,
                     self.certificate_path + OLD) + tuple(extra_paths):
            removed += remove_leftovers(path)
        if not keep_new and remove_file(self.new_path):
            removed.append(os.path.basename(self.new_path))
        return removed

    def swap(self, new_hex, certificate_pem, keep_old):
        """Put the new key and its certificate in place; False when the new key is nowhere (roll back).

        The old key and certificate stay until the new key is complete in ``.new``; then (with ``keep_old``) they
        are copied to ``.old``, the certificate is staged beside its destination, and two renames put key and
        certificate in place: the only moment they disagree lies between those renames, and the journal covers it.
        """
        current = self.load(self.key_path)
        if current is not None and key_hex(current.public_key()) == new_hex:
            self._write_certificate(certificate_pem)  # the key is in place already: a killed run stopped here
            return True
        if self.new_key(new_hex) is None:
            return False
        if keep_old and current is not None:
            write_file(self.module, self.old_path, read_file(self.key_path, 'private_key_path'), 0o600,
                       private_file_args(self.module, self.old_path))
            if os.path.exists(self.certificate_path):
                write_file(self.module, self.certificate_path + OLD, read_file(self.certificate_path, 'certificate_path'),
                           0o644)
        staged = StagedFile(self.module, self.certificate_path, certificate_pem, 0o644, backups=self.backups)
        try:
            if self.backups is not None and current is not None:
                self.backups[os.path.abspath(self.key_path)] = backup_file(self.module, self.key_path)
            place(self.module, self.new_path, self.key_path, private_file_args(self.module, self.key_path))
        except BaseException:
            staged.discard()
            raise
        staged.commit()
        return True

    def _write_certificate(self, certificate_pem):
        ensure_content(self.module, self.certificate_path, certificate_pem, 0o644, backups=self.backups)

    def write_generated(self, key):
        """A key made for a first enrollment: no old key to keep, so it goes straight to its place."""
        self.write(self.key_path, key)


# ---- token keys ---------------------------------------------------------------------------


def make_token_key(session, label, key_type, size, curve, object_id, usage, extractable):
    """A new key pair labelled ``<label>.new``, after removing one a killed run left. Returns (public, private)."""
    stale = session.find(ObjectClass.PRIVATE_KEY, label=label + NEW) + session.find(ObjectClass.PUBLIC_KEY, label=label + NEW)
    destroy(stale)
    return generate_key_pair(session, key_type, size, curve, label + NEW, object_id, usage, extractable)


def staged_token_key(session, label):
    """The private key labelled ``<label>.new`` (a swap or a pending rekey under way), or None."""
    return session.find_one(ObjectClass.PRIVATE_KEY, label=label + NEW)


def discard_token_key(session, label):
    """Remove the ``<label>.new`` objects (roll back); True when there were any."""
    objects = session.find(ObjectClass.PRIVATE_KEY, label=label + NEW) + session.find(ObjectClass.PUBLIC_KEY, label=label + NEW)
    destroy(objects)
    return bool(objects)


def _labelled(session, label):
    return (session.find(ObjectClass.PRIVATE_KEY, label=label) + session.find(ObjectClass.PUBLIC_KEY, label=label)
            + session.find(ObjectClass.CERTIFICATE, label=label))


def _attribute(obj, attribute):
    try:
        return bytes(obj[attribute])
    except (pkcs11.PKCS11Error, TypeError, ValueError):
        return None


def _same_key(one, other):
    """True when two key objects (private or public) are halves or copies of one key pair.

    Same key type and id, and the same modulus (RSA) or curve (EC, EdDSA). A replace changes the type, size or
    curve, and a rekey the id, so the old key never passes for the new one.
    """
    if one is None or other is None or one.key_type != other.key_type or one[Attribute.ID] != other[Attribute.ID]:
        return False
    if one.key_type == KeyType.RSA:
        return _attribute(one, Attribute.MODULUS) == _attribute(other, Attribute.MODULUS)
    return _attribute(one, Attribute.EC_PARAMS) == _attribute(other, Attribute.EC_PARAMS)


def _same_object(one, other):
    if one[Attribute.CLASS] != other[Attribute.CLASS]:
        return False
    if one[Attribute.CLASS] == ObjectClass.CERTIFICATE:
        return _attribute(one, Attribute.VALUE) == _attribute(other, Attribute.VALUE)
    return _same_key(one, other)


def _move(session, obj, label):
    """Give ``obj`` the label ``label`` by copying it and removing the original.

    Never by changing its label in place: a token may rewrite the object's storage to change an attribute (SoftHSM
    truncates the object file first), so a kill at that moment would lose the key. A copy is a new object, and
    removing one is a single step; a run killed between the two leaves both, which the next run recognises.
    """
    if not [other for other in session.find(obj[Attribute.CLASS], label=label) if _same_object(obj, other)]:
        try:
            obj.copy({Attribute.LABEL: label})
        except pkcs11.PKCS11Error as exc:
            raise TokenError('cannot copy %r to label %r on the token: %s' % (obj[Attribute.LABEL], label, describe_error(exc)))
    destroy([obj])


def swap_token_key(session, label, keep_old, old_id=None):
    """Give ``label`` to the ``<label>.new`` key pair: complete a swap from any point; True when anything moved.

    First every object labelled ``label`` that is not a copy of the new key leaves (with the certificates of its
    id): removed, or with ``keep_old`` moved to ``<label>.old`` (replacing an older generation there, recognised by
    an id other than ``old_id``). Then the new private key moves to ``label``, then its public key.
    """
    staged = session.find_one(ObjectClass.PRIVATE_KEY, label=label + NEW)
    staged_public = session.find_one(ObjectClass.PUBLIC_KEY, label=label + NEW)
    if staged is None:
        current = session.find_one(ObjectClass.PRIVATE_KEY, label=label)
        if staged_public is None or not _same_key(current, staged_public):
            return False
        _move(session, staged_public, label)  # killed after the private half moved
        return True
    new = [obj for obj in (staged, staged_public) if obj is not None]
    old = [obj for obj in _labelled(session, label) if not any(_same_key(obj, half) for half in new
                                                               if obj[Attribute.CLASS] != ObjectClass.CERTIFICATE)]
    old_ids = set(obj[Attribute.ID] for obj in old if obj[Attribute.CLASS] == ObjectClass.PRIVATE_KEY and obj[Attribute.ID])
    for object_id in old_ids:
        old += [cert for cert in session.find(ObjectClass.CERTIFICATE, object_id=object_id)
                if cert[Attribute.LABEL] not in (label, label + OLD)]
    if keep_old:
        destroy([obj for obj in _labelled(session, label + OLD) if obj[Attribute.ID] != old_id])
        for obj in old:
            _move(session, obj, label + OLD)
    else:
        destroy(old)
    for obj in new:
        _move(session, obj, label)
    return True


def token_key_hex(session, private):
    """The public key of a token private key in hexadecimal, None when unknown.

    RSA private keys carry it; an EC private key does not carry its point, so it is read from its public half.
    """
    key = public_key_from_objects(private)
    if key is None:
        key = public_key_from_objects(private, matching_public_object(session, private))
    return key_hex(key) if key is not None else None


def ensure_certificate_object(session, private, certificate):
    """Exactly one certificate object with the key's label and id holding ``certificate``; True when written."""
    wanted = certificate_der(certificate)
    label = private.label
    mine = [obj for obj in (session.find(ObjectClass.CERTIFICATE, object_id=private.id) if private.id else [])
            if obj[Attribute.LABEL] == label]
    keep = [obj for obj in mine if bytes(obj[Attribute.VALUE]) == wanted][:1]
    changed = not keep
    if changed:
        create_certificate(session, certificate, label, private.id)
    extra = [obj for obj in mine if not keep or obj is not keep[0]]
    destroy(extra)
    return changed or bool(extra)


def certificate_object_matches(session, private, certificate):
    """True when the key's certificate object (label and id) holds ``certificate`` and nothing else does."""
    mine = [obj for obj in (session.find(ObjectClass.CERTIFICATE, object_id=private.id) if private.id else [])
            if obj[Attribute.LABEL] == private.label]
    return len(mine) == 1 and bytes(mine[0][Attribute.VALUE]) == certificate_der(certificate)
