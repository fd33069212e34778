# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Pinning a root or any CA of the chain: which certificates GetCACert sent belong to it, and who receives requests."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from ansible_collections.tokenfleet.pki.plugins.module_utils.scep.client import CaCertificates
from ansible_collections.tokenfleet.pki.plugins.module_utils.scep.message import ScepError

NOW = datetime.datetime.now(datetime.timezone.utc)
ROOT_KEY, INTERMEDIATE_KEY, OTHER_KEY = (rsa.generate_private_key(public_exponent=65537, key_size=2048) for dummy in range(3))


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _certificate(cn, key, issuer_name, signer, ca=True, start=-1, end=365, usage=None):
    builder = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(issuer_name).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(NOW + datetime.timedelta(days=start))
               .not_valid_after(NOW + datetime.timedelta(days=end))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if usage is not None:
        builder = builder.add_extension(x509.KeyUsage(*usage), critical=True)
    return builder.sign(signer, hashes.SHA256())


ROOT = _certificate('Root', ROOT_KEY, _name('Root'), ROOT_KEY)
INTERMEDIATE = _certificate('Intermediate', INTERMEDIATE_KEY, ROOT.subject, ROOT_KEY)
OTHER_ROOT = _certificate('Root', OTHER_KEY, _name('Root'), OTHER_KEY)  # same name, other key: not the pinned root
RA_USAGE = (True, False, True, False, False, False, False, False, False)


def test_a_pinned_root_anchors_the_intermediate_and_requests_go_to_the_intermediate():
    for sent in ([INTERMEDIATE], [INTERMEDIATE, ROOT], [ROOT, INTERMEDIATE]):
        chain = CaCertificates(sent, [ROOT])
        assert chain.ca == sent
        assert chain.issuing == [INTERMEDIATE]
        assert chain.encryption_certificates() == [INTERMEDIATE]
        assert chain.issuer() == INTERMEDIATE
        described = dict((cert['subject'], (cert['role'], cert['matches_pin'], cert['issuing'])) for cert in chain.describe())
        assert described['CN=Intermediate'] == ('ca', False, True)
        if ROOT in sent:
            assert described['CN=Root'] == ('ca', True, False)
    above = CaCertificates([INTERMEDIATE, ROOT], [INTERMEDIATE])  # pinning the intermediate trusts no root above it
    assert above.ca == [INTERMEDIATE] and above.role_of(ROOT) == ((), 'not issued by the pinned CA')


@pytest.mark.parametrize('intermediate, pinned', [
    (_certificate('Intermediate', INTERMEDIATE_KEY, ROOT.subject, ROOT_KEY, ca=False), ROOT),  # CA:FALSE
    (_certificate('Intermediate', INTERMEDIATE_KEY, ROOT.subject, ROOT_KEY, start=-30, end=-1), ROOT),  # expired
    (_certificate('Intermediate', INTERMEDIATE_KEY, ROOT.subject, ROOT_KEY, start=1), ROOT),  # not yet valid
    (_certificate('Intermediate', INTERMEDIATE_KEY, ROOT.subject, OTHER_KEY), ROOT),  # signed by a root of the same name
    (INTERMEDIATE, OTHER_ROOT),  # an unrelated root pinned
])
def test_only_a_valid_ca_signed_under_the_pin_joins_the_chain(intermediate, pinned):
    assert CaCertificates([INTERMEDIATE], [ROOT]).ca == [INTERMEDIATE]
    with pytest.raises(ScepError, match="^the SCEP server's CA certificate \\(CN=Intermediate\\) does not match the pinned CA"):
        CaCertificates([intermediate], [pinned])


def test_an_ra_must_be_issued_by_the_issuing_ca_not_by_the_root_above_it():
    by_intermediate = _certificate('RA', OTHER_KEY, INTERMEDIATE.subject, INTERMEDIATE_KEY, ca=False, usage=RA_USAGE)
    by_root = _certificate('Root RA', OTHER_KEY, ROOT.subject, ROOT_KEY, ca=False, usage=RA_USAGE)
    chain = CaCertificates([INTERMEDIATE, by_root, by_intermediate], [ROOT])
    assert chain.role_of(by_intermediate) == (('encryption', 'signing'), None)
    assert chain.role_of(by_root) == ((), 'not issued by the issuing CA (CN=Intermediate)')
    assert chain.encryption_certificates() == [by_intermediate]
    assert chain.signing_certificates() == [INTERMEDIATE, by_intermediate]
