# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations


class ModuleDocFragment(object):
    """What a certificate request contains; shared by csr and scep_enroll."""

    DOCUMENTATION = r"""
options:
  subject:
    description:
      - "The subject, as a dictionary (for example V({CN: printer01.example.com, O: Example}); a value may be a list) or as a list of
        one-key dictionaries or V([name, value]) pairs when the order matters."
      - Names are the usual short or long ones (V(CN), V(commonName), V(O), V(OU), V(C), V(ST), V(L), V(emailAddress),
        V(serialNumber), V(DC), V(UID), V(title), V(givenName), V(SN), V(street), V(postalCode),
        V(organizationIdentifier), V(pseudonym)) or dotted OIDs.
      - The shortcut options below are added after these entries; giving the same attribute both ways is an error.
    type: raw
  common_name:
    description:
      - Common name (CN); for a device its FQDN or IP address, for an integration its domain.
    type: str
    aliases: [CN]
  organization_name:
    description: Organisation (O).
    type: str
    aliases: [O]
  organizational_unit_name:
    description: Organisational unit (OU).
    type: str
    aliases: [OU]
  country_name:
    description: Country (C), a two-letter code such as V(PL).
    type: str
    aliases: [C]
  state_or_province_name:
    description: State or province (ST).
    type: str
    aliases: [ST]
  locality_name:
    description: Locality (L).
    type: str
    aliases: [L]
  email_address:
    description: Email address attribute of the subject.
    type: str
    aliases: [E]
  subject_alt_name:
    description:
      - Subject alternative names, each V(DNS:name), V(IP:address), V(email:address) or V(URI:uri).
      - An IP address written as V(DNS:) is an error.
    type: list
    elements: str
    aliases: [SAN]
  subject_alt_name_critical:
    description: Mark the subject alternative name extension critical.
    type: bool
    default: false
  use_common_name_for_san:
    description:
      - When no O(subject_alt_name) is given, put the common name in the request as a V(DNS:) or V(IP:) name,
        as browsers and most TLS clients only look there. A common name that is neither is left out.
    type: bool
    default: true
  key_usage:
    description:
      - Key usage, any of V(digitalSignature), V(nonRepudiation), V(keyEncipherment), V(dataEncipherment), V(keyAgreement),
        V(keyCertSign), V(cRLSign), V(encipherOnly), V(decipherOnly) (spaces and case do not matter).
    type: list
    elements: str
  key_usage_critical:
    description: Mark the key usage extension critical.
    type: bool
    default: false
  extended_key_usage:
    description:
      - Extended key usage, any of V(serverAuth), V(clientAuth), V(codeSigning), V(emailProtection), V(timeStamping),
        V(OCSPSigning), V(ipsecIKE), V(ipsecEndSystem), V(ipsecTunnel), V(ipsecUser), V(smartcardLogon),
        V(anyExtendedKeyUsage), or dotted OIDs.
      - A printer's "key use" setting maps to V(serverAuth) (TLS) or V(ipsecIKE) (IPsec).
    type: list
    elements: str
  extended_key_usage_critical:
    description: Mark the extended key usage extension critical.
    type: bool
    default: false
  basic_constraints:
    description: Basic constraints, V(CA:TRUE) or V(CA:FALSE), optionally with V(pathlen:N) for a CA.
    type: list
    elements: str
  basic_constraints_critical:
    description: Mark the basic constraints extension critical.
    type: bool
    default: false
  challenge_password:
    description:
      - The PKCS#9 challenge password attribute, which SCEP servers use to authorise a request.
      - It is never logged or returned; a request file that carries it is written with mode V(0600) unless O(mode)
        says otherwise.
    type: str
  digest:
    description:
      - Hash of the request's signature. Defaults to V(sha256) for RSA keys and to the curve's size for EC keys
        (V(sha256) for P-256, V(sha384) for P-384, V(sha512) for P-521). Ed25519 keys take no digest.
    type: str
    choices: [sha256, sha384, sha512]
  rsa_padding:
    description: Signature padding of an RSA key.
    type: str
    choices: [pkcs1v15, pss]
    default: pkcs1v15
"""
