#!/usr/bin/python
# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: ksef_token_info
short_description: List the KSeF tokens of a context
version_added: 0.1.0
description:
  - Lists the KSeF tokens of a context with filters, following KSeF's continuation token across all pages.
  - Returns reference number, description, permissions, author, status and dates; never a secret (KSeF never sends
    a token's secret again after its creation).
  - Listing the tokens of others needs the CredentialsRead or CredentialsManage permission.
author:
  - tokenfleet.pki contributors (@tokenfleet)
extends_documentation_fragment:
  - tokenfleet.pki.ksef
  - tokenfleet.pki.key_source
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
options:
  status:
    description: Only tokens with these statuses (all when not given).
    type: list
    elements: str
    choices: [Pending, Active, Revoking, Revoked, Failed]
  description:
    description: Only tokens whose description contains this text (case-insensitive, at least 3 characters).
    type: str
  author_identifier:
    description: Only tokens whose author identifier (NIP, PESEL or fingerprint) contains this text.
    type: str
seealso:
  - module: tokenfleet.pki.ksef_token
"""

EXAMPLES = r"""
---
- name: Active tokens of the company
  tokenfleet.pki.ksef_token_info:
    environment: production
    context: {type: nip, value: "5265877635"}
    auth_token: "{{ ksef_admin_token }}"
    status: [Active]
  register: ksef_tokens
"""

RETURN = r"""
tokens:
  description: The tokens, newest first.
  returned: always
  type: list
  elements: dict
  contains:
    reference_number:
      description: Reference number.
      type: str
    description:
      description: Description.
      type: str
    permissions:
      description: Permissions.
      type: list
      elements: str
    status:
      description: Status.
      type: str
    author:
      description: Who made the token (C(type) and C(value)).
      type: dict
    context:
      description: The token's context (C(type) and C(value)).
      type: dict
    date_created:
      description: When it was made.
      type: str
    last_use_date:
      description: When it was last used, V(null) if never.
      type: str
    status_details:
      description: KSeF's details about the status, if any.
      type: list
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.tokenfleet.pki.plugins.module_utils.backends.ksef_token import KsefTokenInfoBackend
from ansible_collections.tokenfleet.pki.plugins.module_utils.common import run_backend
from ansible_collections.tokenfleet.pki.plugins.module_utils.ksef.auth import require_ksef_libraries
from ansible_collections.tokenfleet.pki.plugins.module_utils.ksef.tokens import (
    KSEF_MUTUALLY_EXCLUSIVE,
    KSEF_REQUIRED_ONE_OF,
    STATUSES,
    ksef_argument_spec,
)
from ansible_collections.tokenfleet.pki.plugins.module_utils.signer import KEY_SOURCE_MUTUALLY_EXCLUSIVE


def main():
    argument_spec = ksef_argument_spec()
    argument_spec.update(
        status=dict(type='list', elements='str', choices=list(STATUSES)),
        description=dict(type='str'),
        author_identifier=dict(type='str'),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True,
                           mutually_exclusive=KSEF_MUTUALLY_EXCLUSIVE + KEY_SOURCE_MUTUALLY_EXCLUSIVE,
                           required_one_of=KSEF_REQUIRED_ONE_OF)
    require_ksef_libraries(module)
    run_backend(module, KsefTokenInfoBackend)


if __name__ == '__main__':
    main()
