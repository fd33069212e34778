# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Backend of tokenfleet.pki.presented_certificate: the certificate a TLS server presents, and whether it can stay
(issued under the pinned CA, outside the renewal window). Private to the collection.

The handshake verifies nothing; the chain the server sent is then checked here with cryptography: a path from the
certificate through the CA certificates the server sent to a pinned certificate, each link a signature check
(verify_directly_issued_by) by a certificate that is a CA. Not OpenSSL's verification, which also judges the
certificate's purpose for a TLS server: SCEP CAs such as micromdm issue clientAuth-only device certificates that the
devices serve all the same. No host name is checked either: devices are often known by address only.
"""

from __future__ import annotations

import _ssl
import datetime
import os
import socket
import ssl

from ansible_collections.tokenfleet.pki.plugins.module_utils.common import PkiError
from ansible_collections.tokenfleet.pki.plugins.module_utils.scep.client import load_pinned_certificates
from ansible_collections.tokenfleet.pki.plugins.module_utils.files import check_destination, ensure_content
from ansible_collections.tokenfleet.pki.plugins.module_utils.renewal_window import RenewBefore, RenewBeforeError, certificate_due
from ansible_collections.tokenfleet.pki.plugins.module_utils.x509 import certificate_facts, certificate_pem, load_certificate

try:
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
except ImportError:  # the module reports the missing library (require_cryptography)
    pass

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


def _presented_chain(host, port, server_name, timeout):
    """The DER certificates the server sends in a handshake, its own first."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection((host, port), timeout=timeout) as raw:
        with context.wrap_socket(raw, server_hostname=server_name) as tls:
            if hasattr(tls, 'get_unverified_chain'):  # Python 3.13
                return list(tls.get_unverified_chain())
            # Python 3.10-3.12 have the same call on the underlying _ssl object only
            chain = tls._sslobj.get_unverified_chain()  # pylint: disable=protected-access
            return [entry.public_bytes(_ssl.ENCODING_DER) for entry in chain or []]


def _is_ca(certificate):
    try:
        return certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return certificate.version == x509.Version.v1  # an old v1 root has no extensions


def _issued_by(certificate, issuer):
    try:
        certificate.verify_directly_issued_by(issuer)
        return True
    except (ValueError, TypeError, InvalidSignature):
        return False


def chain_to_pin(leaf, sent, pinned, now):
    """None when a path leads from ``leaf`` through CA certificates of ``sent`` to one of ``pinned``; else why not."""
    current, others = leaf, [entry for entry in sent if entry != leaf]
    for dummy in range(len(others) + 1):
        if any(_is_ca(pin) and _issued_by(current, pin) for pin in pinned) or current in pinned:
            return None
        step = next((entry for entry in others if _is_ca(entry) and _issued_by(current, entry)), None)
        if step is None:
            return 'no path from %s to a pinned CA certificate' % (
                'the self-signed certificate' if current == leaf and _issued_by(leaf, leaf) else current.issuer.rfc4514_string())
        if not step.not_valid_before_utc <= now <= step.not_valid_after_utc:
            return 'the CA certificate %s sent with it is not valid now' % step.subject.rfc4514_string()
        current = step
        others.remove(step)
    return 'no path to a pinned CA certificate'


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
            self.pinned = load_pinned_certificates(params['ca_certificate_path'])
        except PkiError as exc:
            raise PresentedCertificateError('ca_certificate_path %s holds no usable CA certificate: %s'
                                            % (params['ca_certificate_path'], exc))
        if params['path']:
            check_destination(params['path'], 'path', module)

    def _read(self):
        """(the certificate or None, its chain leads to the pin?, why not)."""
        params = self.module.params
        try:
            sent = _presented_chain(params['host'], params['port'], params['server_name'] or None, params['timeout'])
        except (OSError, ssl.SSLError) as exc:
            sent, why = [], getattr(exc, 'strerror', None) or str(exc)
        else:
            why = 'the server sent no certificate'
        if not sent:
            return None, False, 'no certificate could be read from %s:%d: %s' % (params['host'], params['port'], why)
        where = 'the certificate %s:%d presents' % (params['host'], params['port'])
        sent = [load_certificate(der, where) for der in sent]
        why = chain_to_pin(sent[0], sent[1:], self.pinned, datetime.datetime.now(datetime.timezone.utc))
        return sent[0], why is None, None if why is None else 'not issued under the pinned CA (%s)' % why

    def run(self):
        params = self.module.params
        certificate, issued, why = self._read()
        result = dict(changed=False, presented=certificate is not None, issued_by_pinned_ca=issued, renewal_due=None,
                      renew_at=None, certificate=None, keep=False)
        if certificate is None:
            return dict(result, reason=why)
        due, renew_at = certificate_due(certificate, datetime.datetime.now(datetime.timezone.utc), self.renew_before)
        result.update(certificate=certificate_facts(certificate), renewal_due=due, renew_at=renew_at.strftime(TIME_FORMAT))
        if not issued:
            return dict(result, reason=why)
        if certificate.not_valid_after_utc < datetime.datetime.now(datetime.timezone.utc):
            return dict(result, reason='issued under the pinned CA but expired at %s' % result['certificate']['not_after'])
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
