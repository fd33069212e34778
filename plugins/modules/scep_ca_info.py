#!/usr/bin/python
# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: scep_ca_info
short_description: Show a SCEP server's capabilities, CA and RA certificates
version_added: 0.1.0
description:
  - Asks a SCEP (RFC 8894) server for its capabilities (GetCACaps) and certificates (GetCACert, a single CA certificate
    or a PKCS#7 with RA certificates) and returns them with subject, expiry and SHA-256 fingerprint, which RA
    certificate is for encryption and which for signing, and for every other certificate why it is not an RA (the rule
    is described at O(ra_fingerprint)).
  - A failing GetCACaps does not fail this module; it returns RV(caps_error) instead, the reason why
    M(tokenfleet.pki.scep_enroll) would stop unless its algorithms are set explicitly.
  - This is how to learn the fingerprint to pin in M(tokenfleet.pki.scep_enroll). Compare it with what the CA's
    administrators publish before you trust it.
  - Can write the CA certificates to a file, O(chain_path).
author:
  - tokenfleet.pki contributors (@tokenfleet)
extends_documentation_fragment:
  - tokenfleet.pki.scep
  - tokenfleet.pki.token.attributes
  - ansible.builtin.files
  - tokenfleet.pki.files
attributes:
  check_mode:
    support: full
    details: The server is asked in check mode too; only writing O(chain_path) is skipped.
  diff_mode:
    support: full
    details:
      - With O(chain_path), the certificates in that file before and after (subject, issuer, serial number, validity,
        fingerprints), in check mode the ones it would hold.
options:
  ca_fingerprint:
    description:
      - When given, only the certificate with this fingerprint and the CA certificates that chain to it count as the
        CA, and RA certificates are judged against them (see O(ra_fingerprint)); a server none of whose certificates
        matches fails. It may name the root or any CA of the chain, but only a certificate the server sends;
        step-ca, for example, sends its root only with the provisioner's C(includeRoot) set; otherwise give the root
        in O(ca_certificate_path).
      - Without O(ca_fingerprint) and O(ca_certificate_path) every self-signed certificate is shown as a CA (or the
        first certificate, when none is self-signed).
    type: str
  ca_certificate_path:
    description:
      - A PEM or DER file with the CA certificate(s) to pin, for example the root, which the server need not send.
        The certificates the server sends count as the CA when they are among these or chain to them (CA:TRUE, valid
        now, signed by a pinned certificate or by one that chains to it).
      - May be combined with O(ca_fingerprint); then a certificate pinned by either counts.
    type: path
  chain_path:
    description: Write the CA certificate(s) here (PEM); default mode V(0644).
    type: path
  return_content:
    description: Return the PEM of the CA certificate(s), what O(chain_path) holds, as RV(chain_content).
    type: bool
    default: false
seealso:
  - module: tokenfleet.pki.scep_enroll
"""

EXAMPLES = r"""
---
- name: What does the CA offer, and what is its fingerprint?
  tokenfleet.pki.scep_ca_info:
    url: http://ca.example.com:8080/scep
  register: ca

- name: Show the fingerprint to pin
  ansible.builtin.debug:
    msg: "{{ ca.certificates | selectattr('role', 'equalto', 'ca') | map(attribute='fingerprint_sha256') | list }}"

- name: Save the pinned CA for the devices
  tokenfleet.pki.scep_ca_info:
    url: http://ndes.example.com/certsrv/mscep/mscep.dll
    ca_fingerprint: "{{ ndes_ca_sha256 }}"
    chain_path: /srv/pki/ndes-ca.pem

- name: Which certificate does step-ca send, and does it chain to our root?
  tokenfleet.pki.scep_ca_info:
    url: http://step-ca.example.com:8080/scep/devices
    ca_certificate_path: /srv/pki/root_ca.crt
  register: step_ca
"""

RETURN = r"""
caps:
  description: The capabilities the server announced (GetCACaps), as sent; V(null) when GetCACaps failed.
  returned: always
  type: list
  elements: str
  sample: [Renewal, SHA-1, SHA-256, AES, DES3, SCEPStandard, POSTPKIOperation]
content_type:
  description: Content type of the GetCACert answer.
  returned: always
  type: str
  sample: application/x-x509-ca-cert
caps_error:
  description: Why GetCACaps gave no usable answer.
  returned: when GetCACaps failed
  type: str
  sample: "the SCEP server at ca.example.com:8080 answered GetCACaps with HTTP status 500 Internal Server Error"
pinned:
  description: Whether O(ca_fingerprint) or O(ca_certificate_path) selected the CA.
  returned: always
  type: bool
algorithms:
  description:
    - What scep_enroll would use with this server by default (signature digest, encryption, HTTP method).
    - V(null) when GetCACaps failed.
  returned: always
  type: dict
  sample: {signature: sha256, encryption: aes128, method: POST}
certificates:
  description:
    - The certificates the server sent, the CA chain first (in the order the server sent them), then RA and other
      certificates.
  returned: always
  type: list
  elements: dict
  contains:
    role:
      description:
        - V(ca), or V(ra-encryption) (receives the requests), V(ra-signing) (signs replies), V(ra-encryption+signing),
          V(ra) (an RA certificate not used) for RA certificates, or V(not-ra) for a certificate that is none of these.
      type: str
    matches_pin:
      description:
        - Whether this CA certificate is the one O(ca_fingerprint) names or one of O(ca_certificate_path); V(false) for
          a CA that chains to a pinned certificate and for every certificate when nothing is pinned.
      type: bool
      returned: for role V(ca)
    issuing:
      description:
        - Whether this CA certificate is the issuing CA, the CA of the chain that issued no other CA of it (for
          step-ca its intermediate, also when the root is pinned). M(tokenfleet.pki.scep_enroll) encrypts requests to
          it unless an RA certificate for encryption is there, and RA certificates must be issued by it.
      type: bool
      returned: for role V(ca)
    not_ra_reason:
      description: Why a V(not-ra) certificate is not an RA, for example V(not issued by the pinned CA).
      type: str
      returned: for role V(not-ra)
      sample: "its extended key usage (clientAuth) limits it to other uses than an RA's; pin it with ra_fingerprint if it is the CA's RA"
    extended_key_usage:
      description: The extended key usage of an RA or other certificate, V(null) when it has none.
      type: list
      elements: str
      returned: for certificates other than the CA
    subject:
      description: Subject (RFC 4514).
      type: str
    issuer:
      description: Issuer (RFC 4514).
      type: str
    not_after:
      description: End of validity (UTC).
      type: str
    fingerprint_sha256:
      description: SHA-256 fingerprint, colon-separated hex; the value to pin.
      type: str
    key_usage:
      description: Key usage flags, V(null) when the certificate has none.
      type: list
      elements: str
    pem:
      description: The certificate in PEM.
      type: str
chain_content:
  description: The PEM of the CA certificate(s), the content of O(chain_path).
  returned: when O(return_content=true)
  type: str
  sample: "-----BEGIN CERTIFICATE-----\n...\n-----END CERTIFICATE-----\n"
backup_file:
  description: Name of the copy of the previous O(chain_path).
  returned: when O(backup=true) and O(chain_path) was replaced
  type: str
  sample: /etc/pki/scep/ca-chain.pem.2718.2026-11-21@10:12:44~
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.tokenfleet.pki.plugins.module_utils.backends.scep_ca_info import ScepCaInfoBackend
from ansible_collections.tokenfleet.pki.plugins.module_utils.common import run_backend
from ansible_collections.tokenfleet.pki.plugins.module_utils.files import backup_argument_spec
from ansible_collections.tokenfleet.pki.plugins.module_utils.scep.transport import scep_server_argument_spec
from ansible_collections.tokenfleet.pki.plugins.module_utils.x509 import require_cryptography


def main():
    argument_spec = scep_server_argument_spec()
    argument_spec.update(ca_fingerprint=dict(type='str'), ca_certificate_path=dict(type='path'), chain_path=dict(type='path'),
                         return_content=dict(type='bool', default=False))
    argument_spec.update(backup_argument_spec())
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True, add_file_common_args=True)
    require_cryptography(module)
    run_backend(module, ScepCaInfoBackend)


if __name__ == '__main__':
    main()
