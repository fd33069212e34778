#!/usr/bin/python
# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: fleet_report_host
short_description: A host's row of the fleet certificate report, from one read of its certificate, state and failure record
version_added: 0.1.0
description:
  - Reads a host's certificate, the M(tokenfleet.pki.scep_enroll) state file next to it and the failure record the
    roles write when a run fails, in one call, and returns the host's row of the fleet report (subject, issuer,
    serial, expiry, days left, status, last error), as C(playbooks/report.yml) writes it with
    M(tokenfleet.pki.fleet_report).
  - With O(on_controller=false) one module call on the host reads the three files. With O(on_controller=true) the
    files are read on the controller and no module runs anywhere; the host is not contacted.
  - The row is computed on the controller with the same code as the P(tokenfleet.pki.x509_facts#filter) filter, so
    hosts need no Python library beyond the standard library.
  - Changes nothing. A file that is missing or broken, and a host that is unreachable, do not fail the task; the row
    says why (RV(row.last_error)). Of the state file only whether a request is pending, its transaction id and its
    start are returned; of the failure record its time, task and reason.
author:
  - tokenfleet.pki contributors (@tokenfleet)
extends_documentation_fragment:
  - tokenfleet.pki.token.attributes
attributes:
  action:
    description: Runs as an action plugin on the controller, which runs the module on the host when needed.
    support: full
    details: The action plugin reads controller-side files itself and computes the row.
  check_mode:
    support: full
    details: This module changes nothing, so it runs the same in check mode.
  diff_mode:
    support: N/A
    details: This module changes nothing.
options:
  certificate_path:
    description:
      - The PEM certificate of the host. Only the first certificate counts when the file holds a chain.
    type: path
    required: true
  state_path:
    description:
      - The M(tokenfleet.pki.scep_enroll) state file. A host without one is fine.
      - Defaults to O(certificate_path) with C(.scep.json) appended.
    type: path
  error_path:
    description:
      - The failure record the roles write when a run fails (JSON with C(time), C(task) and C(reason)). A host without
        one is fine.
      - Defaults to O(certificate_path) with C(.error.json) appended.
    type: path
  on_controller:
    description:
      - Read the files on the controller instead of on the host (printers, whose files the controller keeps).
    type: bool
    default: false
  group:
    description:
      - The group shown in the row and used as the C(group) label of the Prometheus series.
    type: str
    default: workstations
  renew_before:
    description:
      - When the certificate is C(expiring), as M(tokenfleet.pki.scep_enroll) takes it - whole days or a share of the
        lifetime such as V("33%"). Defaults to its default - 30 days, at most a third of the lifetime.
    type: raw
  now:
    description:
      - The moment the row is computed against, C(YYYY-MM-DDTHH:MM:SSZ) (UTC). Give every host of a report the same.
      - Defaults to the current time on the controller.
    type: str
requirements:
  - cryptography (on the controller)
seealso:
  - module: tokenfleet.pki.fleet_report
  - plugin: tokenfleet.pki.x509_facts
    plugin_type: filter
"""

EXAMPLES = r"""
- name: A workstation's row, read on the host with one module call
  tokenfleet.pki.fleet_report_host:
    certificate_path: /etc/pki/tokenfleet/vpn.pem
    now: "{{ report_time }}"
  register: report_host

- name: A printer's row, from files on the controller (the printer is not contacted)
  tokenfleet.pki.fleet_report_host:
    certificate_path: "{{ playbook_dir }}/device-keys/{{ inventory_hostname }}/cert.pem"
    on_controller: true
    group: printers
    renew_before: 20%

- name: Show it
  ansible.builtin.debug:
    msg: "{{ report_host.row.status }}: {{ report_host.row.days_left }} days left ({{ report_host.row.last_error }})"
"""

RETURN = r"""
row:
  description:
    - The host's row of the fleet report. Facts of the certificate are V(null) when there is no readable certificate.
  returned: always, also when the host is unreachable
  type: dict
  contains:
    host:
      description: The inventory name.
      type: str
    group:
      description: O(group).
      type: str
    certificate_path:
      description: O(certificate_path).
      type: str
    on_controller:
      description: O(on_controller).
      type: bool
    subject:
      description: The subject as an RFC 4514 string.
      type: str
    issuer:
      description: The issuer as an RFC 4514 string.
      type: str
    serial:
      description: The serial number in lowercase hexadecimal.
      type: str
    not_before:
      description: Start of validity, C(YYYY-MM-DDTHH:MM:SSZ).
      type: str
    not_after:
      description: End of validity, C(YYYY-MM-DDTHH:MM:SSZ).
      type: str
    days_left:
      description: Whole days from O(now) until RV(row.not_after), rounded down; negative when expired.
      type: int
    expiry_week:
      description: The ISO week of RV(row.not_after), for example V(2026-W07).
      type: str
    fingerprint_sha256:
      description: SHA-256 of the DER certificate, colon-separated lowercase hexadecimal.
      type: str
    status:
      description:
        - V(pending) when the state file holds a pending request (whatever the certificate), V(missing) without a
          readable certificate, V(expired), V(expiring) when due for renewal under O(renew_before), else V(valid).
      type: str
      sample: expiring
    pending_transaction:
      description: The transaction id of the pending request.
      type: str
    pending_since:
      description: When the pending request was started.
      type: str
    failed_at:
      description: The time of the failure record.
      type: str
    last_error:
      description:
        - Why the last run failed (from the failure record), and why the certificate or state file could not be read,
          joined by C(; ); V(null) when there is nothing to say.
      type: str
      sample: "the last run failed at 2026-11-21T03:40:12Z: communication error: connection refused"
    last_run_failed:
      description: Whether there is a failure record of the last run.
      type: bool
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.tokenfleet.pki.plugins.module_utils.report_read import ARGUMENT_SPEC, host_paths, read_host_files


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    paths = host_paths(module.params['certificate_path'], module.params['state_path'], module.params['error_path'])
    module.exit_json(changed=False, read=read_host_files(*paths))


if __name__ == '__main__':
    main()
