#!/usr/bin/python
# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: presented_certificate
short_description: The certificate a TLS server presents, and whether it can stay
version_added: 0.1.0
description:
  - Connects to O(host):O(port), reads the certificate the server presents in the TLS handshake and says whether it
    can stay (RV(keep)) - issued under the pinned CA (O(ca_certificate_path)) and not yet due for renewal under
    O(renew_before) - or why not (RV(reason)).
  - The chain the server sends is checked against the pinned certificates only (an intermediate CA can be the pin),
    as a path of signatures from the certificate through CA certificates the server sent to a pinned one. Neither the
    server's name nor the certificate's purpose is checked - devices are often known by address only, and SCEP CAs
    often issue device certificates for client authentication that the devices serve anyway. A server that cannot be reached, or
    presents nothing, is not an error; RV(presented) is V(false) and RV(reason) says why.
  - With O(path), a certificate that can stay is written there (PEM). The M(tokenfleet.pki.device_certificate) role
    uses this when its store has no record of a device (a new execution environment, a lost volume), so that only
    devices that need it are enrolled again.
author:
  - tokenfleet.pki contributors (@tokenfleet)
extends_documentation_fragment:
  - tokenfleet.pki.token.attributes
  - ansible.builtin.files
  - tokenfleet.pki.files
attributes:
  check_mode:
    support: full
    details: The server is contacted in check mode too; only writing O(path) is skipped.
  diff_mode:
    support: none
options:
  host:
    description: The server's address or name.
    type: str
    required: true
  port:
    description: Its TLS port.
    type: int
    default: 443
  server_name:
    description: The name sent as SNI; by default none (many devices serve one certificate whatever the name).
    type: str
  ca_certificate_path:
    description:
      - PEM file with the certificates to trust, the pinned CA (for example the root step-ca was set up with, or the
        CA certificates M(tokenfleet.pki.scep_ca_info) wrote to its O(tokenfleet.pki.scep_ca_info#module:chain_path)).
    type: path
    required: true
  renew_before:
    description:
      - When a certificate is due for renewal, as M(tokenfleet.pki.scep_enroll)'s
        O(tokenfleet.pki.scep_enroll#module:renew_before) - whole days or a share of the lifetime (V("33%")); by
        default 30 days, at most a third of the lifetime.
    type: raw
  timeout:
    description: Seconds to wait for the connection and the handshake.
    type: int
    default: 10
  path:
    description: Write the certificate here (PEM, default mode V(0644)) when it can stay (RV(keep)).
    type: path
seealso:
  - module: tokenfleet.pki.scep_enroll
  - module: tokenfleet.pki.scep_ca_info
"""

EXAMPLES = r"""
- name: Does the printer still present a certificate of our CA that is not due?
  tokenfleet.pki.presented_certificate:
    host: 192.0.2.10
    port: 443
    ca_certificate_path: /srv/pki/root_ca.crt
    path: /srv/tokenfleet/device-keys/mfp-01/presented.pem
  delegate_to: localhost
  register: presented
"""

RETURN = r"""
presented:
  description: Whether a certificate could be read from the server.
  returned: always
  type: bool
issued_by_pinned_ca:
  description: Whether the chain the server presents verifies against O(ca_certificate_path).
  returned: always
  type: bool
renewal_due:
  description: Whether the certificate is due for renewal under O(renew_before); V(null) when none was read.
  returned: always
  type: bool
renew_at:
  description: When it becomes due, V(YYYY-MM-DDTHH:MM:SSZ); V(null) when none was read.
  returned: always
  type: str
keep:
  description: Whether the certificate can stay - issued under the pinned CA and not due.
  returned: always
  type: bool
reason:
  description: Why it can stay, or why not.
  returned: always
  type: str
  sample: "not issued under the pinned CA (self-signed certificate)"
certificate:
  description: Subject, issuer, serial number, validity and SHA-256 fingerprint of the certificate; V(null) when none was read.
  returned: always
  type: dict
backup_file:
  description: The backup of O(path) made before it was replaced.
  returned: when O(backup=true) and O(path) was replaced
  type: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.tokenfleet.pki.plugins.module_utils.backends.presented_certificate import (
    ARGUMENT_SPEC,
    PresentedCertificateBackend,
)
from ansible_collections.tokenfleet.pki.plugins.module_utils.common import run_backend
from ansible_collections.tokenfleet.pki.plugins.module_utils.files import backup_argument_spec
from ansible_collections.tokenfleet.pki.plugins.module_utils.x509 import require_cryptography


def main():
    argument_spec = dict(ARGUMENT_SPEC, **backup_argument_spec())
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True, add_file_common_args=True)
    require_cryptography(module)
    run_backend(module, PresentedCertificateBackend)


if __name__ == '__main__':
    main()
