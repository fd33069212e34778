#!/usr/bin/python
# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: token_init
short_description: Initialise a PKCS#11 token and set or change its user PIN
version_added: 0.1.0
description:
  - Initialises a PKCS#11 token with a label and SO PIN (C_InitToken), then sets its user PIN, as a device issuing
    portal does when it hands out a token. B(Initialising wipes every key and certificate on the token.)
  - A token that is already initialised with the requested O(label) is left alone unless O(force=true).
    Initialising a token that carries another label also needs O(force=true).
  - The user PIN is given, or generated at random (O(user_pin=random)) and written only to O(user_pin_path)
    with mode V(0600); it is never returned or printed.
  - O(new_user_pin) changes the user PIN of an initialised token.
author:
  - tokenfleet.pki contributors (@tokenfleet)
extends_documentation_fragment:
  - tokenfleet.pki.token.module
  - tokenfleet.pki.token.attributes
  - ansible.builtin.files
  - tokenfleet.pki.files
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
    details:
      - The token before and after (label, serial, slot, whether it and its user PIN are initialised, whether the
        user PIN is locked, and the O(new_user_pin_version) the token's PIN record names), never a PIN. In check mode
        the facts it would have; the serial and slot of a token to be initialised are V(null) there.
options:
  label:
    description:
      - Label the token gets (at most 32 bytes). It identifies the token in every other module (their C(token_label) option).
    type: str
    required: true
  token_serial:
    description:
      - Serial number of the token to initialise. Without it (and without O(slot_id)) the token already labelled
        O(label) is used, else the first token that is not initialised.
    type: str
  slot_id:
    description:
      - Id of the slot whose token is initialised, as M(tokenfleet.pki.token_info) reports it. Slot ids can change
        when tokens are initialised (SoftHSM renumbers them), so prefer O(token_serial).
    type: int
  so_pin:
    description:
      - The security officer (SO) PIN. Initialising sets it; re-initialising an initialised token needs the current one.
      - Needed to initialise, to set the first user PIN, and to reset the user PIN without the current one.
      - If not set, the value of the E(PKCS11_SO_PIN) environment variable is used.
    type: str
  user_pin:
    description:
      - The user PIN to set when the token is initialised or has no user PIN yet; V(random) generates one.
      - With O(new_user_pin), the current user PIN.
      - On a token that already has a user PIN and without O(new_user_pin), it is not used.
      - If not set, the value of the E(PKCS11_USER_PIN) environment variable is used.
    type: str
  user_pin_length:
    description:
      - Length of a generated user PIN (4 to 31).
    type: int
    default: 8
  user_pin_digits_only:
    description:
      - Generate a user PIN of digits only, for tokens and users that need that.
    type: bool
    default: false
  user_pin_path:
    description:
      - File the generated user PIN is written to (mode V(0600) unless O(mode) says otherwise). Required with
        O(user_pin=random).
      - The file is written before the PIN is set and put in place once the token accepted it, so the PIN is never
        only on the token.
    type: path
  new_user_pin:
    description:
      - Change the user PIN to this value. With O(user_pin) (the current PIN) the user changes it (C_SetPIN); without
        O(user_pin), the SO resets it with O(so_pin) (C_InitPIN), which also unblocks a locked user PIN.
      - B(One PIN try.) A run logs in with at most one user PIN, and a PIN the token refuses ends the run. A wrong PIN
        costs exactly one failed login per run, also when O(user_pin) and O(new_user_pin) are both wrong.
      - Which PIN is current cannot be learnt from a token without a login, so token_init keeps a record on the token,
        a public data object labelled C(tokenfleet.pki user PIN) (application C(tokenfleet.pki.token_init)) whose
        value is only C({"seq":...,"state":"set","version":...}), a write counter and the O(new_user_pin_version) of the PIN it set last. It holds
        nothing derived from a PIN (no hash, MAC or ciphertext), so it does not help anyone guess one.
      - When the record says token_init set O(new_user_pin) of this O(new_user_pin_version), the module logs in with
        O(new_user_pin) to confirm it and changes nothing. Otherwise it logs in with O(user_pin) and changes the PIN.
        In check mode it reads the record only and never logs in, so it cannot tell that a PIN is wrong.
      - Limits. A PIN changed outside token_init, or a record someone changed or removed, makes the module try the
        PIN that is no longer current; that run fails after one try and says which PIN it tried and why. Give the
        current PIN as O(user_pin) with a new O(new_user_pin_version) to go on. To confirm a PIN set outside
        token_init and record it, give it as both O(user_pin) and O(new_user_pin).
      - A run killed while changing the PIN leaves the record in state C(changing); the next run with the same
        O(new_user_pin_version) tries O(user_pin) and completes the change, or, if the token refuses O(user_pin),
        records that the change went through and fails; the run after that confirms O(new_user_pin).
    type: str
  new_user_pin_version:
    description:
      - A public name for O(new_user_pin), such as V(2026-12) or a change ticket. It is not secret and must not be a
        PIN, as it is stored in the record described in O(new_user_pin) for anyone to read.
      - It tells a repeated run (the token already has O(new_user_pin)) from the next rotation (O(user_pin) is the
        PIN the previous rotation set, O(new_user_pin) a newer one). Give every rotation a new value.
      - Without it, a token on which token_init recorded a PIN it set is taken to hold O(new_user_pin) (a repeated
        run); a later rotation without a new O(new_user_pin_version) then fails after one try.
      - At most 64 printable characters.
    type: str
  force:
    description:
      - Re-initialise the token even if it already carries O(label), or initialise a token that carries another
        label. This wipes the token, on every run.
    type: bool
    default: false
notes:
  - Secrets (O(so_pin), O(user_pin), O(new_user_pin)) are never logged or returned; a wrong PIN is tried once and
    ends the run (see O(new_user_pin)).
seealso:
  - module: tokenfleet.pki.token_info
  - module: tokenfleet.pki.token_key
"""

EXAMPLES = r"""
---
- name: Issue a workstation token with a random 8-digit user PIN
  tokenfleet.pki.token_init:
    pkcs11_module: /usr/lib/x86_64-linux-gnu/opensc-pkcs11.so
    label: "{{ inventory_hostname }}"
    so_pin: "{{ token_so_pin }}"
    user_pin: random
    user_pin_digits_only: true
    user_pin_path: /root/token-user-pin
  no_log: true

- name: Rotate the user PIN (reruns are no-ops once the new PIN is set; the next rotation gets a new version)
  tokenfleet.pki.token_init:
    pkcs11_module: /usr/lib/softhsm/libsofthsm2.so
    label: ws-001
    user_pin: "{{ old_user_pin }}"
    new_user_pin: "{{ new_user_pin }}"
    new_user_pin_version: "2026-12"

- name: Unblock a locked user PIN with the SO PIN
  tokenfleet.pki.token_init:
    pkcs11_module: /usr/lib/softhsm/libsofthsm2.so
    label: ws-001
    so_pin: "{{ token_so_pin }}"
    new_user_pin: "{{ new_user_pin }}"
"""

RETURN = r"""
label:
  description: Label of the token.
  returned: always
  type: str
  sample: ws-001
serial:
  description: Serial number of the token. V(null) in check mode when the token would be initialised.
  returned: always
  type: str
  sample: b3d5a101d5b35196
slot_id:
  description: Slot of the token during this run.
  returned: always
  type: int
  sample: 1437815190
user_pin_path:
  description: The file holding a generated user PIN (never the PIN itself).
  returned: always
  type: str
  sample: /root/token-user-pin
actions:
  description:
    - What was done, or would be done in check mode. V(initialise token), V(wipe and re-initialise token),
      V(set user PIN), V(change user PIN), V(reset user PIN as SO), V(record user PIN version) (user_pin equals
      new_user_pin, and the record on the token did not say so yet).
  returned: always
  type: list
  elements: str
  sample: [initialise token, set user PIN]
backup_file:
  description: Name of the copy of the previous O(user_pin_path) (it holds the previous PIN, with that file's mode).
  returned: when O(backup=true) and O(user_pin_path) was replaced
  type: str
  sample: /root/token-user-pin.2718.2026-11-21@10:12:44~
"""

from ansible.module_utils.basic import AnsibleModule, env_fallback

from ansible_collections.tokenfleet.pki.plugins.module_utils.backends.token_init import TokenInitBackend
from ansible_collections.tokenfleet.pki.plugins.module_utils.common import run_backend
from ansible_collections.tokenfleet.pki.plugins.module_utils.files import backup_argument_spec
from ansible_collections.tokenfleet.pki.plugins.module_utils.token import (
    pkcs11_module_argument_spec,
    require_pkcs11,
)


def main():
    argument_spec = pkcs11_module_argument_spec()
    argument_spec.update(
        label=dict(type='str', required=True),
        token_serial=dict(type='str', no_log=False),
        slot_id=dict(type='int'),
        so_pin=dict(type='str', no_log=True, fallback=(env_fallback, ['PKCS11_SO_PIN'])),
        user_pin=dict(type='str', no_log=True, fallback=(env_fallback, ['PKCS11_USER_PIN'])),
        user_pin_length=dict(type='int', default=8),
        user_pin_digits_only=dict(type='bool', default=False),
        user_pin_path=dict(type='path'),
        new_user_pin=dict(type='str', no_log=True),
        new_user_pin_version=dict(type='str', no_log=False),
        force=dict(type='bool', default=False),
    )
    argument_spec.update(backup_argument_spec())
    module = AnsibleModule(argument_spec=argument_spec, mutually_exclusive=[('token_serial', 'slot_id')],
                           supports_check_mode=True, add_file_common_args=True)
    require_pkcs11(module)
    run_backend(module, TokenInitBackend)


if __name__ == '__main__':
    main()
