# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Backend of tokenfleet.pki.presented_certificate: the certificate a TLS server presents, and whether it can stay
(issued under the pinned CA, outside the renewal window). Private to the collection.

The pin is checked by OpenSSL itself: a second context trusts only the pinned certificates (partial chains allowed,
so an intermediate can be the pin) and the handshake either verifies the chain the server sends or fails saying why.
No host name is checked: devices are often known by address only, and the question is who issued the certificate.
"""

from __future__ import annotations

import datetime
import os
import socket
import ssl

from ansible_collections.tokenfleet.pki.plugins.module_utils.common import PkiError
from ansible_collections.tokenfleet.pki.plugins.module_utils.files import check_destination, ensure_content
from ansible_collections.tokenfleet.pki.plugins.module_utils.renewal_window import RenewBefore, RenewBeforeError, certificate_due
from ansible_collections.tokenfleet.pki.plugins.module_utils.x509 import certificate_facts, certificate_pem, load_certificate

TIME_FORMAT = '%Y-%m-%dT%H:%M:%SZ'

ARGUMENT_SPEC = dict(
    host=dict(type='str', required=True),
    port=dict(type='int', default=443),
    server_name=dict(type='str'),
    ca_certificate_path=dict(type='path', required=True),
    renew_before=dict(type='raw'),
    timeout=dict(type='int', default=10),
    path=dict(type='path'),
)


class PresentedCertificateError(PkiError):
    """Bad input (an option named in the message)."""


def _context(cafile=None):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    if cafile is None:
        context.verify_mode = ssl.CERT_NONE
    else:
        context.load_verify_locations(cafile=cafile)
        context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return context


def _handshake(context, host, port, server_name, timeout):
    """The DER certificate the server presents in a handshake with ``context``."""
    with socket.create_connection((host, port), timeout=timeout) as raw:
        with context.wrap_socket(raw, server_hostname=server_name) as tls:
            return tls.getpeercert(binary_form=True)


class PresentedCertificateBackend(object):
    def __init__(self, module):
        self.module = module
        params = module.params
        if not 1 <= params['port'] <= 65535:
            raise PresentedCertificateError('port must be 1 to 65535 (got %d)' % params['port'])
        if params['timeout'] < 1:
            raise PresentedCertificateError('timeout must be positive (got %d)' % params['timeout'])
        try:
            self.renew_before = RenewBefore(params['renew_before'])
        except RenewBeforeError as exc:
            raise PresentedCertificateError(str(exc))
        try:
            self.trusted = _context(params['ca_certificate_path'])
        except (OSError, ssl.SSLError) as exc:
            raise PresentedCertificateError('ca_certificate_path %s holds no usable CA certificate: %s'
                                            % (params['ca_certificate_path'], getattr(exc, 'strerror', None) or exc))
        if params['path']:
            check_destination(params['path'], 'path', module)

    def _read(self):
        """(DER or None, issued under the pin?, why not)."""
        params = self.module.params
        where = (params['host'], params['port'], params['server_name'] or None, params['timeout'])
        try:
            return _handshake(self.trusted, *where), True, None
        except ssl.SSLCertVerificationError as exc:
            why = 'not issued under the pinned CA (%s)' % (exc.verify_message or exc.reason)
        except (OSError, ssl.SSLError) as exc:
            return None, False, 'no certificate could be read from %s:%d: %s' % (
                params['host'], params['port'], getattr(exc, 'strerror', None) or exc)
        try:
            return _handshake(_context(), *where), False, why
        except (OSError, ssl.SSLError) as exc:
            return None, False, 'no certificate could be read from %s:%d: %s' % (
                params['host'], params['port'], getattr(exc, 'strerror', None) or exc)

    def run(self):
        params = self.module.params
        der, issued, why = self._read()
        result = dict(changed=False, presented=der is not None, issued_by_pinned_ca=issued, renewal_due=None,
                      renew_at=None, certificate=None, keep=False)
        if der is None:
            return dict(result, reason=why)
        certificate = load_certificate(der, 'the certificate %s:%d presents' % (params['host'], params['port']))
        due, renew_at = certificate_due(certificate, datetime.datetime.now(datetime.timezone.utc), self.renew_before)
        result.update(certificate=certificate_facts(certificate), renewal_due=due, renew_at=renew_at.strftime(TIME_FORMAT))
        if not issued:
            return dict(result, reason=why)
        if due:
            return dict(result, reason='issued under the pinned CA but due for renewal (%s)' % self.renew_before.describe(
                certificate.not_valid_before_utc, certificate.not_valid_after_utc))
        result.update(keep=True, reason='issued under the pinned CA, renewal from %s' % result['renew_at'])
        if params['path']:
            backups = {} if params['backup'] else None
            result['changed'] = ensure_content(self.module, params['path'], certificate_pem(certificate).encode('ascii'),
                                               0o644, backups)
            if backups:
                result['backup_file'] = backups[os.path.abspath(params['path'])]
        return result
