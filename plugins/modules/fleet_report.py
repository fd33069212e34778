#!/usr/bin/python
# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: fleet_report
short_description: Write the fleet certificate report - HTML, JSON and a Prometheus textfile - from the hosts' rows
version_added: 0.1.0
description:
  - Runs once on the controller (an action plugin; use it with C(run_once)). Takes the row of every host in O(hosts)
    that M(tokenfleet.pki.fleet_report_host) registered under O(results), sorts the rows most urgent first and
    writes, in O(dest), C(fleet-report.json), C(fleet-report.html) (rendered from O(template)) and
    C(tokenfleet.prom), a node_exporter textfile-collector file.
  - Each file is replaced atomically - written to a temp file in O(dest), synced, then renamed over the old one - so
    a web server or node_exporter reading it at any moment sees the old file or the new one, never a part of one.
    Temp files a killed run left are removed by the next one.
  - A host without a registered row (its task did not run for it) still gets a row, C(missing), saying so.
  - C(playbooks/report.yml) is the playbook that uses it; its header describes the rows and their order.
author:
  - tokenfleet.pki contributors (@tokenfleet)
extends_documentation_fragment:
  - tokenfleet.pki.token.attributes
attributes:
  action:
    description: Runs as an action plugin on the controller; no module runs on any host.
    support: full
  check_mode:
    support: full
    details: In check mode nothing is written and no directory is made; C(changed) says whether a file would change.
  diff_mode:
    support: none
options:
  dest:
    description:
      - The directory of the three files, on the controller. Made (mode C(0755)) when it does not exist.
    type: path
    required: true
  hosts:
    description:
      - The hosts of the report, in inventory order, for example V({{ ansible_play_hosts_all }}).
    type: list
    elements: str
    required: true
  results:
    description:
      - The name of the variable under which each host registered the result of M(tokenfleet.pki.fleet_report_host).
    type: str
    required: true
  generated_at:
    description:
      - The moment the rows were computed against, C(YYYY-MM-DDTHH:MM:SSZ) (UTC); written as C(generated_at) and
        C(tokenfleet_report_generated_timestamp_seconds). Give the O(tokenfleet.pki.fleet_report_host#module:now)
        the hosts' rows were computed with.
    type: str
    required: true
  warn_days:
    description:
      - The HTML chart draws this many days left as a dashed line, and the table highlights the days left of
        certificates that expire sooner; bars and tiles count by status either way. Written to the JSON file as
        C(warn_days).
    type: int
    default: 30
  chart_weeks:
    description:
      - How far the HTML chart reaches, in weeks from the earliest unexpired certificate; later expiries share a
        last C(later) bar. The bars are a day, a week, or wider, whatever keeps them at 40 or fewer.
    type: int
    default: 52
  template:
    description:
      - The Jinja2 template of C(fleet-report.html), looked up like M(ansible.builtin.template)'s C(src) (the
        C(templates) directory next to the playbook first). It gets the task's variables, C(report_rows) (most
        urgent first), C(report_generated_at), C(report_warn_days), C(report_chart_weeks) and C(report_page) (the
        rows with every field, the tiles, the counts per group, the expiry chart's bars and the rows as JSON for a
        script, worked out in one pass over the rows).
    type: str
    default: fleet-report.html.j2
seealso:
  - module: tokenfleet.pki.fleet_report_host
  - plugin: tokenfleet.pki.x509_facts
    plugin_type: filter
"""

EXAMPLES = r"""
- name: Every host's row (one module call on a workstation, none for a printer)
  tokenfleet.pki.fleet_report_host:
    certificate_path: "{{ certificate_path }}"
    on_controller: "{{ 'printers' in group_names }}"
    group: "{{ 'printers' if 'printers' in group_names else 'workstations' }}"
    now: "{{ report_time }}"
  register: fleet_row

- name: The report files
  tokenfleet.pki.fleet_report:
    dest: /srv/www/pki
    hosts: "{{ ansible_play_hosts_all }}"
    results: fleet_row
    generated_at: "{{ report_time }}"
  run_once: true
"""

RETURN = r"""
files:
  description: The three files, in the order they are written.
  returned: always
  type: list
  elements: str
  sample: [/srv/www/pki/fleet-report.json, /srv/www/pki/fleet-report.html, /srv/www/pki/tokenfleet.prom]
summary:
  description: How many hosts have each status.
  returned: always
  type: dict
  sample: {expired: 1, missing: 2, pending: 0, expiring: 5, valid: 992}
rows:
  description: The rows as in C(fleet-report.json), most urgent first (see M(tokenfleet.pki.fleet_report_host)).
  returned: always
  type: list
  elements: dict
seconds:
  description:
    - How long each step took on the controller - C(collect) (the hosts' rows), C(sort), C(json), C(html) (the
      template), C(prometheus) and C(write) (all three files) - for C(bench/report_bench.py).
  returned: always
  type: dict
  sample: {collect: 0.41, sort: 0.002, json: 0.03, html: 1.2, prometheus: 0.01, write: 0.02}
"""
