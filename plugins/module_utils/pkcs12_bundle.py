# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The passphrase-protected PKCS#12 bundle (key, certificate, chain) a module writes for a device. Private to the
collection.

The bundle is written only when it does not open with the passphrase or does not hold exactly the current key,
certificate, chain, friendly name and encryption: so the passphrase is the input, and a bundle that a run killed
after the certificate swap left with the old certificate is written again by the next run.
"""

from __future__ import annotations

import os

from ansible_collections.tokenfleet.pki.plugins.module_utils.common import PkiError
from ansible_collections.tokenfleet.pki.plugins.module_utils.files import (
    check_destination,
    private_file_args,
    read_file,
    write_file,
)
from ansible_collections.tokenfleet.pki.plugins.module_utils.x509 import HAS_CRYPTOGRAPHY, public_key_der

if HAS_CRYPTOGRAPHY:
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.serialization import pkcs12
    from cryptography.x509.oid import NameOID

try:
    from asn1crypto.pkcs12 import Pfx
except ImportError:  # reported with the other missing libraries of the key source
    pass

# OpenSSL 3's "pkcs12 -export" (aes256) and its "-legacy" / OpenSSL 1.1 one (3des): (key and certificate
# encryption, MAC digest). The MAC digest tells which one a bundle was written with.
_KDF_ROUNDS = 2048
_ENCRYPTIONS = {'aes256': ('PBESv2SHA256AndAES256CBC', 'SHA256', 'sha256'),
                '3des': ('PBESv1SHA1And3KeyTripleDESCBC', 'SHA1', 'sha1')}


def pkcs12_argument_spec():
    """The bundle options (documented in scep_enroll)."""
    return dict(pkcs12_path=dict(type='path'), pkcs12_passphrase=dict(type='str', no_log=True),
                pkcs12_friendly_name=dict(type='str'),
                pkcs12_encryption=dict(type='str', choices=sorted(_ENCRYPTIONS), default='aes256'))


class Pkcs12Bundle(object):
    """``pkcs12_path`` of a module that has the options of pkcs12_argument_spec()."""

    def __init__(self, module, backups=None):
        params = module.params
        self.module = module
        self.path = params['pkcs12_path']
        self.passphrase = params['pkcs12_passphrase']
        self.friendly_name = params['pkcs12_friendly_name']
        self.encryption = params['pkcs12_encryption']
        self.backups = backups
        if not self.passphrase:
            raise PkiError('pkcs12_passphrase is %s: it protects the key in pkcs12_path %s'
                           % ('empty' if self.passphrase == '' else 'missing', self.path))
        check_destination(self.path, 'pkcs12_path', module)

    def _name(self, certificate):
        if self.friendly_name is not None:
            return self.friendly_name
        names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return names[0].value if names else None

    def differs(self, key, certificate, chain):
        """None when the bundle opens with the passphrase and holds exactly these, as this task would write them;
        else how it differs, for the result's reason."""
        if not os.path.exists(self.path):
            return 'is missing'
        data = read_file(self.path, 'pkcs12_path')
        try:
            bundle = pkcs12.load_pkcs12(data, self.passphrase.encode('utf-8'))
            mac = Pfx.load(data)['mac_data']['mac']['digest_algorithm']['algorithm'].native
        except (ValueError, TypeError, KeyError):  # not a bundle, or not this passphrase: written again
            return 'does not open with pkcs12_passphrase'
        name = self._name(certificate)
        checks = (
            (bundle.key is not None and public_key_der(bundle.key.public_key()) == public_key_der(key.public_key()),
             'holds another key'),
            (bundle.cert is not None and bundle.cert.certificate == certificate, 'holds another certificate'),
            (bundle.cert is not None and bundle.cert.friendly_name == (name.encode('utf-8') if name is not None else None),
             'has another friendly name'),
            ([cert.certificate for cert in bundle.additional_certs] == list(chain), 'holds another chain'),
            (mac == _ENCRYPTIONS[self.encryption][2], 'is not encrypted as pkcs12_encryption says'),
        )
        return next((why for same, why in checks if not same), None)

    def _content(self, key, certificate, chain):
        algorithm, digest, dummy = _ENCRYPTIONS[self.encryption]
        encryption = (serialization.PrivateFormat.PKCS12.encryption_builder().kdf_rounds(_KDF_ROUNDS)
                      .key_cert_algorithm(getattr(pkcs12.PBES, algorithm)).hmac_hash(getattr(hashes, digest)())
                      .build(self.passphrase.encode('utf-8')))
        name = self._name(certificate)
        return pkcs12.serialize_key_and_certificates(name.encode('utf-8') if name is not None else None, key,
                                                     certificate, list(chain) or None, encryption)

    def ensure(self, key, certificate, chain):
        """Write the bundle unless it holds these already (check mode: only say so); (changed, how it differed).

        Mode 0600 whatever the task's mode says, like the key file: the bundle holds the key.
        """
        why = self.differs(key, certificate, chain)
        if why is not None and not self.module.check_mode:
            write_file(self.module, self.path, self._content(key, certificate, chain), 0o600,
                       private_file_args(self.module, self.path), self.backups)
        if self.module.check_file_absent_if_check_mode(self.path):
            return True, why
        return self.module.set_fs_attributes_if_different(private_file_args(self.module, self.path), why is not None), why
