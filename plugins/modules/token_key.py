#!/usr/bin/python
# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: token_key
short_description: Generate or delete a key pair on a PKCS#11 token
version_added: 0.1.0
description:
  - Makes sure a key pair with a given label exists on a PKCS#11 token (hardware token, smart card, HSM or SoftHSM),
    or that it does not.
  - New private keys are token objects, private, sensitive and non-extractable; the public half is a public token
    object. Both halves share one CKA_ID, so certificates written with M(tokenfleet.pki.token_cert) pair with them.
  - An existing key of the requested type and size or curve is left alone; its usage flags and id are aligned when
    they differ. A key of another type, size or curve is an error unless O(force=true).
  - A replace (O(force=true)) makes the new pair as V(<label>.new) first. Then it removes the old pair and its
    certificates, and gives the label to the new pair by copying it and removing the original. A run that finds a V(<label>.new) private key left by a killed
    replace completes that replace first (action V(completed an interrupted replace)). Do not use V(<label>.new) for
    keys of your own.
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
      - V(present) makes sure the key pair exists; V(absent) deletes the private key, the public key and every
        certificate with the key's id.
    type: str
    choices: [present, absent]
    default: present
  label:
    description:
      - Label (CKA_LABEL) of the key pair; it identifies the key on the token.
      - Must match O(label_pattern).
    type: str
    required: true
  label_pattern:
    description:
      - Regular expression every O(label) must match.
      - A site that also administers its tokens with sToken KeyAdmin sets V(^[A-Za-z0-9]{1,20}$), the names that tool accepts.
    type: str
    default: '^[A-Za-z0-9._-]{1,32}$'
  id:
    description:
      - Key id (CKA_ID) in hexadecimal, for example V(01) or V(a1:b2:c3).
      - When not given, a new key gets the RFC 5280 key identifier of its public key (SHA-1 of the public key bits),
        which is stable and matches the Subject Key Identifier most CAs put in its certificates.
      - When given and an existing key has another id, the id of the key pair and of its certificates is changed.
    type: str
  type:
    description:
      - Key type.
    type: str
    choices: [rsa, ec, ed25519]
    default: rsa
  size:
    description:
      - RSA modulus size in bits, for O(type=rsa) only. Defaults to V(2048).
    type: int
    choices: [2048, 3072, 4096]
  curve:
    description:
      - Elliptic curve, for O(type=ec) only. Defaults to V(secp256r1).
    type: str
    choices: [secp256r1, secp384r1, secp521r1]
  usage:
    description:
      - What the key may be used for. V(sign) also allows verifying with the public key, V(decrypt) encrypting,
        V(unwrap) wrapping.
      - Defaults to V([sign, decrypt]) for RSA and V([sign]) for EC and Ed25519.
      - V(decrypt) and V(unwrap) are for RSA only, V(derive) for EC only.
    type: list
    elements: str
    choices: [sign, decrypt, derive, unwrap]
  extractable:
    description:
      - Whether a new private key may ever leave the token (wrapped). Keep V(false) unless a key escrow process needs it.
    type: bool
    default: false
  force:
    description:
      - Replace an existing key of another type, size or curve. The new key is generated first; then the old key pair
        and the certificates with its id are deleted.
    type: bool
    default: false
seealso:
  - module: tokenfleet.pki.token_info
  - module: tokenfleet.pki.token_cert
  - module: tokenfleet.pki.token_init
"""

EXAMPLES = r"""
---
- name: Make sure the VPN key exists on the workstation's token
  tokenfleet.pki.token_key:
    pkcs11_module: /usr/lib/x86_64-linux-gnu/opensc-pkcs11.so
    token_label: "{{ inventory_hostname }}"
    user_pin: "{{ token_user_pin }}"
    label: vpn
    type: ec
    curve: secp384r1
  register: vpn_key

- name: Show the public key to send to the CA
  ansible.builtin.debug:
    var: vpn_key.public_key

- name: An sToken KeyAdmin compatible RSA key with a fixed id
  tokenfleet.pki.token_key:
    pkcs11_module: /usr/lib/libstoken.so
    token_serial: "0123456789abcdef"
    user_pin: "{{ token_user_pin }}"
    label: Podpis2026
    label_pattern: '^[A-Za-z0-9]{1,20}$'
    id: "01"
    size: 3072

- name: Delete an old key and its certificate
  tokenfleet.pki.token_key:
    pkcs11_module: /usr/lib/softhsm/libsofthsm2.so
    token_label: ws-001
    label: vpn-2024
    state: absent
"""

RETURN = r"""
label:
  description: Label of the key pair.
  returned: always
  type: str
  sample: vpn
id:
  description: CKA_ID of the key pair in hexadecimal. In check mode, V(null) for a key that would be generated without O(id).
  returned: when O(state=present)
  type: str
  sample: 3f1a4c0d9e8b7a6f5e4d3c2b1a0f9e8d7c6b5a49
type:
  description: Key type.
  returned: when O(state=present)
  type: str
  sample: ec
size:
  description: Key size in bits.
  returned: when O(state=present)
  type: int
  sample: 384
curve:
  description: Curve of an EC key, V(null) for other types.
  returned: when O(state=present)
  type: str
  sample: secp384r1
usage:
  description: Usage flags of the private key.
  returned: when O(state=present)
  type: list
  elements: str
  sample: [sign]
sensitive:
  description: Whether the private key is sensitive (its secret parts cannot be read).
  returned: when O(state=present)
  type: bool
  sample: true
extractable:
  description: Whether the private key can be extracted (wrapped).
  returned: when O(state=present)
  type: bool
  sample: false
public_key:
  description: Public key (PEM SubjectPublicKeyInfo). V(null) in check mode for a key that would be generated.
  returned: when O(state=present)
  type: str
  sample: "-----BEGIN PUBLIC KEY-----\nMHYwEAYHKoZIzj0CAQYFK4EEACIDYgAE...\n-----END PUBLIC KEY-----\n"
public_key_fingerprint:
  description: SHA-256 of the DER public key, colon-separated hex.
  returned: when O(state=present)
  type: str
  sample: "9c:3e:...:01"
uri:
  description: RFC 7512 PKCS#11 URI of the private key, for tools such as OpenSSL's pkcs11 provider or p11tool.
  returned: when O(state=present)
  type: str
  sample: "pkcs11:token=ws-001;serial=b3d5a101d5b35196;id=%3F%1A;object=vpn;type=private"
actions:
  description: What was done (or would be done in check mode), for example V(generate), V(replace), V(set usage).
  returned: always
  type: list
  elements: str
  sample: [generate]
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.tokenfleet.pki.plugins.module_utils.backends.token_key import (
    DEFAULT_LABEL_PATTERN,
    TokenKeyBackend,
)
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
        label=dict(type='str', required=True),
        label_pattern=dict(type='str', default=DEFAULT_LABEL_PATTERN),
        id=dict(type='str'),
        type=dict(type='str', choices=['rsa', 'ec', 'ed25519'], default='rsa'),
        size=dict(type='int', choices=[2048, 3072, 4096]),
        curve=dict(type='str', choices=['secp256r1', 'secp384r1', 'secp521r1']),
        usage=dict(type='list', elements='str', choices=['sign', 'decrypt', 'derive', 'unwrap']),
        extractable=dict(type='bool', default=False),
        force=dict(type='bool', default=False),
    )
    module = AnsibleModule(argument_spec=argument_spec, mutually_exclusive=TOKEN_MUTUALLY_EXCLUSIVE,
                           supports_check_mode=True)
    require_pkcs11(module)
    require_cryptography(module)
    run_backend(module, TokenKeyBackend)


if __name__ == '__main__':
    main()
