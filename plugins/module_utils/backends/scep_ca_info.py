# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Backend of tokenfleet.pki.scep_ca_info. Private to the collection."""

from __future__ import annotations

import os

from ansible_collections.tokenfleet.pki.plugins.module_utils.files import check_destination, ensure_content
from ansible_collections.tokenfleet.pki.plugins.module_utils.scep.client import (
    CaCertificates,
    choose_algorithms,
    fingerprint,
    load_pinned_certificates,
    normalise_fingerprint,
    normalise_ra_fingerprints,
    parse_ca_certificates,
)
from ansible_collections.tokenfleet.pki.plugins.module_utils.scep.message import ScepError
from ansible_collections.tokenfleet.pki.plugins.module_utils.scep.transport import ScepCapsError, ScepTransport
from ansible_collections.tokenfleet.pki.plugins.module_utils.x509 import (
    certificate_file_facts,
    certificate_pem,
    pem_certificates_facts,
)


class ScepCaInfoBackend(object):
    def __init__(self, module):
        self.module = module
        params = module.params
        if params['timeout'] < 1:
            raise ScepError('timeout must be positive (got %d)' % params['timeout'])
        self.transport = ScepTransport(params['url'], params['timeout'], params['validate_certs'], params['ca_path'])
        self.fingerprint = normalise_fingerprint(params['ca_fingerprint']) if params['ca_fingerprint'] else None
        self.ra_fingerprints = normalise_ra_fingerprints(params['ra_fingerprint'])
        self.pinned = load_pinned_certificates(params['ca_certificate_path']) if params['ca_certificate_path'] else []
        if params['chain_path']:
            check_destination(params['chain_path'], 'chain_path', module)

    def run(self):
        params = self.module.params
        try:
            caps, caps_error = self.transport.get_ca_caps(params['ca_identifier']), None
        except ScepCapsError as exc:
            caps, caps_error = None, str(exc)  # shown, not hidden: scep_enroll stops on it unless the algorithms are set
        content_type, data = self.transport.get_ca_cert(params['ca_identifier'])
        certificates = parse_ca_certificates(content_type, data)
        # Without a pin every self-signed or CA certificate is shown as a CA: this is how a user learns the pin.
        pinned = list(self.pinned)
        if self.fingerprint is not None:
            name, value = self.fingerprint
            pinned += [cert for cert in certificates if fingerprint(cert, name) == value]
        is_pinned = self.fingerprint is not None or bool(self.pinned)
        if not is_pinned:
            pinned = [cert for cert in certificates if cert.issuer == cert.subject] or certificates[:1]
        ca_certificates = CaCertificates(certificates, pinned, self.ra_fingerprints)
        described = ca_certificates.describe()
        if not is_pinned:
            for summary in described:
                if summary['role'] == 'ca':
                    summary['matches_pin'] = False
        algorithms = None
        if caps is not None:
            digest, cipher, use_post = choose_algorithms(caps)
            algorithms = dict(signature=digest, encryption=cipher, method='POST' if use_post else 'GET')
        result = dict(changed=False, caps=caps, content_type=content_type, certificates=described,
                      pinned=is_pinned, algorithms=algorithms)
        if caps_error is not None:
            result['caps_error'] = caps_error
        content = ''.join(certificate_pem(cert) for cert in ca_certificates.ca)
        if params['return_content']:
            result['chain_content'] = content
        if params['chain_path']:
            result.update(self._write_chain(params['chain_path'], content.encode('ascii')))
        return result

    def _write_chain(self, path, content):
        """Write the CA chain to ``path``: changed, backup_file when one was made, and the diff of its certificates."""
        before = certificate_file_facts(path)
        backups = {} if self.module.params['backup'] else None
        result = dict(changed=ensure_content(self.module, path, content, 0o644, backups))
        if backups:
            result['backup_file'] = backups[os.path.abspath(path)]
        if self.module._diff:  # the file holds exactly ``content`` after the run (in check mode: would hold)
            after = pem_certificates_facts(content)
            result['diff'] = dict(before=dict(chain_path=path, certificates=before),
                                  after=dict(chain_path=path, certificates=after))
        return result
