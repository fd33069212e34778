# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""tokenfleet.pki.fleet_report: the hosts' registered rows, sorted once, rendered and written atomically on the
controller by module_utils/fleet_report.py. Documented in plugins/modules/fleet_report.py."""

from __future__ import annotations

import os
import time

from ansible.errors import AnsibleActionFail, AnsibleError
from ansible.module_utils.common.text.converters import to_text
from ansible.plugins.action import ActionBase
from ansible.utils.unsafe_proxy import wrap_var

from ansible_collections.tokenfleet.pki.plugins.module_utils import fleet_report, report_page
from ansible_collections.tokenfleet.pki.plugins.module_utils.common import PkiError

try:  # ansible-core 2.19 renders only text marked as a trusted template
    from ansible.template import trust_as_template
except ImportError:  # ansible-core < 2.19, which templates variables' text again unless it is marked unsafe (wrap_var)
    trust_as_template = None


class ActionModule(ActionBase):

    TRANSFERS_FILES = False
    _requires_connection = False

    def _row(self, hostvars, host, results):
        """The row that host's fleet_report_host task registered, read without templating the host's other variables."""
        variables = hostvars.raw_get(host) if hasattr(hostvars, 'raw_get') else hostvars[host]
        result = variables.get(results) if hasattr(variables, 'get') else None
        row = result.get('row') if isinstance(result, dict) else None
        if isinstance(row, dict) and row.get('host') == host:
            return dict(row)
        return fleet_report.fallback_row(host, result.get('msg') if isinstance(result, dict) else None)

    def _render(self, source, task_vars, variables):
        searchpath = list(task_vars.get('ansible_search_path', [])) + [self._loader._basedir, os.path.dirname(source)]
        searchpath = [path for base in searchpath for path in (os.path.join(base, 'templates'), base)]
        template_vars = dict(task_vars, **(variables if trust_as_template else wrap_var(variables)))
        templar = self._templar.copy_with_new_env(searchpath=searchpath, available_variables=template_vars)
        text = self._loader.get_text_file_contents(source) if trust_as_template else to_text(
            self._loader._get_file_contents(source)[0])
        if trust_as_template:
            return templar.template(trust_as_template(text), escape_backslashes=False)
        return templar.do_template(text, preserve_trailing_newlines=True, escape_backslashes=False)

    def run(self, tmp=None, task_vars=None):
        super(ActionModule, self).run(tmp, task_vars)
        dummy, args = self.validate_argument_spec(fleet_report.REPORT_ARGUMENT_SPEC)
        try:  # bad input fails naming the option, before anything is read or written
            fleet_report.parse_time(args['generated_at'], 'generated_at')
        except fleet_report.ReportError as exc:
            raise AnsibleActionFail(str(exc))
        if os.path.exists(args['dest']) and not os.path.isdir(args['dest']):
            raise AnsibleActionFail('dest %s is not a directory' % args['dest'])
        try:
            source = self._find_needle('templates', args['template'])
        except AnsibleError as exc:
            raise AnsibleActionFail('template %s not found: %s' % (args['template'], exc))

        clock = [time.monotonic()]
        seconds = {}

        def step(name):
            clock.append(time.monotonic())
            seconds[name] = round(clock[-1] - clock[-2], 3)

        hostvars = task_vars['hostvars']
        rows = [self._row(hostvars, host, args['results']) for host in args['hosts']]
        step('collect')
        rows = fleet_report.sort_rows(rows)
        step('sort')
        document = fleet_report.json_report(args['generated_at'], args['warn_days'], rows)
        step('json')
        html = self._render(source, task_vars, report_page.template_variables(
            rows, args['generated_at'], args['warn_days'], args['chart_weeks']))
        step('html')
        contents = (document, html, fleet_report.prometheus_text(args['generated_at'], rows))
        step('prometheus')
        paths = [os.path.join(args['dest'], name) for name in fleet_report.FILE_NAMES]
        check_mode = bool(self._task.check_mode)
        changed = False
        try:
            if not os.path.isdir(args['dest']):
                changed = True
                if not check_mode:
                    os.makedirs(args['dest'], 0o755)
            for path, content in zip(paths, contents):
                changed = fleet_report.replace_file(path, content, 0o644, check_mode) or changed
        except (OSError, PkiError) as exc:
            raise AnsibleActionFail('the report could not be written: %s' % (getattr(exc, 'strerror', None) or exc))
        step('write')
        return dict(changed=changed, files=paths, summary=fleet_report.summary(rows), rows=rows, seconds=seconds)
