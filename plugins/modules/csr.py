#!/usr/bin/python
# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: csr
short_description: Make a PKCS#10 certificate request signed by a key on a token or in a file
version_added: 0.1.0
description:
  - Writes a PEM certificate request (PKCS#10) for a key on a PKCS#11 token or in a key file, to hand to a CA
    (by file, mail, or M(tokenfleet.pki.scep_enroll)).
  - A key on a token never leaves it; the token signs the request after a login with the user PIN, as
    sToken KeyAdmin does in its user role.
  - Shaped like community.crypto's C(openssl_csr). An existing request is kept when it is signed by the same key and
    has the same subject, subject alternative names, extensions, challenge password and signature algorithm;
    otherwise it is made again.
author:
  - tokenfleet.pki contributors (@tokenfleet)
extends_documentation_fragment:
  - tokenfleet.pki.key_source
  - tokenfleet.pki.token.module
  - tokenfleet.pki.token
  - tokenfleet.pki.request
  - tokenfleet.pki.token.attributes
  - ansible.builtin.files
  - tokenfleet.pki.files
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
options:
  path:
    description:
      - Where the PEM request is written. Its directory must exist.
      - The file gets mode V(0644), or V(0600) when it carries a O(challenge_password), unless O(mode) is given.
    type: path
    required: true
  state:
    description: V(present) makes sure the request exists and is up to date; V(absent) removes the file.
    type: str
    choices: [present, absent]
    default: present
  force:
    description: Make the request again even if the existing one is up to date.
    type: bool
    default: false
  return_content:
    description:
      - Return the PEM request in RV(csr).
      - Refused together with O(challenge_password), which the request carries in clear.
    type: bool
    default: false
notes:
  - Secrets (O(user_pin), O(private_key_passphrase), O(challenge_password)) are never logged or returned. A wrong PIN is
    tried once.
seealso:
  - module: tokenfleet.pki.token_key
  - module: tokenfleet.pki.token_cert
  - module: community.crypto.openssl_csr
"""

EXAMPLES = r"""
---
- name: Certificate request for the signing key on a workstation token (sToken KeyAdmin's "generate request")
  tokenfleet.pki.csr:
    pkcs11_module: /usr/lib/libstoken.so
    token_label: "{{ inventory_hostname }}"
    user_pin: "{{ token_user_pin }}"
    key_label: Podpis2026
    path: /srv/requests/{{ inventory_hostname }}-Podpis2026.csr
    common_name: Jan Kowalski
    organization_name: Example sp. z o.o.
    country_name: PL
    key_usage: [digitalSignature, nonRepudiation]
    extended_key_usage: [clientAuth, emailProtection]

- name: ePUAP integration certificate request for a system identified by its domain
  tokenfleet.pki.csr:
    private_key_path: /etc/pki/epuap/integration.key
    path: /etc/pki/epuap/integration.csr
    common_name: integration.example.gov.pl
    organization_name: Example Office
    country_name: PL

- name: Printer request as its SCEP page would make it (TLS use, challenge password)
  tokenfleet.pki.csr:
    private_key_path: /var/lib/printers/mfp01/key.pem
    path: /var/lib/printers/mfp01/request.csr
    common_name: 192.0.2.15
    organization_name: Example AS
    digest: sha256
    extended_key_usage: [serverAuth]
    challenge_password: "{{ scep_challenge }}"
"""

RETURN = r"""
filename:
  description: Path of the request.
  returned: always
  type: str
  sample: /etc/pki/epuap/integration.csr
subject:
  description: Subject of the request (RFC 4514).
  returned: when O(state=present)
  type: str
  sample: CN=integration.example.gov.pl,O=Example Office,C=PL
subject_alt_name:
  description: Subject alternative names of the request.
  returned: when O(state=present)
  type: list
  elements: str
  sample: ["DNS:integration.example.gov.pl"]
key_usage:
  description: Key usage of the request, V(null) when it has none.
  returned: when O(state=present)
  type: list
  elements: str
  sample: [digitalSignature, keyEncipherment]
extended_key_usage:
  description: Extended key usage of the request, V(null) when it has none.
  returned: when O(state=present)
  type: list
  elements: str
  sample: [serverAuth]
basic_constraints:
  description: Basic constraints of the request, V(null) when it has none.
  returned: when O(state=present)
  type: list
  elements: str
  sample: ["CA:FALSE"]
challenge_password_set:
  description: Whether the request carries a challenge password (never the password itself).
  returned: when O(state=present)
  type: bool
  sample: true
public_key_fingerprint:
  description: SHA-256 of the request's DER public key, colon-separated hex; equal to the one M(tokenfleet.pki.token_key) returns.
  returned: when O(state=present)
  type: str
  sample: "9c:3e:...:01"
reasons:
  description: Why the request was (or in check mode would be) made again; empty when it was kept.
  returned: when O(state=present)
  type: list
  elements: str
  sample: [the subject differs]
csr:
  description: The PEM request.
  returned: when O(return_content=true) and O(state=present)
  type: str
  sample: "-----BEGIN CERTIFICATE REQUEST-----\n...\n-----END CERTIFICATE REQUEST-----\n"
backup_file:
  description: Name of the backup of the previous request.
  returned: when a backup was made
  type: str
  sample: /etc/pki/epuap/integration.csr.2718.2026-11-21@10:12:44~
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.tokenfleet.pki.plugins.module_utils.backends.csr import CsrBackend
from ansible_collections.tokenfleet.pki.plugins.module_utils.common import run_backend
from ansible_collections.tokenfleet.pki.plugins.module_utils.files import backup_argument_spec
from ansible_collections.tokenfleet.pki.plugins.module_utils.signer import (
    KEY_SOURCE_MUTUALLY_EXCLUSIVE,
    key_source_argument_spec,
    require_key_source_libraries,
)
from ansible_collections.tokenfleet.pki.plugins.module_utils.x509 import request_argument_spec


def main():
    argument_spec = key_source_argument_spec()
    argument_spec.update(request_argument_spec())
    argument_spec.update(
        path=dict(type='path', required=True),
        state=dict(type='str', choices=['present', 'absent'], default='present'),
        force=dict(type='bool', default=False),
        return_content=dict(type='bool', default=False),
    )
    argument_spec.update(backup_argument_spec())
    module = AnsibleModule(argument_spec=argument_spec, mutually_exclusive=KEY_SOURCE_MUTUALLY_EXCLUSIVE,
                           supports_check_mode=True, add_file_common_args=True)
    require_key_source_libraries(module)
    run_backend(module, CsrBackend)


if __name__ == '__main__':
    main()
