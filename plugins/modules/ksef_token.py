#!/usr/bin/python
# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: ksef_token
short_description: Create or revoke KSeF API tokens, idempotently by description
version_added: 0.1.0
description:
  - Makes sure a KSeF (Polish national e-invoicing system) token with a given description and permissions exists in a
    context, or that tokens with that description (or one reference number) are revoked.
  - A token is identified by its O(description). KSeF cannot change a token's permissions, so a token with that
    description but other permissions is an error, or with O(force=true) it is revoked and a new one made.
  - The secret token exists only when it is created. It is written to O(token_path) (mode V(0600)) as soon as KSeF's
    answer arrives, and returned as RV(token) only with O(return_token=true); set C(no_log) on such a task.
  - With O(token_path), a matching token counts as present only when O(token_path) holds its secret (a KSeF secret
    begins with its token's reference number). A matching token whose secret never reached O(token_path) (a run that
    failed after KSeF had made the token) is useless. When O(token_path) is missing or empty, the token is revoked
    and a new one made, with a warning naming the revoked reference number; when O(token_path) holds the secret of
    another token, the module fails unless O(force=true). Content of another form is trusted to be the secret.
    Without O(token_path) the module cannot tell, and a matching token is present.
  - Check mode authenticates and lists tokens, but creates and revokes nothing.
  - The KSeF session is closed at the end of every run, also on failure.
author:
  - tokenfleet.pki contributors (@tokenfleet)
extends_documentation_fragment:
  - tokenfleet.pki.ksef
  - tokenfleet.pki.key_source
  - tokenfleet.pki.token.module
  - tokenfleet.pki.token
  - tokenfleet.pki.token.attributes
  - ansible.builtin.files
  - tokenfleet.pki.files
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
    details:
      - The tokens the task selects before and after (reference number, description, permissions, status) and, with
        O(token_path) and O(state=present), the reference number of the token whose secret that file holds; never a
        secret. In check mode a token that would be made has no reference number yet (V(null)).
options:
  state:
    description: V(present) creates the token when none with that description is Pending or Active; V(absent) revokes.
    type: str
    choices: [present, absent]
    default: present
  description:
    description: Description of the token (5 to 256 characters); it identifies the token.
    type: str
  permissions:
    description:
      - Permissions of the token (required with O(state=present)); you can only grant what you hold yourself.
    type: list
    elements: str
    choices: [InvoiceRead, InvoiceWrite, CredentialsRead, CredentialsManage, SubunitManage, EnforcementOperations,
              Introspection, CollectiveIdentifierManage]
  reference_number:
    description: With O(state=absent), revoke the token with this reference number instead of by description.
    type: str
  force:
    description:
      - Revoke a token with this description but other permissions, or one whose secret is not in O(token_path), and
        make a new one; overwrite an existing O(token_path).
    type: bool
    default: false
  token_path:
    description:
      - Write a newly created token's secret here (mode V(0600)). An existing file is never overwritten unless O(force=true)
        (an empty file counts as missing).
      - Also tells whether the secret of an existing matching token ever arrived; see the description above.
    type: path
  return_token:
    description: Return a newly created token's secret as RV(token). Set C(no_log) on the task.
    type: bool
    default: false
seealso:
  - module: tokenfleet.pki.ksef_token_info
"""

EXAMPLES = r"""
---
- name: A token for the accounting software, made in a session signed with the company seal on a token
  tokenfleet.pki.ksef_token:
    environment: production
    context: {type: nip, value: "5265877635"}
    auth_certificate_path: /etc/ksef/seal.pem
    pkcs11_module: /usr/lib/x86_64-linux-gnu/opensc-pkcs11.so
    token_label: seal
    user_pin: "{{ seal_pin }}"
    key_label: seal
    description: "Accounting - Anna Nowak"
    permissions: [InvoiceRead, InvoiceWrite]
    token_path: /srv/ksef/anna-nowak.token

- name: Revoke the token of someone who left
  tokenfleet.pki.ksef_token:
    environment: production
    context: {type: nip, value: "5265877635"}
    auth_token: "{{ ksef_admin_token }}"
    description: "Accounting - Jan Kowalski"
    state: absent
"""

RETURN = r"""
reference_number:
  description: Reference number of the token (V(null) in check mode for a token that would be created).
  returned: when O(state=present)
  type: str
  sample: 20251010-EC-1DCE3E3000-12ECB5B36E-45
status:
  description: Status of the token (V(Pending), V(Active), ...).
  returned: when O(state=present)
  type: str
  sample: Active
permissions:
  description: Permissions of the token.
  returned: when O(state=present)
  type: list
  elements: str
  sample: [InvoiceRead, InvoiceWrite]
description:
  description: Description of the token.
  returned: always
  type: str
  sample: Accounting - Anna Nowak
token:
  description: The secret token, only when it was created in this run and O(return_token=true).
  returned: when created and O(return_token=true)
  type: str
revoked:
  description: The tokens revoked (or, in check mode, to be revoked).
  returned: when O(state=absent)
  type: list
  elements: dict
actions:
  description: What was done (or, in check mode, would be done), for example V(create) or V(revoke <reference>).
  returned: always
  type: list
  elements: str
backup_file:
  description: Name of the copy of the previous O(token_path) (it holds the previous secret, with that file's mode).
  returned: when O(backup=true) and O(force=true) replaced O(token_path)
  type: str
  sample: /srv/ksef/anna-nowak.token.2718.2026-11-21@10:12:44~
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.tokenfleet.pki.plugins.module_utils.backends.ksef_token import KsefTokenBackend
from ansible_collections.tokenfleet.pki.plugins.module_utils.common import run_backend
from ansible_collections.tokenfleet.pki.plugins.module_utils.files import backup_argument_spec
from ansible_collections.tokenfleet.pki.plugins.module_utils.ksef.auth import require_ksef_libraries
from ansible_collections.tokenfleet.pki.plugins.module_utils.ksef.tokens import (
    KSEF_MUTUALLY_EXCLUSIVE,
    KSEF_REQUIRED_ONE_OF,
    PERMISSIONS,
    ksef_argument_spec,
)
from ansible_collections.tokenfleet.pki.plugins.module_utils.signer import KEY_SOURCE_MUTUALLY_EXCLUSIVE


def main():
    argument_spec = ksef_argument_spec()
    argument_spec.update(
        state=dict(type='str', choices=['present', 'absent'], default='present'),
        description=dict(type='str'),
        permissions=dict(type='list', elements='str', choices=list(PERMISSIONS)),
        reference_number=dict(type='str'),
        force=dict(type='bool', default=False),
        token_path=dict(type='path'),
        return_token=dict(type='bool', default=False),
    )
    argument_spec.update(backup_argument_spec())
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True, add_file_common_args=True,
                           mutually_exclusive=KSEF_MUTUALLY_EXCLUSIVE + KEY_SOURCE_MUTUALLY_EXCLUSIVE,
                           required_one_of=KSEF_REQUIRED_ONE_OF)
    require_ksef_libraries(module)
    run_backend(module, KsefTokenBackend)


if __name__ == '__main__':
    main()
