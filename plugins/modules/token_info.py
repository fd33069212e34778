#!/usr/bin/python
# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: token_info
short_description: List PKCS#11 tokens, their state, keys and certificates
version_added: 0.1.0
description:
  - Lists every token a PKCS#11 module sees, initialised or not, with its slot, label, serial, manufacturer, model,
    user and SO PIN state, PIN length limits and free memory where the token reports them, and mechanisms.
  - For the token selected by O(token_label) or O(token_serial) (or the only initialised one when O(user_pin) is
    given) it also lists the certificates, and with O(user_pin) the keys.
  - Changes nothing. A wrong O(user_pin) is tried once.
author:
  - tokenfleet.pki contributors (@tokenfleet)
extends_documentation_fragment:
  - tokenfleet.pki.token.module
  - tokenfleet.pki.token
  - tokenfleet.pki.token.attributes
attributes:
  check_mode:
    support: full
    details: This module changes nothing, so it runs the same in check mode.
  diff_mode:
    support: N/A
    details: This module changes nothing.
seealso:
  - module: tokenfleet.pki.token_key
  - module: tokenfleet.pki.token_cert
"""

EXAMPLES = r"""
---
- name: Inventory of the tokens of a workstation
  tokenfleet.pki.token_info:
    pkcs11_module: /usr/lib/x86_64-linux-gnu/opensc-pkcs11.so
  register: tokens

- name: Show label, serial and user PIN state of each token
  ansible.builtin.debug:
    msg: "{{ item.label }} {{ item.serial }} locked={{ item.user_pin.locked }}"
  loop: "{{ tokens.tokens }}"

- name: Keys and certificates of one token
  tokenfleet.pki.token_info:
    pkcs11_module: /usr/lib/softhsm/libsofthsm2.so
    token_label: ws-001
    user_pin: "{{ token_user_pin }}"
  register: ws001

- name: Fail when a certificate on the token expires within 30 days
  ansible.builtin.assert:
    that: (item.not_after | to_datetime('%Y-%m-%dT%H:%M:%SZ') - now(utc=true)).days >= 30
    fail_msg: "{{ item.label }} expires on {{ item.not_after }}"
  loop: "{{ ws001.tokens[0].certificates }}"
"""

RETURN = r"""
library:
  description: The PKCS#11 module.
  returned: always
  type: dict
  contains:
    path:
      description: Resolved path of the module.
      type: str
      sample: /usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so
    manufacturer:
      description: Manufacturer of the module.
      type: str
      sample: SoftHSM
    description:
      description: Description of the module.
      type: str
      sample: Implementation of PKCS11
    version:
      description: Version of the module.
      type: str
      sample: '2.6'
    cryptoki_version:
      description: PKCS#11 version the module implements.
      type: str
      sample: '2.40'
tokens:
  description: Every token present (only the selected one when O(token_label) or O(token_serial) is given).
  returned: always
  type: list
  elements: dict
  contains:
    slot_id:
      description: Slot id during this run; it can change between runs, select tokens by label or serial.
      type: int
      sample: 1437815190
    slot_description:
      description: Description of the slot.
      type: str
      sample: SoftHSM slot ID 0x55b3a7d6
    label:
      description: Token label (empty for a token that is not initialised).
      type: str
      sample: ws-001
    serial:
      description: Token serial number.
      type: str
      sample: b3d5a101d5b35196
    manufacturer:
      description: Token manufacturer.
      type: str
      sample: SoftHSM project
    model:
      description: Token model.
      type: str
      sample: SoftHSM v2
    hardware_version:
      description: Hardware version.
      type: str
      sample: '2.6'
    firmware_version:
      description: Firmware version.
      type: str
      sample: '2.6'
    initialized:
      description: Whether the token is initialised.
      type: bool
      sample: true
    login_required:
      description: Whether keys need a login.
      type: bool
      sample: true
    write_protected:
      description: Whether the token is write protected.
      type: bool
      sample: false
    protected_authentication_path:
      description: Whether the token has a PIN pad or similar, so that no PIN goes through the library.
      type: bool
      sample: false
    user_pin:
      description: User PIN state flags (V(initialized), V(count_low), V(final_try), V(locked), V(to_be_changed)).
      type: dict
      sample: {initialized: true, count_low: false, final_try: false, locked: false, to_be_changed: false}
    so_pin:
      description: SO PIN state flags (V(count_low), V(final_try), V(locked), V(to_be_changed)).
      type: dict
      sample: {count_low: false, final_try: false, locked: false, to_be_changed: false}
    min_pin_length:
      description: Shortest PIN the token accepts, V(null) if it does not say.
      type: int
      sample: 4
    max_pin_length:
      description: Longest PIN the token accepts, V(null) if it does not say.
      type: int
      sample: 255
    total_public_memory:
      description: Public memory in bytes, V(null) where the token does not report it.
      type: int
      sample: null
    free_public_memory:
      description: Free public memory in bytes, V(null) where the token does not report it.
      type: int
      sample: null
    total_private_memory:
      description: Private memory in bytes, V(null) where the token does not report it.
      type: int
      sample: null
    free_private_memory:
      description: Free private memory in bytes, V(null) where the token does not report it.
      type: int
      sample: null
    mechanisms:
      description: Names of the mechanisms the token supports.
      type: list
      elements: str
      sample: [ECDSA, EC_KEY_PAIR_GEN, RSA_PKCS, RSA_PKCS_KEY_PAIR_GEN, SHA256_RSA_PKCS]
    keys:
      description: Private keys of the selected token, with their public halves.
      returned: with O(user_pin), for the selected token
      type: list
      elements: dict
      contains:
        label:
          description: Label of the key.
          type: str
        id:
          description: CKA_ID in hexadecimal.
          type: str
        type:
          description: V(rsa), V(ec) or V(ed25519).
          type: str
        size:
          description: Key size in bits.
          type: int
        curve:
          description: Curve of an EC key.
          type: str
        usage:
          description: Usage flags.
          type: list
          elements: str
        sensitive:
          description: Whether the private key is sensitive.
          type: bool
        extractable:
          description: Whether the private key is extractable.
          type: bool
        uri:
          description: RFC 7512 URI of the private key.
          type: str
        public_key:
          description: Public key in PEM, V(null) if the token holds no public half.
          type: str
        public_key_fingerprint:
          description: SHA-256 of the DER public key, colon-separated hex.
          type: str
    certificates:
      description: Certificates on the selected token.
      returned: for the selected token
      type: list
      elements: dict
      contains:
        label:
          description: Label of the certificate object.
          type: str
        id:
          description: CKA_ID in hexadecimal (equal to its key's id).
          type: str
        subject:
          description: Subject (RFC 4514).
          type: str
        issuer:
          description: Issuer (RFC 4514).
          type: str
        serial_number:
          description: Serial number in hexadecimal.
          type: str
        not_before:
          description: Start of validity (UTC, ISO 8601).
          type: str
        not_after:
          description: End of validity (UTC, ISO 8601).
          type: str
        fingerprint_sha256:
          description: SHA-256 fingerprint, colon-separated hex.
          type: str
        uri:
          description: RFC 7512 URI of the certificate.
          type: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.tokenfleet.pki.plugins.module_utils.backends.token_info import TokenInfoBackend
from ansible_collections.tokenfleet.pki.plugins.module_utils.common import run_backend
from ansible_collections.tokenfleet.pki.plugins.module_utils.token import (
    TOKEN_MUTUALLY_EXCLUSIVE,
    require_pkcs11,
    token_argument_spec,
)
from ansible_collections.tokenfleet.pki.plugins.module_utils.x509 import require_cryptography


def main():
    module = AnsibleModule(argument_spec=token_argument_spec(), mutually_exclusive=TOKEN_MUTUALLY_EXCLUSIVE,
                           supports_check_mode=True)
    require_pkcs11(module)
    require_cryptography(module)
    run_backend(module, TokenInfoBackend)


if __name__ == '__main__':
    main()
