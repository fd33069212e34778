# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Backend of tokenfleet.pki.csr. Private to the collection."""

from __future__ import annotations

import os

from ansible_collections.tokenfleet.pki.plugins.module_utils.files import (
    apply_file_attributes,
    backup_file,
    check_destination,
    read_file,
    write_file,
)
from ansible_collections.tokenfleet.pki.plugins.module_utils.signer import KeySource
from ansible_collections.tokenfleet.pki.plugins.module_utils.x509 import (
    RequestError,
    RequestSpec,
    load_request,
    request_facts,
    request_pem,
)


class CsrBackend(object):
    def __init__(self, module):
        self.module = module
        params = module.params
        self.path = params['path']
        self.state = params['state']
        check_destination(self.path, 'path', module)
        if params['return_content'] and params.get('challenge_password'):
            # Base64 inside the PEM, the password would escape Ansible's no_log masking.
            raise RequestError('return_content cannot be used with challenge_password: the request carries the '
                               'password in clear, so returning it would return the password; read the file instead')
        self.spec = RequestSpec(params) if self.state == 'present' else None
        self.key_source = KeySource(module) if self.state == 'present' else None
        self.check_mode = module.check_mode
        self.default_mode = 0o600 if params.get('challenge_password') is not None else 0o644

    def _existing(self):
        if not os.path.exists(self.path):
            return None, None
        data = read_file(self.path, 'path')
        try:
            return data, load_request(data, 'path %s' % self.path)
        except RequestError:
            return data, None

    def run(self):
        data, existing = self._existing()
        result = dict(filename=self.path, changed=False)
        if self.state == 'absent':
            return self._absent(data, result)
        with self.key_source as private_key:
            if existing is None:
                reasons = ['the file does not exist' if data is None else 'the file is not a certificate request']
            else:
                reasons = self.spec.differences(existing, private_key)
            if self.module.params['force']:
                reasons = reasons or ['force=true']
            csr = self.spec.build(private_key) if reasons else existing
        before = request_facts(existing) if existing is not None else {}
        after = request_facts(csr)
        if reasons:
            result['changed'] = True
            if not self.check_mode:
                backups = {} if self.module.params['backup'] else None
                write_file(self.module, self.path, request_pem(csr), self.default_mode, backups=backups)
                if backups:
                    result['backup_file'] = backups[os.path.abspath(self.path)]
        result['changed'] = apply_file_attributes(self.module, self.path, result['changed'], self.default_mode)
        result.update(after)
        result['reasons'] = reasons
        result['diff'] = dict(before=before, after=after)
        if self.module.params['return_content']:
            result['csr'] = request_pem(csr).decode('ascii')
        return result

    def _absent(self, data, result):
        if data is not None:
            result['changed'] = True
            if not self.check_mode:
                if self.module.params['backup']:
                    result['backup_file'] = backup_file(self.module, self.path)
                os.remove(self.path)
        return result
