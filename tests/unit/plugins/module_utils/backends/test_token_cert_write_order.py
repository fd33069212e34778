# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""token_cert's write order: nothing is lost when writing fails.

SoftHSM cannot be made to fail a write on demand, so the PKCS#11 calls are replaced by
stand-ins here; the successful paths run against SoftHSM in tests/integration.
"""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pkcs11 import Attribute, ObjectClass

from ansible_collections.tokenfleet.pki.plugins.module_utils import token_objects
from ansible_collections.tokenfleet.pki.plugins.module_utils.backends import token_cert
from ansible_collections.tokenfleet.pki.plugins.module_utils.token import TokenError


def _certificate():
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, 'unit')])
    now = datetime.datetime.now(datetime.timezone.utc)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))


class FakeObject(object):
    def __init__(self, name, value=b''):
        self.name = name
        self.handle = id(self)
        self.attributes = {Attribute.VALUE: value, Attribute.LABEL: name}

    def __getitem__(self, attribute):
        return self.attributes[attribute]


class FakeToken(object):
    label = 'ws-001'


@pytest.fixture
def backend(monkeypatch):
    """A TokenCertBackend with its token calls recorded in ``backend.calls``."""
    instance = token_cert.TokenCertBackend.__new__(token_cert.TokenCertBackend)
    instance.certificate = _certificate()
    instance.private_key = ec.generate_private_key(ec.SECP256R1())
    instance.session = object()
    instance.token = FakeToken()
    instance.calls = []
    instance.der = instance.certificate.public_bytes(serialization.Encoding.DER)

    def fake_import(session, private_key, label, object_id, usage, public=True, private=True):
        instance.calls.append(('import', label, public, private))
        return [FakeObject(name) for name, wanted in (('new public', public), ('new private', private)) if wanted]

    def fake_destroy(objects):
        instance.calls.append(('destroy', [obj.name for obj in objects]))

    monkeypatch.setattr(token_cert, 'import_private_key', fake_import)
    monkeypatch.setattr(token_cert, 'destroy', fake_destroy)
    return instance


def test_old_certificate_is_deleted_only_after_the_new_one_reads_back(backend, monkeypatch):
    monkeypatch.setattr(token_cert, 'create_certificate',
                        lambda session, cert, label, object_id: FakeObject('new cert', backend.der))
    backend._write('vpn', b'\x01', backend.der, (False, False), True, [FakeObject('old cert')])
    assert backend.calls == [('destroy', ['old cert'])]


def test_failed_certificate_write_removes_the_imported_key_and_keeps_the_old_certificate(backend, monkeypatch):
    def failing_create(session, cert, label, object_id):
        raise TokenError("writing certificate 'vpn' to the token failed: the token is out of memory (DeviceMemory)")

    monkeypatch.setattr(token_cert, 'create_certificate', failing_create)
    with pytest.raises(TokenError) as caught:
        backend._write('vpn', b'\x01', backend.der, (True, True), True, [FakeObject('old cert')])
    assert str(caught.value) == ("writing certificate 'vpn' to the token failed: the token is out of memory (DeviceMemory)"
                                 '; the objects written so far were removed again, the token is as it was')
    assert backend.calls == [('import', 'vpn', True, True), ('destroy', ['new private', 'new public'])]


def test_certificate_that_does_not_read_back_is_removed_and_the_old_one_kept(backend, monkeypatch):
    monkeypatch.setattr(token_cert, 'create_certificate',
                        lambda session, cert, label, object_id: FakeObject('new cert', b'something else'))
    with pytest.raises(TokenError) as caught:
        backend._write('vpn', b'\x01', backend.der, (False, False), True, [FakeObject('old cert')])
    assert 'does not read back unchanged' in str(caught.value)
    assert backend.calls == [('destroy', ['new cert'])]


def test_import_writes_the_public_half_before_the_private_half():
    """A kill between the two leaves the public key, which carries the key and is recognised by the next run."""
    class RecordingSession(object):
        def __init__(self):
            self.classes = []
            self.session = self

        def create_object(self, template):
            self.classes.append(template[Attribute.CLASS])
            return FakeObject(str(template[Attribute.CLASS]))

    session = RecordingSession()
    token_objects.import_private_key(session, ec.generate_private_key(ec.SECP256R1()), 'vpn', b'\x01', ['sign'])
    assert session.classes == [ObjectClass.PUBLIC_KEY, ObjectClass.PRIVATE_KEY]
    session.classes = []
    token_objects.import_private_key(session, ec.generate_private_key(ec.SECP256R1()), 'vpn', b'\x01', ['sign'], public=False)
    assert session.classes == [ObjectClass.PRIVATE_KEY]
