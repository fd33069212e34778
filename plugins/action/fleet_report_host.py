# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""tokenfleet.pki.fleet_report_host: one module call on the host reads its files (or none, on the controller), and
the row is computed here with module_utils/fleet_report.py. Documented in plugins/modules/fleet_report_host.py."""

from __future__ import annotations

from ansible.errors import AnsibleActionFail, AnsibleConnectionFailure
from ansible.plugins.action import ActionBase

from ansible_collections.tokenfleet.pki.plugins.module_utils import fleet_report
from ansible_collections.tokenfleet.pki.plugins.module_utils.report_read import ARGUMENT_SPEC, host_paths, read_host_files


class ActionModule(ActionBase):

    TRANSFERS_FILES = False

    def run(self, tmp=None, task_vars=None):
        super(ActionModule, self).run(tmp, task_vars)
        dummy, args = self.validate_argument_spec(ARGUMENT_SPEC)
        try:  # bad input fails the task, naming the option, before anything is read
            moment = fleet_report.parse_time(args['now'], 'now')
            rule = fleet_report.renewal_rule(args['renew_before'])
        except fleet_report.ReportError as exc:
            raise AnsibleActionFail(str(exc))
        paths = host_paths(args['certificate_path'], args['state_path'], args['error_path'])
        read = unreachable = failed = None
        if args['on_controller']:
            read = read_host_files(*paths)
        else:
            try:
                result = self._execute_module(
                    module_name='tokenfleet.pki.fleet_report_host', task_vars=task_vars,
                    module_args=dict(certificate_path=paths[0], state_path=paths[1], error_path=paths[2]))
                self._remove_tmp_path(self._connection._shell.tmpdir)
            except AnsibleConnectionFailure as exc:  # the row says so; the host counts as unreachable in the recap
                unreachable = str(exc)
            else:
                if result.get('unreachable'):
                    unreachable = result.get('msg')
                elif result.get('failed') or 'read' not in result:
                    failed = result.get('msg')
                else:
                    read = result['read']
        row = fleet_report.host_row(task_vars['inventory_hostname'], args['group'], args['on_controller'], paths[0], read,
                                    moment, rule, unreachable=unreachable, failed=failed)
        outcome = dict(changed=False, row=row)
        if unreachable is not None:
            outcome.update(unreachable=True, msg=unreachable)
        return outcome
