#!/usr/bin/python
# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: scep_enroll
short_description: Get and renew a certificate from a SCEP server for a key on a token or in a file
version_added: 0.1.0
description:
  - Enrolls a key with a SCEP (RFC 8894) server such as Windows NDES, EJBCA, OpenXPKI or micromdm, stores the
    certificate, and renews it when it is inside the renewal window, as a printer's SCEP settings page does.
  - A valid certificate outside the renewal window means no request to the server at all.
  - The request (and its challenge password) is encrypted only to the issuing CA of the pinned chain (O(ca_fingerprint)
    or O(ca_certificate_path), which may be the root) or to an RA certificate for encryption, and replies are accepted
    only when signed by a CA of the pinned chain or an RA certificate for signing, with this request's transaction id, nonce and message digest. What
    counts as an RA certificate is described at O(ra_fingerprint); a certificate the CA issued to some device is never
    one. A reply signed by any other certificate is refused with a message naming its signer, and nothing is written.
  - The server's capabilities (GetCACaps) choose the algorithms. When GetCACaps fails (HTTP error, a connection broken
    off, an empty answer or one that is not a list of capabilities) the run fails rather than fall back to SHA-1 and
    3DES, unless both O(signature_algorithm) and O(encryption_algorithm) are set; then the run goes on with those and
    sends its requests by HTTP GET, the RFC 8894 default for a server whose capabilities are unknown (old NDES closes
    the connection on GetCACaps but takes GET). A server that refuses the connection or does not answer within
    O(timeout) fails the run in any case.
  - A request the CA keeps PENDING is remembered in O(state_path); the next run polls that transaction instead of
    starting a new one.
  - Nothing on the host changes unless the server answered SUCCESS or PENDING; a new key or certificate is written
    atomically and the old one stays until the new one is stored and verified.
  - Crash-safe. When the certificate arrives, it is recorded in O(state_path) together with which key is the new
    one (a journal), before any file or token object is swapped. A run that is killed during the swap leaves a matching
    key and certificate, old or new, and the next run completes the swap from the journal, without asking the CA again,
    before it decides anything else. See C(docs/failure-and-recovery.md).
  - Before it decides anything, each run removes what a killed run may have left. These are the temp files
    V(.tokenfleet-<name>-*) beside the key, certificate, chain, state and O(pkcs12_path) files, and a V(<private_key_path>.new)
    file or a V(<key_label>.new) key on the token, unless a pending rekey request still needs it and it is the key that
    request was made for.
  - Runs on the same O(state_path) take turns. A run holds an exclusive lock, V(<state_path>.lock), until it ends. A
    second run waits up to O(timeout) seconds for it, then fails naming the state file. Check mode takes no lock.
author:
  - tokenfleet.pki contributors (@tokenfleet)
extends_documentation_fragment:
  - tokenfleet.pki.scep
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
    details: Check mode never contacts the server; it reports what would happen from the certificate, key and state file.
  diff_mode:
    support: full
    details:
      - The certificate in O(certificate_path) before and after (subject, issuer, serial number, validity, fingerprint
        and its public key's fingerprint), the certificates of O(chain_path), and the transaction id of a pending
        request; never a key, challenge or PIN.
      - In check mode the certificate to be issued shows the subject requested and the key's fingerprint (V(null) for
        a new key, O(rekey)); what only the CA knows (issuer, serial number, validity, fingerprint) is V(null).
options:
  ca_fingerprint:
    description:
      - Fingerprint of the CA certificate to trust, SHA-256 in hexadecimal (colons and case do not matter), as
        M(tokenfleet.pki.scep_ca_info) returns it. SHA-1 and MD5 fingerprints (old NDES admin pages) are accepted too.
      - It may name the root or any CA of the chain, but only a certificate the server sends in GetCACert. The CA
        certificates the server sends that chain to it (CA:TRUE, valid now, signature checked) are trusted too, and
        the request goes to the issuing CA among them, never to the root. step-ca sends its root only when its SCEP
        provisioner has C(includeRoot); otherwise pin the root with O(ca_certificate_path).
      - One of O(ca_fingerprint) and O(ca_certificate_path) is required.
    type: str
  ca_certificate_path:
    description:
      - A PEM or DER file with the CA certificate(s) to trust instead of (or besides) O(ca_fingerprint), for example
        the root, which the server need not send.
      - The CA certificates the server sends count when they are in this file or chain to it (CA:TRUE, valid now,
        signed by a certificate of the chain). The request is encrypted to the issuing CA, the one of the chain that
        issued no other CA of it (or to an RA certificate it issued), and the issued certificate must chain to this file.
    type: path
  certificate_path:
    description: Where the certificate is written (PEM). The common file options apply to it; default mode V(0644).
    type: path
    required: true
  chain_path:
    description: Where the CA certificates from the reply are written (PEM).
    type: path
  store_on_token:
    description:
      - Also write the certificate onto the token next to its key (same id and label), replacing the old one.
      - A certificate object that is missing or stale next to the key is written again, even when the certificate
        itself needs no renewal.
    type: bool
    default: false
  key_type:
    description:
      - Type of a key generated at O(private_key_path) when that file is missing. An existing key file or token key is
        used as it is, RSA or EC.
      - An RSA key signs its own SCEP messages (self-signed for a first request, with its current certificate for a
        renewal), and the server encrypts its reply to it.
      - An EC key only signs, while SCEP encrypts the server's reply with RSA to the certificate that signed the
        message. So the request (CSR) carries and is signed by the EC key, and the SCEP message around it is signed by
        a throwaway RSA key and self-signed certificate with the request's subject (RFC 8894 section 2.3 lets that
        certificate carry another key). They live in memory for the run only and are never written; the reply is
        decrypted with them, and a later run that polls a pending request makes new ones. Renewals of an EC
        certificate are sent the same way, so the server must accept them on the challenge password rather than on the
        current certificate's signature. step-ca does; micromdm 2.1.0 cannot issue certificates for EC requests.
    type: str
    choices: [rsa, ec]
    default: rsa
  key_size:
    description: Size of a generated RSA key (the printer's "key length"). Not used for EC keys.
    type: int
    choices: [2048, 3072, 4096]
    default: 2048
  curve:
    description:
      - Curve of a generated EC key (O(key_type=ec) only); V(secp256r1) (P-256) when not given.
      - A rekey makes the new key with the type, size or curve of the current key, whatever these options say.
    type: str
    choices: [secp256r1, secp384r1]
  csr_path:
    description: Send this existing request (PEM or DER) instead of making one from the request options.
    type: path
  signature_algorithm:
    description:
      - Digest of the SCEP messages. V(auto) takes SHA-256 when the server offers it, else SHA-1.
      - With O(encryption_algorithm) also set, a failing GetCACaps no longer stops the run (see the description).
    type: str
    choices: [auto, sha1, sha256, sha512, md5]
    default: auto
  encryption_algorithm:
    description:
      - Cipher of the request's envelope. V(auto) takes AES-128 when the server offers it, else 3DES.
      - With O(signature_algorithm) also set, a failing GetCACaps no longer stops the run (see the description).
    type: str
    choices: [auto, aes128, aes192, aes256, 3des, des]
    default: auto
  allow_legacy_algorithms:
    description: Allow V(md5) and single V(des), which are broken and only needed by very old servers.
    type: bool
    default: false
  renew_before:
    description:
      - When a certificate becomes due for renewal, before its end of validity.
      - A whole number of days (for example V(30); renew when that many days or fewer are left; V(0) renews only an
        expired certificate, by a new enrollment), or a share of the certificate's lifetime (not_before to not_after)
        as a string with C(%), for example V("33%") (renew when a third of the lifetime or less is left).
      - Without it the window is 30 days, but at most a third of the lifetime, so that a short-lived certificate is
        never due right after it is issued; step-ca's 24-hour certificates are due after 16 hours.
      - Check mode, the roles (C(device_certificate_renew_before), C(token_certificate_renew_before)) and the report
        (C(renewal_due) of the P(tokenfleet.pki.x509_facts#filter) filter, given the same O(renew_before)) use the
        same rule.
    type: raw
  renewal_message:
    description:
      - How a renewal is sent. V(pkcsreq) is a PKCSReq signed with the current certificate, which most servers accept;
        V(renewalreq) is RFC 8894's RenewalReq.
    type: str
    choices: [pkcsreq, renewalreq]
    default: pkcsreq
  rekey:
    description:
      - Renew with a new key. It is made beside the current one (V(<private_key_path>.new), or label V(<key_label>.new)
        on the token) and takes the current key's place only after the new certificate is stored.
      - The new key has the current key's type and size, or its curve for an EC key.
    type: bool
    default: false
  remove_old:
    description:
      - After a rekey, delete the old key and certificate (the printer's "delete the old key and certificate"). Otherwise
        they are kept as V(<private_key_path>.old) and V(<certificate_path>.old), or with label V(<key_label>.old).
    type: bool
    default: false
  force:
    description: Request a certificate even if the current one is valid and outside the renewal window.
    type: bool
    default: false
  poll_attempts:
    description: On PENDING, ask again this many times before returning V(pending). V(0) returns at once.
    type: int
    default: 0
  poll_interval:
    description: Seconds between those attempts. These waits are not network time and do not count against O(timeout).
    type: int
    default: 30
  splay:
    description:
      - Wait a random 0 to O(splay) seconds before contacting the server, only when a request will be sent, so that a
        fleet does not reach the CA at once (the printer's random delay).
    type: int
    default: 0
  state_path:
    description:
      - The state file (mode V(0600)) with a pending transaction, the journal of a swap under way and the history.
        Defaults to V(<certificate_path>.scep.json).
      - It holds no secret. A pending request is remembered by its transaction id, subject and public key. When it must
        be sent again, it is rebuilt and signed anew with the task's options, O(challenge_password) included, so keep
        giving them while a request is pending.
      - If the file is corrupted, the run fails and names it. Move it away to start over. Its history and any pending
        request are lost, and the next run sends a new request.
    type: path
  history_size:
    description: How many issued certificates the history keeps.
    type: int
    default: 20
  pkcs12_path:
    description:
      - Also keep a PKCS#12 bundle here (mode V(0600)) holding the key of O(private_key_path), the certificate and the
        CA certificates of O(chain_path), protected by O(pkcs12_passphrase), for a device that takes its key and
        certificate as one upload (a printer).
      - It is written when a certificate is issued or renewed, and on any run where it is missing or does not hold
        the current key, certificate and chain with O(pkcs12_friendly_name) and O(pkcs12_encryption). Whether it does
        is checked by opening it with O(pkcs12_passphrase), so a bundle that does not open with it (another
        passphrase) is written again. This needs no request to the CA.
      - Only for a key file. A key on a token cannot be exported, so O(pkcs12_path) with O(key_label) or O(key_id)
        fails before anything changes.
      - O(backup) applies to it; the copy is returned as RV(pkcs12_backup_file).
    type: path
  pkcs12_passphrase:
    description:
      - Passphrase of O(pkcs12_path); required with it, and it must not be empty (the bundle holds the key). Never
        logged or returned.
    type: str
  pkcs12_friendly_name:
    description: Friendly name of the key and certificate in O(pkcs12_path). Defaults to the certificate's common name.
    type: str
  pkcs12_encryption:
    description:
      - How O(pkcs12_path) is protected. V(aes256) is what OpenSSL 3's C(openssl pkcs12 -export) writes, key and
        certificates encrypted with AES-256-CBC, the key derived with PBKDF2 and HMAC-SHA-256, a SHA-256 MAC.
      - V(3des) is what OpenSSL 1.1 writes (and OpenSSL 3 with C(-legacy)), PBE with SHA-1 and 3DES and a SHA-1 MAC.
        Use it only for a device that cannot open the other (older printers).
      - A bundle written with the other choice is written again.
    type: str
    choices: [3des, aes256]
    default: aes256
  return_content:
    description:
      - Return the PEM of O(certificate_path) (and of O(chain_path)) after the run as RV(certificate_content) (and
        RV(chain_content)); in check mode what the files hold now. The key is never returned.
    type: bool
    default: false
notes:
  - O(backup) applies to O(certificate_path), O(chain_path), O(pkcs12_path) and O(private_key_path) (replaced on a
    renewal with O(rekey)); the copies are returned as RV(backup_file), RV(chain_backup_file), RV(pkcs12_backup_file)
    and RV(private_key_backup_file). The
    state file is never backed up; the V(.old) files that O(remove_old=false) keeps are made either way.
  - O(challenge_password) may also come from the E(SCEP_CHALLENGE_PASSWORD) environment variable. Secrets are never
    logged or returned.
seealso:
  - module: tokenfleet.pki.scep_ca_info
  - module: tokenfleet.pki.csr
  - module: tokenfleet.pki.token_key
"""

EXAMPLES = r"""
---
- name: Printer certificate from NDES, renewed 30 days before expiry, with the PKCS#12 bundle its upload page takes
  tokenfleet.pki.scep_enroll:
    url: http://ndes.example.com/certsrv/mscep/mscep.dll
    ca_fingerprint: "{{ ndes_ca_sha256 }}"
    challenge_password: "{{ ndes_challenge }}"
    private_key_path: "/srv/printers/{{ inventory_hostname }}/key.pem"
    certificate_path: "/srv/printers/{{ inventory_hostname }}/cert.pem"
    chain_path: "/srv/printers/{{ inventory_hostname }}/chain.pem"
    pkcs12_path: "/srv/printers/{{ inventory_hostname }}/bundle.p12"  # key, certificate and chain
    pkcs12_passphrase: "{{ printer_pkcs12_passphrase }}"
    common_name: "{{ ansible_host }}"
    organization_name: Example AS
    extended_key_usage: [serverAuth]
    splay: 600
  delegate_to: localhost  # runs on the controller for the printer

- name: Workstation VPN certificate for a key on its token, stored on the token too
  tokenfleet.pki.scep_enroll:
    url: http://ca.example.com:8080/scep
    ca_fingerprint: "{{ ca_sha256 }}"
    pkcs11_module: /usr/lib/x86_64-linux-gnu/opensc-pkcs11.so
    token_label: "{{ inventory_hostname }}"
    key_label: vpn
    certificate_path: /etc/vpn/client.pem
    store_on_token: true
    common_name: "{{ inventory_hostname }}"
    rekey: true
    remove_old: true
"""

RETURN = r"""
status:
  description: V(issued) (first certificate), V(renewed), V(pending) (waiting for the CA) or V(unchanged).
  returned: always
  type: str
  sample: renewed
reason:
  description: Why the module acted or did not.
  returned: always
  type: str
  sample: 12.5 days left, renew_before is 30
certificate:
  description: Facts of the current certificate, V(null) when there is none.
  returned: always
  type: dict
  sample: {subject: CN=mfp01.example.com, serial_number: 4f2a, not_after: "2027-11-21T10:00:00Z", days_left: 365}
transaction_id:
  description: SCEP transaction id of the request sent or polled.
  returned: when a request was sent
  type: str
  sample: 9A0C2E...
ca_caps:
  description: The server's GetCACaps answer; V(null) when it failed and the explicit algorithms were used.
  returned: when the server was contacted
  type: list
  elements: str
  sample: [AES, POSTPKIOperation, SHA-256, SCEPStandard]
history:
  description: The last O(history_size) certificates issued to this host (serial, subject, validity, fingerprint, time).
  returned: always
  type: list
  elements: dict
certificate_content:
  description: The PEM in O(certificate_path), V(null) when there is none.
  returned: when O(return_content=true)
  type: str
  sample: "-----BEGIN CERTIFICATE-----\n...\n-----END CERTIFICATE-----\n"
chain_content:
  description: The PEM in O(chain_path), V(null) when there is none.
  returned: when O(return_content=true) and O(chain_path) is set
  type: str
backup_file:
  description: Name of the copy of the previous O(certificate_path).
  returned: when O(backup=true) and O(certificate_path) was replaced
  type: str
  sample: /srv/printers/mfp01/cert.pem.2718.2026-11-21@10:12:44~
chain_backup_file:
  description: Name of the copy of the previous O(chain_path).
  returned: when O(backup=true) and O(chain_path) was replaced
  type: str
pkcs12_path:
  description: The O(pkcs12_path) option, when it is set; C(changed) is V(true) when the bundle was (or in check mode
    would be) written.
  returned: when O(pkcs12_path) is set
  type: str
  sample: /srv/printers/mfp01/bundle.p12
pkcs12_backup_file:
  description: Name of the copy of the previous O(pkcs12_path), mode V(0600) like the bundle.
  returned: when O(backup=true) and O(pkcs12_path) was replaced
  type: str
private_key_backup_file:
  description: Name of the copy of the previous O(private_key_path), mode V(0600) like the key.
  returned: when O(backup=true) and O(private_key_path) was replaced (a renewal with O(rekey))
  type: str
"""

from ansible.module_utils.basic import AnsibleModule, env_fallback

from ansible_collections.tokenfleet.pki.plugins.module_utils.backends.scep_enroll import ScepEnrollBackend
from ansible_collections.tokenfleet.pki.plugins.module_utils.common import run_backend
from ansible_collections.tokenfleet.pki.plugins.module_utils.files import backup_argument_spec
from ansible_collections.tokenfleet.pki.plugins.module_utils.pkcs12_bundle import pkcs12_argument_spec
from ansible_collections.tokenfleet.pki.plugins.module_utils.scep.transport import scep_server_argument_spec
from ansible_collections.tokenfleet.pki.plugins.module_utils.signer import (
    KEY_SOURCE_MUTUALLY_EXCLUSIVE,
    key_source_argument_spec,
    require_key_source_libraries,
)
from ansible_collections.tokenfleet.pki.plugins.module_utils.x509 import request_argument_spec


def main():
    argument_spec = key_source_argument_spec()
    argument_spec.update(request_argument_spec())
    argument_spec['challenge_password']['fallback'] = (env_fallback, ['SCEP_CHALLENGE_PASSWORD'])
    argument_spec.update(scep_server_argument_spec())
    argument_spec.update(
        ca_fingerprint=dict(type='str'),
        ca_certificate_path=dict(type='path'),
        certificate_path=dict(type='path', required=True),
        chain_path=dict(type='path'),
        store_on_token=dict(type='bool', default=False),
        key_type=dict(type='str', choices=['rsa', 'ec'], default='rsa'),
        key_size=dict(type='int', choices=[2048, 3072, 4096], default=2048),
        curve=dict(type='str', choices=['secp256r1', 'secp384r1']),
        csr_path=dict(type='path'),
        signature_algorithm=dict(type='str', choices=['auto', 'sha1', 'sha256', 'sha512', 'md5'], default='auto'),
        encryption_algorithm=dict(type='str', choices=['auto', 'aes128', 'aes192', 'aes256', '3des', 'des'],
                                  default='auto'),
        allow_legacy_algorithms=dict(type='bool', default=False),
        renew_before=dict(type='raw'),
        renewal_message=dict(type='str', choices=['pkcsreq', 'renewalreq'], default='pkcsreq'),
        rekey=dict(type='bool', default=False),
        remove_old=dict(type='bool', default=False),
        force=dict(type='bool', default=False),
        poll_attempts=dict(type='int', default=0),
        poll_interval=dict(type='int', default=30),
        splay=dict(type='int', default=0),
        state_path=dict(type='path'),
        history_size=dict(type='int', default=20),
        return_content=dict(type='bool', default=False),
    )
    argument_spec.update(pkcs12_argument_spec())
    argument_spec.update(backup_argument_spec())
    module = AnsibleModule(argument_spec=argument_spec,
                           mutually_exclusive=KEY_SOURCE_MUTUALLY_EXCLUSIVE + [('ca_fingerprint', 'ca_certificate_path')],
                           supports_check_mode=True, add_file_common_args=True)
    require_key_source_libraries(module)
    run_backend(module, ScepEnrollBackend)


if __name__ == '__main__':
    main()
