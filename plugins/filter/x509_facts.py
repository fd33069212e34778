# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
name: x509_facts
short_description: Subject, issuer, serial, expiry and fingerprint of a PEM certificate
version_added: 0.1.0
description:
  - Parses an X.509 certificate in PEM form (the first one when the text holds a chain) on the controller and
    returns the facts a fleet report needs, with the days left until it expires.
  - Uses the same code as the collection's modules (C(cryptography)), so names and fingerprints are written the same
    way as in the results of M(tokenfleet.pki.scep_enroll) and its state file history.
  - To read a certificate from a managed host, use M(ansible.builtin.slurp) and the P(ansible.builtin.b64decode#filter)
    filter. The C(playbooks/report.yml) playbook of this collection computes its rows with the same code through
    M(tokenfleet.pki.fleet_report_host), which reads a host's certificate, state file and failure record in one call.
author:
  - tokenfleet.pki contributors (@tokenfleet)
options:
  _input:
    description:
      - The certificate as PEM text (C(-----BEGIN CERTIFICATE-----)). Further certificates after the first are ignored.
    type: string
    required: true
  now:
    description:
      - The moment O(_input) is judged against, as C(YYYY-MM-DDTHH:MM:SSZ) (UTC).
      - Give the same value for every certificate of a report, so that all rows are computed against one point in time.
      - Defaults to the current time.
    type: string
  renew_before:
    description:
      - The renewal window that decides RV(_value.renewal_due), as M(tokenfleet.pki.scep_enroll) takes it - whole
        days (for example V(30)) or a share of the certificate's lifetime (for example V("33%")).
      - Defaults to M(tokenfleet.pki.scep_enroll)'s default - 30 days, but at most a third of the lifetime.
      - The same code decides both, so a certificate the report shows as due is one the next run renews.
    type: raw
  on_error:
    description:
      - What happens when O(_input) is not a certificate.
      - V(fail) fails the task with a message naming the problem.
      - V(return) returns a dictionary whose RV(_value.error) holds that message and whose other keys are V(null),
        so that one broken certificate does not stop a report.
    type: string
    choices: [fail, return]
    default: fail
requirements:
  - cryptography (on the controller)
seealso:
  - module: ansible.builtin.slurp
  - module: tokenfleet.pki.scep_enroll
  - module: tokenfleet.pki.fleet_report_host
"""

EXAMPLES = r"""
- name: Read a host's certificate
  ansible.builtin.slurp:
    src: /etc/pki/tokenfleet/vpn.pem
  register: vpn_certificate

- name: Show when it expires
  ansible.builtin.debug:
    msg: >-
      {{ facts.subject }} expires {{ facts.not_after }} ({{ facts.days_left }} days left),
      SHA-256 fingerprint {{ facts.fingerprint_sha256 }}
  vars:
    facts: "{{ vpn_certificate.content | ansible.builtin.b64decode | tokenfleet.pki.x509_facts }}"

- name: Is a 24-hour certificate due? (the default window - a third of its lifetime, so after 16 hours)
  ansible.builtin.debug:
    msg: "{{ (vpn_certificate.content | ansible.builtin.b64decode | tokenfleet.pki.x509_facts).renewal_due }}"

- name: Facts of a controller-side certificate; a broken file gives error text instead of failing
  ansible.builtin.set_fact:
    printer_certificate: >-
      {{ lookup('ansible.builtin.file', 'device-keys/mfp-001/cert.pem')
         | tokenfleet.pki.x509_facts(on_error='return', now='2026-01-01T00:00:00Z') }}
"""

RETURN = r"""
_value:
  description:
    - Facts of the certificate.
  type: dict
  contains:
    subject:
      description: The subject as an RFC 4514 string, for example V(CN=ws-001.example.com,O=Example).
      type: str
    issuer:
      description: The issuer as an RFC 4514 string.
      type: str
    serial:
      description: The serial number in lowercase hexadecimal, without separators.
      type: str
    not_before:
      description: Start of validity, C(YYYY-MM-DDTHH:MM:SSZ) (UTC).
      type: str
    not_after:
      description: End of validity, C(YYYY-MM-DDTHH:MM:SSZ) (UTC).
      type: str
    days_left:
      description:
        - Whole days from O(now) until RV(_value.not_after), rounded down.
        - V(0) means it expires within a day; a negative number means it has expired.
      type: int
    expired:
      description: Whether RV(_value.not_after) lies before O(now).
      type: bool
    renewal_due:
      description:
        - Whether the certificate is due for renewal at O(now) under O(renew_before) (also when it has expired), as
          M(tokenfleet.pki.scep_enroll) decides it.
      type: bool
    renew_at:
      description: From when the certificate is due for renewal under O(renew_before), C(YYYY-MM-DDTHH:MM:SSZ) (UTC).
      type: str
    expiry_week:
      description: The ISO 8601 week in which the certificate expires, for example V(2026-W07).
      type: str
    fingerprint_sha256:
      description: SHA-256 of the DER certificate as colon-separated lowercase hexadecimal.
      type: str
    error:
      description:
        - V(null) for a certificate.
        - With O(on_error=return), why O(_input) is not a certificate; every other key is then V(null).
      type: str
"""

from ansible.errors import AnsibleFilterError

from ansible_collections.tokenfleet.pki.plugins.module_utils import fleet_report
from ansible_collections.tokenfleet.pki.plugins.module_utils import x509 as x509_utils


def x509_facts(data, now=None, on_error='fail', renew_before=None):
    """PEM text -> subject, issuer, serial, not_before, not_after, days_left, expired, renewal_due, renew_at, expiry_week,
    fingerprint_sha256 (module_utils/fleet_report.py, which the fleet report's rows use too)."""
    if on_error not in ('fail', 'return'):
        raise AnsibleFilterError('tokenfleet.pki.x509_facts: on_error must be fail or return, got %r' % (on_error,))
    if not x509_utils.HAS_CRYPTOGRAPHY:
        raise AnsibleFilterError('tokenfleet.pki.x509_facts needs the Python library cryptography on the controller: %s'
                                 % x509_utils.CRYPTOGRAPHY_IMPORT_ERROR)
    try:
        moment = fleet_report.parse_time(now)
        rule = fleet_report.renewal_rule(renew_before)
    except fleet_report.ReportError as exc:
        raise AnsibleFilterError('tokenfleet.pki.x509_facts: %s' % exc)
    facts = fleet_report.certificate_facts(data, moment, rule)
    if facts['error'] is not None and on_error == 'fail':
        raise AnsibleFilterError('tokenfleet.pki.x509_facts: %s' % facts['error'])
    return facts


class FilterModule(object):
    """tokenfleet.pki certificate filters."""

    def filters(self):
        return {'x509_facts': x509_facts}
