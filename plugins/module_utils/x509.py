# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Certificate and public-key facts, private to the collection."""

from __future__ import annotations

import ipaddress
import os
import re
import traceback

from ansible.module_utils.basic import missing_required_lib

from ansible_collections.tokenfleet.pki.plugins.module_utils.common import PkiError

try:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
except ImportError:
    HAS_CRYPTOGRAPHY = False
    CRYPTOGRAPHY_IMPORT_ERROR = traceback.format_exc()
else:
    HAS_CRYPTOGRAPHY = True
    CRYPTOGRAPHY_IMPORT_ERROR = None


class CertificateError(PkiError):
    """Input that is not a usable certificate; the message is safe to show."""


def require_cryptography(module):
    if not HAS_CRYPTOGRAPHY:
        module.fail_json(msg=missing_required_lib('cryptography'), exception=CRYPTOGRAPHY_IMPORT_ERROR)


def colon_hex(data):
    return ':'.join('%02x' % b for b in data)


def public_key_der(public_key):
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def public_key_pem(public_key):
    return public_key.public_bytes(serialization.Encoding.PEM,
                                   serialization.PublicFormat.SubjectPublicKeyInfo).decode('ascii')


def public_key_fingerprint(public_key):
    """SHA-256 of the DER SubjectPublicKeyInfo, as colon-separated hex."""
    digest = hashes.Hash(hashes.SHA256())
    digest.update(public_key_der(public_key))
    return colon_hex(digest.finalize())


def subject_key_identifier(public_key):
    """RFC 5280 method 1 key identifier (SHA-1 of the subjectPublicKey bits)."""
    return x509.SubjectKeyIdentifier.from_public_key(public_key).digest


def load_certificate(data, source='certificate'):
    """An x509.Certificate from PEM or DER bytes; a clear error names ``source`` otherwise."""
    try:
        if b'-----BEGIN' in data:
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise CertificateError('%s is not a PEM or DER X.509 certificate: %s' % (source, exc))


def certificate_der(certificate):
    return certificate.public_bytes(serialization.Encoding.DER)


def certificate_pem(certificate):
    return certificate.public_bytes(serialization.Encoding.PEM).decode('ascii')


def certificate_facts(certificate):
    """What users compare certificates by: names, serial, validity, fingerprint."""
    return dict(
        subject=certificate.subject.rfc4514_string(),
        issuer=certificate.issuer.rfc4514_string(),
        serial_number='%x' % certificate.serial_number,
        not_before=certificate.not_valid_before_utc.strftime('%Y-%m-%dT%H:%M:%SZ'),
        not_after=certificate.not_valid_after_utc.strftime('%Y-%m-%dT%H:%M:%SZ'),
        fingerprint_sha256=colon_hex(certificate.fingerprint(hashes.SHA256())),
    )


def pem_certificates_facts(data):
    """certificate_facts() of each PEM certificate in ``data``, with its public key's fingerprint (for diffs); the
    text ``not PEM certificates`` when ``data`` holds something else."""
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        return 'not PEM certificates'
    return [dict(certificate_facts(cert), public_key_fingerprint=public_key_fingerprint(cert.public_key()))
            for cert in certificates]


def certificate_file_facts(path):
    """pem_certificates_facts() of the file ``path``; None when there is no such file."""
    if not os.path.exists(path):
        return None
    try:
        with open(path, 'rb') as handle:
            return pem_certificates_facts(handle.read())
    except OSError:
        return 'not readable'


# ---- certificate requests -------------------------------------------------------------------

def _compact(name):
    return re.sub(r'[\s_-]', '', name).lower()


if HAS_CRYPTOGRAPHY:
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
    from cryptography.x509.oid import AttributeOID, ExtendedKeyUsageOID, NameOID, ObjectIdentifier

    _NAME_OIDS = {
        'cn': NameOID.COMMON_NAME, 'commonname': NameOID.COMMON_NAME,
        'o': NameOID.ORGANIZATION_NAME, 'organizationname': NameOID.ORGANIZATION_NAME,
        'ou': NameOID.ORGANIZATIONAL_UNIT_NAME, 'organizationalunitname': NameOID.ORGANIZATIONAL_UNIT_NAME,
        'c': NameOID.COUNTRY_NAME, 'countryname': NameOID.COUNTRY_NAME,
        'st': NameOID.STATE_OR_PROVINCE_NAME, 'stateorprovincename': NameOID.STATE_OR_PROVINCE_NAME,
        'l': NameOID.LOCALITY_NAME, 'localityname': NameOID.LOCALITY_NAME,
        'emailaddress': NameOID.EMAIL_ADDRESS, 'email': NameOID.EMAIL_ADDRESS,
        'serialnumber': NameOID.SERIAL_NUMBER,
        'dc': NameOID.DOMAIN_COMPONENT, 'domaincomponent': NameOID.DOMAIN_COMPONENT,
        'uid': NameOID.USER_ID, 'userid': NameOID.USER_ID,
        'title': NameOID.TITLE, 'givenname': NameOID.GIVEN_NAME, 'gn': NameOID.GIVEN_NAME,
        'sn': NameOID.SURNAME, 'surname': NameOID.SURNAME, 'street': NameOID.STREET_ADDRESS,
        'streetaddress': NameOID.STREET_ADDRESS, 'postalcode': NameOID.POSTAL_CODE,
        'organizationidentifier': NameOID.ORGANIZATION_IDENTIFIER, 'pseudonym': NameOID.PSEUDONYM,
    }
    _KEY_USAGES = {
        'digitalsignature': 'digital_signature', 'nonrepudiation': 'content_commitment',
        'contentcommitment': 'content_commitment', 'keyencipherment': 'key_encipherment',
        'dataencipherment': 'data_encipherment', 'keyagreement': 'key_agreement',
        'keycertsign': 'key_cert_sign', 'certificatesign': 'key_cert_sign', 'crlsign': 'crl_sign',
        'encipheronly': 'encipher_only', 'decipheronly': 'decipher_only',
    }
    _KEY_USAGE_NAMES = (
        ('digital_signature', 'digitalSignature'), ('content_commitment', 'nonRepudiation'),
        ('key_encipherment', 'keyEncipherment'), ('data_encipherment', 'dataEncipherment'),
        ('key_agreement', 'keyAgreement'), ('key_cert_sign', 'keyCertSign'), ('crl_sign', 'cRLSign'),
        ('encipher_only', 'encipherOnly'), ('decipher_only', 'decipherOnly'))
    _KEY_USAGE_FLAGS = tuple(flag for flag, dummy in _KEY_USAGE_NAMES)
    _EXTENDED_KEY_USAGE_NAMES = dict((oid, name) for name, oid in (
        ('serverAuth', ExtendedKeyUsageOID.SERVER_AUTH), ('clientAuth', ExtendedKeyUsageOID.CLIENT_AUTH),
        ('codeSigning', ExtendedKeyUsageOID.CODE_SIGNING), ('emailProtection', ExtendedKeyUsageOID.EMAIL_PROTECTION),
        ('timeStamping', ExtendedKeyUsageOID.TIME_STAMPING), ('OCSPSigning', ExtendedKeyUsageOID.OCSP_SIGNING),
        ('ipsecIKE', ExtendedKeyUsageOID.IPSEC_IKE), ('smartcardLogon', ExtendedKeyUsageOID.SMARTCARD_LOGON),
        ('anyExtendedKeyUsage', ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE)))
    _EXTENDED_KEY_USAGE_NAMES.update((ObjectIdentifier('1.3.6.1.5.5.7.3.%d' % n), name) for n, name in (
        (5, 'ipsecEndSystem'), (6, 'ipsecTunnel'), (7, 'ipsecUser')))
    _EXTENDED_KEY_USAGES = dict((_compact(name), oid) for oid, name in _EXTENDED_KEY_USAGE_NAMES.items())
    _DIGESTS = {'sha256': hashes.SHA256, 'sha384': hashes.SHA384, 'sha512': hashes.SHA512}
    _CURVE_DIGEST = {256: 'sha256', 384: 'sha384', 521: 'sha512'}

_OID_PATTERN = r'^[0-2](\.(0|[1-9][0-9]*))+$'
_DNS_LABEL = r'(?!-)[A-Za-z0-9-]{1,63}(?<!-)'
_DNS_PATTERN = r'^(\*\.)?%s(\.%s)*\.?$' % (_DNS_LABEL, _DNS_LABEL)


class RequestError(PkiError):
    """Request options that cannot make a valid request; the message names the option."""


def _parse_oid(value, option):
    if not re.match(_OID_PATTERN, value):
        raise RequestError('%s: %r is neither a known name nor a dotted OID such as 1.3.6.1.5.5.7.3.17' % (option, value))
    return ObjectIdentifier(value)


def _name_oid(name):
    return _NAME_OIDS.get(_compact(name)) or _parse_oid(name, 'subject attribute')


def _subject_pairs(subject):
    """(name, value) pairs from a dict (values may be lists) or a list of one-entry dicts or [name, value] pairs."""
    if subject is None:
        return []
    if isinstance(subject, dict):
        items = list(subject.items())
    elif isinstance(subject, list):
        items = []
        for entry in subject:
            if isinstance(entry, dict) and len(entry) == 1:
                items.extend(entry.items())
            elif isinstance(entry, (list, tuple)) and len(entry) == 2:
                items.append(tuple(entry))
            else:
                raise RequestError('subject: each list entry must be a one-key dict or a [name, value] pair, got %r' % (entry,))
    else:
        raise RequestError('subject must be a dict or a list of name/value pairs')
    pairs = []
    for name, value in items:
        for single in value if isinstance(value, list) else [value]:
            pairs.append((str(name), str(single)))
    return pairs


SUBJECT_SHORTCUTS = (
    ('country_name', 'C'), ('state_or_province_name', 'ST'), ('locality_name', 'L'),
    ('organization_name', 'O'), ('organizational_unit_name', 'OU'), ('common_name', 'CN'),
    ('email_address', 'emailAddress'),
)


def build_subject(params):
    attributes = []
    for name, value in _subject_pairs(params.get('subject')):
        attributes.append((_name_oid(name), value, 'subject.%s' % name))
    for option, short in SUBJECT_SHORTCUTS:
        if params.get(option) is not None:
            oid = _NAME_OIDS[_compact(short)]
            if any(existing == oid for existing, dummy, dummy2 in attributes):
                raise RequestError('%s and subject both set %s; give it once' % (option, short))
            attributes.append((oid, params[option], option))
    result = []
    for oid, value, option in attributes:
        if oid == NameOID.COUNTRY_NAME and not re.match(r'^[A-Za-z]{2}$', value):
            raise RequestError('%s must be a two-letter country code such as PL or NO (got %r)' % (option, value))
        if value == '':
            raise RequestError('%s must not be empty' % option)
        try:
            result.append(x509.NameAttribute(oid, value))
        except ValueError as exc:
            raise RequestError('%s: %s' % (option, exc))
    return x509.Name(result)


def _is_ip(value):
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def parse_general_name(entry):
    kind, sep, value = entry.partition(':')
    kind = kind.strip().lower()
    if not sep or not value:
        raise RequestError('subject_alt_name entry %r must look like DNS:name, IP:address, email:address or URI:uri' % entry)
    if kind == 'dns':
        if _is_ip(value):
            raise RequestError('subject_alt_name entry %r is an IP address used as a DNS name; write IP:%s' % (entry, value))
        if not re.match(_DNS_PATTERN, value):
            raise RequestError('subject_alt_name entry %r is not a valid DNS name' % entry)
        return x509.DNSName(value)
    if kind in ('ip', 'ip address'):
        try:
            return x509.IPAddress(ipaddress.ip_address(value))
        except ValueError:
            raise RequestError('subject_alt_name entry %r is not a valid IPv4 or IPv6 address' % entry)
    if kind == 'email':
        if not re.match(r'^[^@\s]+@[^@\s]+$', value):
            raise RequestError('subject_alt_name entry %r is not a valid email address' % entry)
        return x509.RFC822Name(value)
    if kind == 'uri':
        if not re.match(r'^[A-Za-z][A-Za-z0-9+.-]*:\S+$', value):
            raise RequestError('subject_alt_name entry %r is not a valid URI' % entry)
        return x509.UniformResourceIdentifier(value)
    raise RequestError('subject_alt_name entry %r has unknown type %r (use DNS, IP, email or URI)' % (entry, kind))


def general_name_text(name):
    prefix = {x509.DNSName: 'DNS', x509.IPAddress: 'IP', x509.RFC822Name: 'email',
              x509.UniformResourceIdentifier: 'URI'}.get(type(name), type(name).__name__)
    return '%s:%s' % (prefix, name.value)


def _common_name_san(common_name):
    if common_name is None:
        return []
    if _is_ip(common_name):
        return [x509.IPAddress(ipaddress.ip_address(common_name))]
    if re.match(_DNS_PATTERN, common_name):
        return [x509.DNSName(common_name)]
    return []


def _key_usage(values, option):
    flags = dict((flag, False) for flag in _KEY_USAGE_FLAGS)
    for value in values:
        flag = _KEY_USAGES.get(_compact(value))
        if flag is None:
            raise RequestError('%s: unknown key usage %r (known: digitalSignature, nonRepudiation, keyEncipherment, '
                               'dataEncipherment, keyAgreement, keyCertSign, cRLSign, encipherOnly, decipherOnly)'
                               % (option, value))
        flags[flag] = True
    if (flags['encipher_only'] or flags['decipher_only']) and not flags['key_agreement']:
        raise RequestError('%s: encipherOnly and decipherOnly need keyAgreement' % option)
    return x509.KeyUsage(**flags)


def _extended_key_usage(values, option):
    usages = []
    for value in values:
        oid = _EXTENDED_KEY_USAGES.get(_compact(value)) or _parse_oid(value, option)
        if oid not in usages:
            usages.append(oid)
    return x509.ExtendedKeyUsage(usages)


def _basic_constraints(values, option):
    ca, path_length = None, None
    for value in values:
        name, sep, setting = value.partition(':')
        name = name.strip().lower()
        if name == 'ca' and setting.strip().upper() in ('TRUE', 'FALSE'):
            ca = setting.strip().upper() == 'TRUE'
        elif name == 'pathlen' and setting.strip().isdigit():
            path_length = int(setting)
        else:
            raise RequestError('%s: %r must be CA:TRUE, CA:FALSE or pathlen:N' % (option, value))
    if ca is None:
        raise RequestError('%s needs CA:TRUE or CA:FALSE' % option)
    if path_length is not None and not ca:
        raise RequestError('%s: pathlen applies to CA:TRUE only' % option)
    return x509.BasicConstraints(ca=ca, path_length=path_length)


class RequestSpec(object):
    """What a certificate request must contain, validated from module parameters."""

    def __init__(self, params):
        self.subject = build_subject(params)
        sans = [parse_general_name(entry) for entry in params.get('subject_alt_name') or []]
        if not sans and params.get('use_common_name_for_san', True):
            common_names = self.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
            sans = _common_name_san(common_names[0].value if common_names else None)
        self.subject_alt_names = sans
        self.extensions = []
        if sans:
            self.extensions.append((x509.SubjectAlternativeName(sans), bool(params.get('subject_alt_name_critical'))))
        for option, build in (('key_usage', _key_usage), ('extended_key_usage', _extended_key_usage),
                              ('basic_constraints', _basic_constraints)):
            if params.get(option):
                self.extensions.append((build(params[option], option), bool(params.get(option + '_critical'))))
        # Empty means none (a blank AWX credential field or an unset SCEP_CHALLENGE_PASSWORD).
        self.challenge_password = params.get('challenge_password') or None
        self.digest = params.get('digest')
        self.rsa_padding = params.get('rsa_padding') or 'pkcs1v15'

    def signature_options(self, private_key):
        """(hash algorithm or None, extra keyword arguments for the builder's sign())."""
        if isinstance(private_key, ed25519.Ed25519PrivateKey):
            if self.digest is not None:
                raise RequestError('digest does not apply to Ed25519 keys, which hash internally; omit it')
            if self.rsa_padding != 'pkcs1v15':
                raise RequestError('rsa_padding applies to RSA keys only')
            return None, {}
        if isinstance(private_key, ec.EllipticCurvePrivateKey):
            if self.rsa_padding != 'pkcs1v15':
                raise RequestError('rsa_padding applies to RSA keys only, not to EC keys')
            return _DIGESTS[self.digest or _CURVE_DIGEST.get(private_key.key_size, 'sha256')](), {}
        if isinstance(private_key, rsa.RSAPrivateKey):
            algorithm = _DIGESTS[self.digest or 'sha256']()
            if self.rsa_padding == 'pss':
                return algorithm, {'rsa_padding': padding.PSS(padding.MGF1(algorithm), padding.PSS.DIGEST_LENGTH)}
            return algorithm, {'rsa_padding': padding.PKCS1v15()}
        raise RequestError('keys of type %s cannot sign requests' % type(private_key).__name__)

    def build(self, private_key):
        algorithm, options = self.signature_options(private_key)
        builder = x509.CertificateSigningRequestBuilder().subject_name(self.subject)
        for extension, critical in self.extensions:
            builder = builder.add_extension(extension, critical=critical)
        if self.challenge_password is not None:
            builder = builder.add_attribute(AttributeOID.CHALLENGE_PASSWORD, self.challenge_password.encode('utf-8'))
        return builder.sign(private_key, algorithm, **options)

    def differences(self, csr, private_key):
        """Why an existing request does not fulfil this spec (empty when it does)."""
        reasons = []
        if public_key_der(csr.public_key()) != public_key_der(private_key.public_key()):
            reasons.append('it is for another key')
        elif not csr.is_signature_valid:
            reasons.append('its signature is not valid')
        if csr.subject != self.subject:
            reasons.append('the subject differs')
        wanted = dict((type(ext).__name__, (ext, critical)) for ext, critical in self.extensions)
        present = dict((type(ext.value).__name__, (ext.value, ext.critical)) for ext in csr.extensions)
        for name in sorted(set(wanted) | set(present)):
            if wanted.get(name) != present.get(name):
                reasons.append('the %s extension differs' % name)
        if request_challenge_password(csr) != self.challenge_password:
            reasons.append('the challenge password differs')
        algorithm, options = self.signature_options(private_key)
        if (csr.signature_hash_algorithm.name if csr.signature_hash_algorithm else None) != (algorithm.name if algorithm else None):
            reasons.append('it is signed with another digest')
        elif isinstance(options.get('rsa_padding'), padding.PSS) != isinstance(csr.signature_algorithm_parameters, padding.PSS):
            reasons.append('it is signed with another RSA padding')
        return reasons


def request_challenge_password(csr):
    try:
        value = csr.attributes.get_attribute_for_oid(AttributeOID.CHALLENGE_PASSWORD).value
    except x509.AttributeNotFound:
        return None
    return value.decode('utf-8', 'replace')


def load_request(data, source):
    try:
        if b'-----BEGIN' in data:
            return x509.load_pem_x509_csr(data)
        return x509.load_der_x509_csr(data)
    except ValueError as exc:
        raise RequestError('%s is not a PEM or DER certificate request: %s' % (source, exc))


def request_facts(csr):
    """Metadata of a request for results and --diff (never the challenge password)."""
    facts = dict(subject=csr.subject.rfc4514_string(), subject_alt_name=[], key_usage=None, extended_key_usage=None,
                 basic_constraints=None, challenge_password_set=request_challenge_password(csr) is not None,
                 public_key_fingerprint=public_key_fingerprint(csr.public_key()))
    for ext in csr.extensions:
        value = ext.value
        if isinstance(value, x509.SubjectAlternativeName):
            facts['subject_alt_name'] = [general_name_text(name) for name in value]
        elif isinstance(value, x509.KeyUsage):
            facts['key_usage'] = [name for flag, name in _KEY_USAGE_NAMES if _key_usage_flag(value, flag)]
        elif isinstance(value, x509.ExtendedKeyUsage):
            facts['extended_key_usage'] = [_EXTENDED_KEY_USAGE_NAMES.get(oid, oid.dotted_string) for oid in value]
        elif isinstance(value, x509.BasicConstraints):
            facts['basic_constraints'] = ['CA:%s' % ('TRUE' if value.ca else 'FALSE')] + (
                ['pathlen:%d' % value.path_length] if value.path_length is not None else [])
    return facts


def _key_usage_flag(usage, flag):
    try:
        return getattr(usage, flag)
    except ValueError:  # encipher_only/decipher_only are undefined without key_agreement
        return False


def request_argument_spec():
    """Options describing a request's content (``tokenfleet.pki.request`` fragment), shared with scep_enroll."""
    critical = dict(type='bool', default=False)
    return dict(
        subject=dict(type='raw'),
        common_name=dict(type='str', aliases=['CN']),
        organization_name=dict(type='str', aliases=['O']),
        organizational_unit_name=dict(type='str', aliases=['OU']),
        country_name=dict(type='str', aliases=['C']),
        state_or_province_name=dict(type='str', aliases=['ST']),
        locality_name=dict(type='str', aliases=['L']),
        email_address=dict(type='str', aliases=['E']),
        subject_alt_name=dict(type='list', elements='str', aliases=['SAN']),
        subject_alt_name_critical=dict(critical),
        use_common_name_for_san=dict(type='bool', default=True),
        key_usage=dict(type='list', elements='str'),
        key_usage_critical=dict(critical),
        extended_key_usage=dict(type='list', elements='str'),
        extended_key_usage_critical=dict(critical),
        basic_constraints=dict(type='list', elements='str'),
        basic_constraints_critical=dict(critical),
        challenge_password=dict(type='str', no_log=True),
        digest=dict(type='str', choices=['sha256', 'sha384', 'sha512']),
        rsa_padding=dict(type='str', choices=['pkcs1v15', 'pss'], default='pkcs1v15'),
    )


def request_pem(csr):
    return csr.public_bytes(serialization.Encoding.PEM)
