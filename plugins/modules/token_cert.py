#!/usr/bin/python
# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: token_cert
short_description: Write, import or delete a certificate on a PKCS#11 token
version_added: 0.1.0
description:
  - Writes an X.509 certificate onto a PKCS#11 token (hardware token, smart card, HSM or SoftHSM) next to its key;
    the certificate object gets the key's id (CKA_ID) and, unless O(label) says otherwise, the key's label, so that
    applications pair them.
  - The key is found by comparing the certificate's public key with the keys on the token. A certificate whose public
    key matches no key on the token is refused unless O(allow_orphan=true).
  - A certificate object with the same label or id and the same content is left alone. A different certificate with
    that label or id is replaced; the new certificate is written and read back first, then the old one is deleted,
    so a failed run never leaves the key without a certificate.
  - With O(pkcs12_path), imports the private key and certificate of a PKCS#12 (C(.p12)/C(.pfx)) file, for example an
    ePUAP integration certificate, as a private, sensitive, non-extractable private key, its public key and the
    certificate, all with one id and label.
  - B(Crash safety.) The objects are written in this order, public key, private key, certificate, and stale
    certificates are deleted last. A run killed at any point leaves a prefix of that (or the old certificate next to
    the new one); the next run completes it. It adds the missing half of the p12 key (a lone EC private key is
    recognised by a test signature the p12's public key verifies), writes the missing certificate, and deletes every
    other certificate object with the label or id, duplicates included, so exactly one key pair and one certificate
    remain.
  - O(state=absent) deletes the certificate objects selected by O(label) and/or O(id), or the ones equal to the
    certificate in O(certificate_path) or O(certificate_content). Keys are not touched; delete a key and its
    certificates with M(tokenfleet.pki.token_key).
  - Every input is checked (files readable, certificate and PKCS#12 parsable, passphrase right, id hexadecimal, key
    present) before anything on the token is changed.
author:
  - tokenfleet.pki contributors (@tokenfleet)
extends_documentation_fragment:
  - tokenfleet.pki.token.module
  - tokenfleet.pki.token
  - tokenfleet.pki.token.attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
options:
  state:
    description:
      - V(present) makes sure the certificate is on the token; V(absent) deletes the selected certificate objects.
    type: str
    choices: [present, absent]
    default: present
  certificate_path:
    description:
      - Path of a PEM or DER certificate file on the managed host. When a PEM file holds several certificates, the first
        one is used.
      - Mutually exclusive with O(certificate_content) and O(pkcs12_path).
    type: path
  certificate_content:
    description:
      - The certificate as PEM text. When it holds several certificates, the first one is used.
      - Mutually exclusive with O(certificate_path) and O(pkcs12_path).
    type: str
  pkcs12_path:
    description:
      - Path of a PKCS#12 file (C(.p12), C(.pfx)) on the managed host whose private key and certificate are imported.
      - The private key is imported as a private, sensitive, non-extractable token object with the default usage of
        M(tokenfleet.pki.token_key) (RSA V([sign, decrypt]), EC V([sign])); its public key and the certificate are
        written next to it with the same id and label. Only RSA and EC keys can be imported.
      - Additional CA certificates in the file are ignored; write them with a separate task and O(allow_orphan=true)
        if applications need them on the token.
      - If a key with the certificate's public key is already on the token, it is not imported again. A different key
        with the same label or id is an error, the token is left untouched.
      - Requires O(label). For O(state=present) only.
    type: path
  pkcs12_passphrase:
    description:
      - Passphrase of O(pkcs12_path). It is never logged or returned.
      - If not set, the value of the E(PKCS12_PASSPHRASE) environment variable is used (for AWX credential types).
    type: str
  label:
    description:
      - Label (CKA_LABEL) of the certificate object.
      - Defaults to the label of the key the certificate belongs to. Required when that key is not on the token
        (O(allow_orphan=true)) and with O(pkcs12_path).
      - For O(state=absent), selects the certificates to delete (together with O(id) when both are given).
    type: str
  id:
    description:
      - Id (CKA_ID) of the certificate object in hexadecimal, for example V(01) or V(a1:b2:c3).
      - Defaults to the id of the key the certificate belongs to. Without a key on the token (O(allow_orphan=true) or
        O(pkcs12_path)), defaults to the RFC 5280 key identifier of the certificate's public key (SHA-1 of the public
        key bits), which is also what M(tokenfleet.pki.token_key) gives new keys.
      - For O(state=absent), selects the certificates to delete (together with O(label) when both are given).
    type: str
  allow_orphan:
    description:
      - Store a certificate whose public key matches no key on the token, for example a CA certificate.
        O(label) is then required.
    type: bool
    default: false
seealso:
  - module: tokenfleet.pki.token_key
  - module: tokenfleet.pki.token_info
  - module: tokenfleet.pki.token_init
"""

EXAMPLES = r"""
---
- name: Write the issued VPN certificate next to the VPN key
  tokenfleet.pki.token_cert:
    pkcs11_module: /usr/lib/x86_64-linux-gnu/opensc-pkcs11.so
    token_label: "{{ inventory_hostname }}"
    user_pin: "{{ token_user_pin }}"
    certificate_path: /etc/pki/issued/vpn.crt
  register: vpn_cert

- name: Show when it expires
  ansible.builtin.debug:
    msg: "{{ vpn_cert.subject }} is valid until {{ vpn_cert.not_after }}"

- name: Store the company CA certificate on the token (no key of its own there)
  tokenfleet.pki.token_cert:
    pkcs11_module: /usr/lib/softhsm/libsofthsm2.so
    token_label: ws-001
    user_pin: "{{ token_user_pin }}"
    certificate_content: "{{ lookup('ansible.builtin.file', 'company-ca.pem') }}"
    label: company-ca
    allow_orphan: true

- name: Import the ePUAP integration certificate and its key from the .p12
  tokenfleet.pki.token_cert:
    pkcs11_module: /usr/lib/softhsm/libsofthsm2.so
    token_label: epuap
    user_pin: "{{ token_user_pin }}"
    pkcs12_path: /root/epuap/system.p12
    pkcs12_passphrase: "{{ epuap_p12_password }}"
    label: epuap

- name: Delete the old VPN certificate (the key stays)
  tokenfleet.pki.token_cert:
    pkcs11_module: /usr/lib/softhsm/libsofthsm2.so
    token_label: ws-001
    label: vpn
    state: absent
"""

RETURN = r"""
label:
  description: Label of the certificate object (for O(state=absent), the O(label) given).
  returned: always
  type: str
  sample: vpn
id:
  description: CKA_ID of the certificate object in hexadecimal (for O(state=absent), the O(id) given).
  returned: always
  type: str
  sample: 3f1a4c0d9e8b7a6f5e4d3c2b1a0f9e8d7c6b5a49
subject:
  description: Subject of the certificate (RFC 4514).
  returned: when O(state=present)
  type: str
  sample: CN=ws-001.example.org,O=Example
issuer:
  description: Issuer of the certificate (RFC 4514).
  returned: when O(state=present)
  type: str
  sample: CN=Example Issuing CA,O=Example
serial_number:
  description: Serial number of the certificate in hexadecimal.
  returned: when O(state=present)
  type: str
  sample: 5f3a9c0e11
not_before:
  description: Start of the validity period (UTC, ISO 8601).
  returned: when O(state=present)
  type: str
  sample: "2026-01-01T00:00:00Z"
not_after:
  description: End of the validity period (UTC, ISO 8601).
  returned: when O(state=present)
  type: str
  sample: "2027-01-01T00:00:00Z"
fingerprint_sha256:
  description: SHA-256 fingerprint of the DER certificate, colon-separated hex.
  returned: when O(state=present)
  type: str
  sample: "4b:0e:...:9a"
uri:
  description: RFC 7512 PKCS#11 URI of the certificate object.
  returned: when O(state=present)
  type: str
  sample: "pkcs11:token=ws-001;serial=b3d5a101d5b35196;id=%3F%1A;object=vpn;type=cert"
key_found:
  description:
    - Whether a key with the certificate's public key was on the token when the module started.
    - V(false) for an orphan certificate, and for a O(pkcs12_path) key that is imported by this run.
  returned: when O(state=present)
  type: bool
  sample: true
actions:
  description:
    - What was done (or would be done in check mode), in order. V(import key) (from O(pkcs12_path)),
      V(import private key) or V(import public key) (the half of a p12 key an interrupted import left out),
      V(write certificate), V(delete 1 old certificate) (a replaced certificate, deleted after the new one was
      written), V(delete 1 certificate) (O(state=absent)). Empty when nothing changed.
  returned: always
  type: list
  elements: str
  sample: [write certificate, delete 1 old certificate]
"""

from ansible.module_utils.basic import AnsibleModule, env_fallback

from ansible_collections.tokenfleet.pki.plugins.module_utils.backends.token_cert import TokenCertBackend
from ansible_collections.tokenfleet.pki.plugins.module_utils.common import run_backend
from ansible_collections.tokenfleet.pki.plugins.module_utils.token import (
    TOKEN_MUTUALLY_EXCLUSIVE,
    require_pkcs11,
    token_argument_spec,
)
from ansible_collections.tokenfleet.pki.plugins.module_utils.x509 import require_cryptography


def main():
    argument_spec = token_argument_spec()
    argument_spec.update(
        state=dict(type='str', choices=['present', 'absent'], default='present'),
        certificate_path=dict(type='path'),
        certificate_content=dict(type='str'),
        pkcs12_path=dict(type='path'),
        pkcs12_passphrase=dict(type='str', no_log=True, fallback=(env_fallback, ['PKCS12_PASSPHRASE'])),
        label=dict(type='str'),
        id=dict(type='str'),
        allow_orphan=dict(type='bool', default=False),
    )
    module = AnsibleModule(
        argument_spec=argument_spec,
        mutually_exclusive=TOKEN_MUTUALLY_EXCLUSIVE + [('certificate_path', 'certificate_content', 'pkcs12_path')],
        required_if=[('state', 'present', ('certificate_path', 'certificate_content', 'pkcs12_path'), True)],
        required_by={'pkcs12_path': 'label'},
        supports_check_mode=True,
    )
    require_pkcs11(module)
    require_cryptography(module)
    run_backend(module, TokenCertBackend)


if __name__ == '__main__':
    main()
