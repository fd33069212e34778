# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Keys and certificates on a token: read, describe, generate, write. Private to the collection."""

from __future__ import annotations

from ansible_collections.tokenfleet.pki.plugins.module_utils.token import (
    HAS_PKCS11,
    TokenError,
    describe_error,
    pkcs11_uri,
)
from ansible_collections.tokenfleet.pki.plugins.module_utils.x509 import (
    HAS_CRYPTOGRAPHY,
    certificate_der,
    certificate_facts,
    load_certificate,
    public_key_der,
    public_key_fingerprint,
    public_key_pem,
    subject_key_identifier,
)

if HAS_PKCS11:
    import pkcs11
    from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass
    from pkcs11.util.ec import decode_ec_private_key, decode_ec_public_key, encode_ec_public_key, encode_named_curve_parameters
    from pkcs11.util.rsa import decode_rsa_private_key, decode_rsa_public_key
    from pkcs11.util.x509 import decode_x509_certificate

if HAS_CRYPTOGRAPHY:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

try:
    from asn1crypto.core import OctetString, PrintableString
    from asn1crypto.keys import ECDomainParameters
except ImportError:  # asn1crypto comes with python-pkcs11; its absence is reported for pkcs11
    pass


CURVE_OIDS = {
    'secp256r1': '1.2.840.10045.3.1.7',
    'secp384r1': '1.3.132.0.34',
    'secp521r1': '1.3.132.0.35',
}
_CURVE_BY_OID = dict((oid, name) for name, oid in CURVE_OIDS.items())
_CURVE_BITS = {'secp256r1': 256, 'secp384r1': 384, 'secp521r1': 521}
ED25519_OID = '1.3.101.112'
RSA_SIZES = (2048, 3072, 4096)

# usage name -> attribute on the private half, and on the public half where it has one
USAGES = ('sign', 'decrypt', 'derive', 'unwrap')
_USAGE_ATTRIBUTES = {
    'sign': 'SIGN',
    'decrypt': 'DECRYPT',
    'derive': 'DERIVE',
    'unwrap': 'UNWRAP',
}
_USAGE_PUBLIC = {'sign': 'VERIFY', 'decrypt': 'ENCRYPT', 'unwrap': 'WRAP'}
DEFAULT_USAGE = {'rsa': ['sign', 'decrypt'], 'ec': ['sign'], 'ed25519': ['sign']}


def _ec_params_curve(params_der):
    """Curve name from CKA_EC_PARAMS (named-curve OID, or 'edwards25519' as a PrintableString)."""
    try:
        chosen = ECDomainParameters.load(params_der).chosen
        dotted = chosen.dotted
    except (ValueError, TypeError, AttributeError):
        try:
            name = PrintableString.load(params_der).native
        except (ValueError, TypeError):
            return None
        return 'ed25519' if name == 'edwards25519' else name
    if dotted == ED25519_OID:
        return 'ed25519'
    return _CURVE_BY_OID.get(dotted, dotted)


def _as_int(value):
    return int.from_bytes(value, 'big')


def key_type_name(obj):
    return {KeyType.RSA: 'rsa', KeyType.EC: 'ec', KeyType.EC_EDWARDS: 'ed25519'}.get(obj.key_type, str(obj.key_type))


def public_key_from_objects(private=None, public=None):
    """A cryptography public key for a key pair on the token (None when it cannot be read)."""
    source = public if public is not None else private
    if source is None:
        return None
    try:
        if source.key_type == KeyType.RSA:
            return rsa.RSAPublicNumbers(_as_int(source[Attribute.PUBLIC_EXPONENT]),
                                        _as_int(source[Attribute.MODULUS])).public_key()
        if public is None:  # EC private keys do not carry the point
            return None
        if public.key_type == KeyType.EC:
            return serialization.load_der_public_key(encode_ec_public_key(public))
        if public.key_type == KeyType.EC_EDWARDS:
            point = public[Attribute.EC_POINT]
            if len(point) != 32:
                point = OctetString.load(point).native
            return ed25519.Ed25519PublicKey.from_public_bytes(point)
    except (pkcs11.PKCS11Error, ValueError) as exc:
        raise TokenError('cannot read the public key %r from the token: %s' % (source.label, _error_text(exc)))
    return None


def _error_text(exc):
    return describe_error(exc) if isinstance(exc, pkcs11.PKCS11Error) else str(exc)


def key_size_and_curve(private):
    """(size in bits, curve name or None) of a private key object."""
    if private.key_type == KeyType.RSA:
        return len(private[Attribute.MODULUS]) * 8, None
    curve = _ec_params_curve(private[Attribute.EC_PARAMS])
    if curve == 'ed25519':
        return 256, None
    return _CURVE_BITS.get(curve), curve


def _bool_attr(obj, attribute):
    try:
        return bool(obj[attribute])
    except pkcs11.PKCS11Error:
        return None


def key_usage(private):
    return sorted(name for name in USAGES if _bool_attr(private, getattr(Attribute, _USAGE_ATTRIBUTES[name])))


def key_facts(token, private, public=None):
    """What token_key and token_info report about a key pair."""
    size, curve = key_size_and_curve(private)
    facts = dict(
        label=private.label,
        id=private.id.hex(),
        type=key_type_name(private),
        size=size,
        curve=curve,
        usage=key_usage(private),
        sensitive=_bool_attr(private, Attribute.SENSITIVE),
        extractable=_bool_attr(private, Attribute.EXTRACTABLE),
        uri=pkcs11_uri(token, private.label, private.id, 'private'),
        public_key=None,
        public_key_fingerprint=None,
    )
    public_key = public_key_from_objects(private, public)
    if public_key is not None:
        facts['public_key'] = public_key_pem(public_key)
        facts['public_key_fingerprint'] = public_key_fingerprint(public_key)
    return facts


def certificate_object_facts(token, obj):
    # python-pkcs11 Certificate objects have no .label property (only keys do): read CKA_LABEL.
    label = obj[Attribute.LABEL]
    cert = load_certificate(obj[Attribute.VALUE], 'certificate %r on the token' % label)
    facts = dict(label=label, id=obj[Attribute.ID].hex(),
                 uri=pkcs11_uri(token, label, obj[Attribute.ID], 'cert'))
    facts.update(certificate_facts(cert))
    return facts


def matching_public_object(session, private):
    """The public half that belongs to ``private``: same id, else same label."""
    for selector in (dict(object_id=private.id), dict(label=private.label)):
        if not list(selector.values())[0]:
            continue
        found = session.find(ObjectClass.PUBLIC_KEY, key_type=private.key_type, **selector)
        if len(found) == 1:
            return found[0]
    return None


def check_key_mechanism(token, key_type, size=None, curve=None):
    """Refuse a key the token cannot generate, before anything is changed."""
    mechanism = {
        'rsa': Mechanism.RSA_PKCS_KEY_PAIR_GEN,
        'ec': Mechanism.EC_KEY_PAIR_GEN,
        'ed25519': Mechanism.EC_EDWARDS_KEY_PAIR_GEN,
    }[key_type]
    mechanisms = token.slot.get_mechanisms()
    if mechanism not in mechanisms:
        raise TokenError("token '%s' cannot generate %s keys (it lacks %s)" % (token.label, key_type, mechanism.name))
    bits = size if key_type == 'rsa' else _CURVE_BITS.get(curve, 256)
    info = token.slot.get_mechanism_info(mechanism)
    if info.max_key_length and not info.min_key_length <= bits <= info.max_key_length:
        raise TokenError("token '%s' generates %s keys of %d to %d bits only; %s needs %d"
                         % (token.label, key_type, info.min_key_length, info.max_key_length,
                            'size' if key_type == 'rsa' else 'curve ' + curve, bits))


def _capabilities(usage):
    flags = MechanismFlag(0)
    for name in usage:
        flags |= getattr(MechanismFlag, _USAGE_ATTRIBUTES[name])
        if name in _USAGE_PUBLIC:
            flags |= getattr(MechanismFlag, _USAGE_PUBLIC[name])
    return flags


def private_key_template(extractable):
    """Attributes every private key we create gets, whatever the token's defaults are."""
    return {
        Attribute.TOKEN: True,
        Attribute.PRIVATE: True,
        Attribute.SENSITIVE: True,
        Attribute.EXTRACTABLE: bool(extractable),
    }


_PUBLIC_KEY_TEMPLATE = {Attribute.TOKEN: True, Attribute.PRIVATE: False} if HAS_PKCS11 else {}


def generate_key_pair(session, key_type, size, curve, label, object_id, usage, extractable):
    """Generate a token key pair; the id is the RFC 5280 key identifier unless given."""
    kwargs = dict(
        label=label,
        id=object_id,
        store=True,
        capabilities=_capabilities(usage),
        public_template=dict(_PUBLIC_KEY_TEMPLATE),
        private_template=private_key_template(extractable),
    )
    try:
        if key_type == 'rsa':
            public, private = session.session.generate_keypair(KeyType.RSA, size, **kwargs)
        elif key_type == 'ec':
            kwargs['public_template'][Attribute.EC_PARAMS] = encode_named_curve_parameters(CURVE_OIDS[curve])
            public, private = session.session.generate_keypair(KeyType.EC, **kwargs)
        else:
            params = session.session.create_domain_parameters(
                KeyType.EC_EDWARDS, {Attribute.EC_PARAMS: encode_named_curve_parameters(ED25519_OID)}, local=True)
            public, private = params.generate_keypair(mechanism=Mechanism.EC_EDWARDS_KEY_PAIR_GEN, **kwargs)
    except pkcs11.PKCS11Error as exc:
        raise TokenError('generating the %s key %r failed: %s' % (key_type, label, describe_error(exc)))
    if object_id is None:
        derived = subject_key_identifier(public_key_from_objects(private, public))
        set_attributes([private, public], {Attribute.ID: derived})
    return public, private


def set_attributes(objects, attributes):
    for obj in objects:
        for attribute, value in attributes.items():
            try:
                obj[attribute] = value
            except pkcs11.PKCS11Error as exc:
                raise TokenError('cannot set %s on %r: %s' % (attribute.name, obj.label, describe_error(exc)))


def usage_attributes(usage, public=False):
    """Usage attributes to set on one half of an existing key pair."""
    wanted = set(usage)
    if public:
        return dict((getattr(Attribute, attr), name in wanted) for name, attr in _USAGE_PUBLIC.items())
    return dict((getattr(Attribute, attr), name in wanted) for name, attr in _USAGE_ATTRIBUTES.items())


def destroy(objects):
    for obj in objects:
        try:
            obj.destroy()
        except pkcs11.PKCS11Error as exc:
            raise TokenError('cannot delete %r from the token: %s' % (obj.label, describe_error(exc)))


def find_key_for_public_key(session, public_key):
    """(private, public) objects on the token whose public key equals ``public_key``; either may be None."""
    wanted = public_key_der(public_key)
    for private in session.find(ObjectClass.PRIVATE_KEY):
        public = matching_public_object(session, private)
        candidate = public_key_from_objects(private, public)
        if candidate is not None and public_key_der(candidate) == wanted:
            return private, public
    for public in session.find(ObjectClass.PUBLIC_KEY):
        candidate = public_key_from_objects(None, public)
        if candidate is not None and public_key_der(candidate) == wanted:
            return None, public
    return None, None


def create_certificate(session, certificate, label, object_id):
    template = decode_x509_certificate(certificate_der(certificate))
    template.update({Attribute.TOKEN: True, Attribute.PRIVATE: False, Attribute.LABEL: label, Attribute.ID: object_id})
    try:
        return session.session.create_object(template)
    except pkcs11.PKCS11Error as exc:
        raise TokenError('writing certificate %r to the token failed: %s' % (label, describe_error(exc)))


def _import_templates(private_key, label, object_id, usage, extractable):
    """(private, public) object templates for a software key (from a PKCS#12)."""
    capabilities = _capabilities(usage)
    if isinstance(private_key, rsa.RSAPrivateKey):
        der = private_key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL,
                                        serialization.NoEncryption())
        private_template = decode_rsa_private_key(der, capabilities)
        public_der = private_key.public_key().public_bytes(serialization.Encoding.DER,
                                                           serialization.PublicFormat.PKCS1)
        public_template = decode_rsa_public_key(public_der, capabilities)
    elif isinstance(private_key, ec.EllipticCurvePrivateKey):
        der = private_key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL,
                                        serialization.NoEncryption())
        private_template = decode_ec_private_key(der)
        private_template.update(usage_attributes(usage))
        public_template = decode_ec_public_key(public_key_der(private_key.public_key()))
        public_template.update(usage_attributes(usage, public=True))  # set every flag: SoftHSM defaults them to true
    else:
        raise TokenError('only RSA and EC keys can be imported to a token (got %s)' % type(private_key).__name__)
    private_template.update(private_key_template(extractable))
    private_template.update({Attribute.LABEL: label, Attribute.ID: object_id})
    public_template.update(_PUBLIC_KEY_TEMPLATE)
    public_template.update({Attribute.LABEL: label, Attribute.ID: object_id})
    return private_template, public_template


def import_private_key(session, private_key, label, object_id, usage, extractable=False, public=True, private=True):
    """Create the key objects for a software key (from a PKCS#12): the public one, then the private one.

    ``public``/``private`` false skip a half that is already on the token. The public half goes
    first because it carries the whole public key: after a kill between the two, the next run
    recognises it and adds the private half, where a lone EC private key could not be recognised.
    """
    private_template, public_template = _import_templates(private_key, label, object_id, usage, extractable)
    created = []
    try:
        if public:
            created.append(session.session.create_object(public_template))
        if private:
            created.append(session.session.create_object(private_template))
    except pkcs11.PKCS11Error as exc:
        destroy(list(reversed(created)))
        raise TokenError('importing the key %r to the token failed: %s' % (label, describe_error(exc)))
    return created
