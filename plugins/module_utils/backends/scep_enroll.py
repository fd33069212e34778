# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Backend of tokenfleet.pki.scep_enroll. Private to the collection.

find current state (certificate, key, state file) -> decide (enroll, renew, poll, nothing)
-> act (unless check mode) -> report. Nothing on the host changes unless the CA answered
SUCCESS or PENDING; a new key or certificate is written only once it is complete.
"""

from __future__ import annotations

import datetime
import os
import random
import time

from ansible_collections.tokenfleet.pki.plugins.module_utils.common import PkiError
from ansible_collections.tokenfleet.pki.plugins.module_utils.files import (
    apply_file_attributes,
    check_parent_directory,
    private_file_args,
    read_file,
    write_file,
)
from ansible_collections.tokenfleet.pki.plugins.module_utils.scep.client import (
    ScepClient,
    load_pinned_certificates,
    normalise_fingerprint,
)
from ansible_collections.tokenfleet.pki.plugins.module_utils.scep.message import (
    STATUS_FAILURE,
    STATUS_PENDING,
    ScepError,
    issuer_and_subject,
    signer_certificate,
    transaction_id_for,
)
from ansible_collections.tokenfleet.pki.plugins.module_utils.scep.state import ScepState, utc_now_text
from ansible_collections.tokenfleet.pki.plugins.module_utils.scep.transport import ScepTransport
from ansible_collections.tokenfleet.pki.plugins.module_utils.signer import KeySource, load_private_key_file, token_private_key
from ansible_collections.tokenfleet.pki.plugins.module_utils.token_objects import (
    create_certificate,
    destroy,
    generate_key_pair,
    matching_public_object,
)
from ansible_collections.tokenfleet.pki.plugins.module_utils.x509 import (
    HAS_CRYPTOGRAPHY,
    RequestSpec,
    certificate_facts,
    certificate_pem,
    load_certificate,
    load_request,
    public_key_der,
)

if HAS_CRYPTOGRAPHY:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

try:
    from pkcs11 import Attribute, ObjectClass
except ImportError:  # token keys report the missing library through require_pkcs11
    pass


def _now():
    return datetime.datetime.now(datetime.timezone.utc)


def _days_left(certificate):
    return (certificate.not_valid_after_utc - _now()).total_seconds() / 86400.0


class ScepEnrollBackend(object):
    def __init__(self, module):
        self.module = module
        params = module.params
        self.check_mode = module.check_mode
        for option in ('timeout', 'renew_before', 'poll_attempts', 'poll_interval', 'splay', 'history_size'):
            if params[option] < (1 if option in ('timeout', 'history_size') else 0):
                raise ScepError('%s must be %s (got %d)' % (option, 'positive' if option in ('timeout', 'history_size')
                                                            else 'zero or more', params[option]))
        self.certificate_path = params['certificate_path']
        check_parent_directory(self.certificate_path, 'certificate_path')
        if params['chain_path']:
            check_parent_directory(params['chain_path'], 'chain_path')
        if params['ca_fingerprint'] is None and params['ca_certificate_path'] is None:
            raise ScepError('give ca_fingerprint (the SHA-256 fingerprint scep_ca_info shows) or ca_certificate_path: '
                            'replies are only accepted from a pinned CA')
        self.fingerprint = normalise_fingerprint(params['ca_fingerprint']) if params['ca_fingerprint'] else None
        self.pinned = load_pinned_certificates(params['ca_certificate_path']) if params['ca_certificate_path'] else []
        self.transport = ScepTransport(params['url'], params['timeout'], params['validate_certs'], params['ca_path'])
        self.state = ScepState(params['state_path'] or self.certificate_path + '.scep.json', params['history_size'])
        self.spec = RequestSpec(params) if params['csr_path'] is None else None
        writes_token = not module.check_mode and (params['store_on_token'] or params['rekey'])
        self.key_source = KeySource(module, require=False, rw=writes_token)
        if self.key_source.on_token and params['private_key_path'] is None:
            self.key_path = None
        elif params['private_key_path'] is None:
            raise ScepError('no key given: set private_key_path (generated when missing) or key_label/key_id for a '
                            'key on a token')
        else:
            self.key_path = params['private_key_path']
            check_parent_directory(self.key_path, 'private_key_path')
        if params['store_on_token'] and self.key_path is not None:
            raise ScepError('store_on_token needs a key on a token (key_label/key_id)')
        self.changed = False
        self.written = []

    # ---- local state ----------------------------------------------------------------------

    def _current_certificate(self):
        if not os.path.exists(self.certificate_path):
            return None
        return load_certificate(read_file(self.certificate_path, 'certificate_path'),
                                'certificate_path %s' % self.certificate_path)

    def _file_key(self):
        """(private key, generated now?) for private_key_path; a new key lives in memory until it is needed."""
        params = self.module.params
        if os.path.exists(self.key_path):
            return load_private_key_file(self.key_path, params['private_key_passphrase']), False
        return self._new_file_key(), True

    def _new_file_key(self):
        params = self.module.params
        if params['key_type'] != 'rsa':
            raise ScepError('key_type must be rsa: SCEP (RFC 8894) encrypts the reply to the requesting key with RSA')
        return rsa.generate_private_key(public_exponent=65537, key_size=params['key_size'])

    def _decide(self, certificate, public_key):
        """(action, reason) without contacting the server."""
        params = self.module.params
        if self.state.pending:
            return 'poll', 'a request is pending (transaction %s)' % self.state.pending['transaction_id']
        if certificate is None:
            return 'enroll', 'there is no certificate'
        if public_key is not None and public_key_der(certificate.public_key()) != public_key_der(public_key):
            return 'enroll', 'the certificate is for another key'
        if params['force']:
            return 'renew', 'force=true'
        if self.spec is not None and certificate.subject != self.spec.subject:
            return 'renew', 'the subject differs from the certificate\'s'
        days_left = _days_left(certificate)
        if days_left <= 0:
            return 'enroll', 'the certificate has expired, so it cannot authenticate a renewal'
        if days_left <= params['renew_before']:
            return 'renew', '%.1f days left, renew_before is %d' % (days_left, params['renew_before'])
        return 'unchanged', '%.1f days left' % days_left

    # ---- the run --------------------------------------------------------------------------

    def run(self):
        certificate = self._current_certificate()
        if self.key_path is not None:
            key, generated = self._file_key()
            return self._run_with_key(certificate, key, generated)
        with self.key_source as key:
            return self._run_with_key(certificate, key, False)

    def _run_with_key(self, certificate, key, generated):
        params = self.module.params
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ScepError('the key is not an RSA key: SCEP (RFC 8894) encrypts the server\'s reply to the requesting '
                            'key with RSA, so EC and Ed25519 keys cannot enroll')
        action, reason = self._decide(certificate, key.public_key())
        result = dict(status='unchanged', reason=reason, action=action, transaction_id=None, ca_caps=None,
                      certificate=certificate_facts(certificate) if certificate is not None else None,
                      history=self.state.history)
        if certificate is not None:
            result['certificate']['days_left'] = int(_days_left(certificate))
        if action == 'unchanged':
            # Nothing to ask the CA, but the task's mode/owner/group still apply to the certificate file.
            return dict(result, changed=apply_file_attributes(self.module, self.certificate_path, False, 0o644))
        result['changed'] = True
        result['status'] = {'enroll': 'issued', 'renew': 'renewed', 'poll': 'pending'}[action]
        if self.check_mode:
            return result
        if params['splay']:
            time.sleep(random.uniform(0, params['splay']))
        client = ScepClient(self.transport, params['ca_identifier'], self.pinned, self.fingerprint,
                            params['signature_algorithm'], params['encryption_algorithm'],
                            params['allow_legacy_algorithms'], params['ra_fingerprint'])
        client.discover()
        result['ca_caps'] = client.caps
        if action == 'poll':
            outcome = self._poll(client, key)
        else:
            outcome = self._request(client, action, certificate, key, generated)
        result.update(outcome)
        result['history'] = self.state.history
        return result

    def _request_for(self, key):
        params = self.module.params
        if params['csr_path'] is not None:
            csr = load_request(read_file(params['csr_path'], 'csr_path'), 'csr_path %s' % params['csr_path'])
            if public_key_der(csr.public_key()) != public_key_der(key.public_key()):
                raise ScepError('csr_path %s is a request for another key than the one given' % params['csr_path'])
            return csr
        return self.spec.build(key)

    def _request(self, client, action, certificate, key, generated):
        params = self.module.params
        rekey = action == 'renew' and params['rekey']
        new_key = self._new_key(key) if rekey else None
        try:
            return self._send_request(client, action, certificate, key, generated, rekey, new_key)
        except PkiError:
            self._discard_new_key(new_key)
            raise

    def _send_request(self, client, action, certificate, key, generated, rekey, new_key):
        params = self.module.params
        request_key = new_key if rekey else key
        csr = self._request_for(request_key)
        if action == 'renew':
            signer_key, signer_cert = key, certificate  # renewal: authenticated by the current certificate
        else:
            signer_key, signer_cert = key, signer_certificate(key, csr.subject)
        message_type = 'RenewalReq' if action == 'renew' and params['renewal_message'] == 'renewalreq' else 'PKCSReq'
        transaction_id = transaction_id_for(request_key.public_key())
        der = csr.public_bytes(serialization.Encoding.DER)
        rep = client.exchange(message_type, der, signer_key, signer_cert, transaction_id)
        rep = self._wait(client, rep, signer_key, signer_cert, transaction_id, csr, message_type)
        pending = dict(transaction_id=transaction_id, message_type=message_type, request=der.hex(),
                       signer_certificate=certificate_pem(signer_cert), rekey=rekey, action=action,
                       started_at=utc_now_text())
        return self._finish(client, rep, signer_key, request_key, key, generated, new_key, pending, transaction_id)

    def _wait(self, client, rep, signer_key, signer_cert, transaction_id, csr, message_type):
        """Poll a PENDING reply ``poll_attempts`` times, ``poll_interval`` seconds apart."""
        params = self.module.params
        for dummy in range(params['poll_attempts']):
            if rep.status != STATUS_PENDING:
                break
            time.sleep(params['poll_interval'])
            rep = self._poll_once(client, signer_key, signer_cert, transaction_id, csr, message_type)
        return rep

    def _poll_once(self, client, signer_key, signer_cert, transaction_id, csr, message_type):
        data = issuer_and_subject(client.ca_certificates.issuer().subject, csr.subject)
        try:
            return client.exchange('CertPoll', data, signer_key, signer_cert, transaction_id)
        except ScepError as exc:
            if 'HTTP status' not in str(exc):
                raise
        # Servers without CertPoll (micromdm) answer the same request again (RFC 8894 section 3.3.3).
        return client.exchange(message_type, csr.public_bytes(serialization.Encoding.DER), signer_key, signer_cert,
                               transaction_id)

    def _poll(self, client, key):
        pending = self.state.pending
        csr = x509.load_der_x509_csr(bytes.fromhex(pending['request']))
        signer_cert = x509.load_pem_x509_certificate(pending['signer_certificate'].encode('ascii'))
        new_key = None
        request_key = key
        if pending.get('rekey'):
            new_key = self._pending_new_key()
            request_key = new_key
        rep = self._poll_once(client, key, signer_cert, pending['transaction_id'], csr, pending['message_type'])
        rep = self._wait(client, rep, key, signer_cert, pending['transaction_id'], csr, pending['message_type'])
        if rep.status == STATUS_FAILURE:
            # The CA rejected the pending request: forget it, so that the next run starts a new one.
            self._discard_new_key(new_key)
            self.state.pending = None
            self.state.save(self.module)
            raise ScepError(rep.failure_message() + '; the pending request was forgotten, the next run sends a new one')
        return self._finish(client, rep, key, request_key, key, False, new_key, pending, pending['transaction_id'],
                            action=pending.get('action', 'enroll'))

    def _finish(self, client, rep, decrypt_key, request_key, key, generated, new_key, pending, transaction_id,
                action=None):
        action = action or pending['action']
        if rep.status == STATUS_FAILURE:
            raise ScepError(rep.failure_message())
        if rep.status == STATUS_PENDING:
            self._store_pending_key(key, generated, new_key)
            self.state.pending = pending
            self.state.save(self.module)
            return dict(status='pending', transaction_id=transaction_id)
        certificate, chain = client.issued_certificate(rep, decrypt_key, request_key.public_key())
        self._store(certificate, chain, key, generated, new_key)
        facts = certificate_facts(certificate)
        facts['days_left'] = int(_days_left(certificate))
        self.state.pending = None
        self.state.add_issued(facts)
        self.state.save(self.module)
        return dict(status='issued' if action == 'enroll' else 'renewed', transaction_id=transaction_id,
                    certificate=facts)

    # ---- keys and writing -----------------------------------------------------------------

    def _new_key(self, key):
        """A new key beside the current one, for rekey."""
        if self.key_path is not None:
            return self._new_file_key()
        return self._new_token_key(key)

    def _new_label(self):
        return self.key_source.key_object.label + '.new'

    def _new_token_key_objects(self):
        """The rekey key pair (label <key_label>.new) on the token, from a run that did not finish."""
        session, label = self.key_source.session, self._new_label()
        return session.find(ObjectClass.PRIVATE_KEY, label=label) + session.find(ObjectClass.PUBLIC_KEY, label=label)

    def _new_token_key(self, key):
        session = self.key_source.session
        destroy(self._new_token_key_objects())
        public, private = generate_key_pair(session, 'rsa', key.key_size, None, self._new_label(), None,
                                            ['sign', 'decrypt'], False)
        return token_private_key(self.key_source.token, session, private, public)

    def _discard_new_key(self, new_key):
        """Remove a rekey's new key after a failure: from the token, or the file kept for a pending request."""
        if new_key is None:
            return
        if self.key_path is not None:
            if os.path.exists(self.key_path + '.new'):
                os.unlink(self.key_path + '.new')
            return
        destroy(self._new_token_key_objects())

    def _pending_new_key(self):
        if self.key_path is not None:
            return load_private_key_file(self.key_path + '.new', self.module.params['private_key_passphrase'])
        session = self.key_source.session
        private = session.find_one(ObjectClass.PRIVATE_KEY, label=self._new_label())
        if private is None:
            raise ScepError('the pending rekey request\'s new key %r is no longer on the token' % self._new_label())
        return token_private_key(self.key_source.token, session, private, matching_public_object(session, private))

    def _write_key(self, path, key):
        """PKCS#8 PEM, encrypted with private_key_passphrase when one is given (the next run loads it with it)."""
        passphrase = self.module.params['private_key_passphrase']
        encryption = (serialization.BestAvailableEncryption(passphrase.encode('utf-8')) if passphrase
                      else serialization.NoEncryption())
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
        write_file(self.module, path, pem, 0o600, private_file_args(self.module, path))

    def _store_pending_key(self, key, generated, new_key):
        if self.key_path is None:
            return
        if generated:
            self._write_key(self.key_path, key)
        if new_key is not None and not os.path.exists(self.key_path + '.new'):
            self._write_key(self.key_path + '.new', new_key)

    def _store(self, certificate, chain, key, generated, new_key):
        """Certificate first, then the key swap: the old key and certificate stay until the new ones are in place."""
        params = self.module.params
        old_certificate_pem = read_file(self.certificate_path, 'certificate_path') if os.path.exists(self.certificate_path) else None
        if self.key_path is not None and new_key is None and generated:
            self._write_key(self.key_path, key)
        write_file(self.module, self.certificate_path, certificate_pem(certificate).encode('ascii'), 0o644)
        if params['chain_path']:
            write_file(self.module, params['chain_path'], ''.join(certificate_pem(cert) for cert in chain).encode('ascii'), 0o644)
        if new_key is not None:
            self._swap_keys(new_key, old_certificate_pem)
        if params['store_on_token']:
            self._store_on_token(certificate, new_key)

    def _swap_keys(self, new_key, old_certificate_pem):
        params = self.module.params
        if self.key_path is not None:
            new_path = self.key_path + '.new'
            if not os.path.exists(new_path):
                self._write_key(new_path, new_key)
            if not params['remove_old']:
                write_file(self.module, self.key_path + '.old', read_file(self.key_path, 'private_key_path'), 0o600,
                           private_file_args(self.module, self.key_path + '.old'))
                if old_certificate_pem is not None:
                    write_file(self.module, self.certificate_path + '.old', old_certificate_pem, 0o644)
            os.replace(new_path, self.key_path)  # atomic: the key file is never missing
            return
        session = self.key_source.session
        old = self.key_source.key_object
        label = old.label
        old_objects = [old] + session.find(ObjectClass.PUBLIC_KEY, object_id=old.id)
        old_objects += session.find(ObjectClass.CERTIFICATE, object_id=old.id) if old.id else []
        if params['remove_old']:
            destroy(old_objects)
        else:
            for obj in old_objects:
                obj[Attribute.LABEL] = label + '.old'
        new_private = new_key._key
        for obj in [new_private] + session.find(ObjectClass.PUBLIC_KEY, label=label + '.new'):
            obj[Attribute.LABEL] = label
        self.key_source.key_object = new_private

    def _store_on_token(self, certificate, new_key):
        session = self.key_source.session
        key_object = self.key_source.key_object
        old = session.find(ObjectClass.CERTIFICATE, object_id=key_object.id) if key_object.id else []
        create_certificate(session, certificate, key_object.label, key_object.id)
        destroy([obj for obj in old if obj[Attribute.LABEL] == key_object.label])
