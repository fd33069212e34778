# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Backend of tokenfleet.pki.scep_enroll. Private to the collection.

lock the state file -> complete a swap a killed run left (journal) -> clean leftovers -> find current state
(certificate, key, state file) -> decide (enroll, renew, poll, nothing) -> act (unless check mode) -> report.
Nothing on the host changes unless the CA answered SUCCESS or PENDING. On SUCCESS the new certificate (and the
new key, complete) is journaled in the state file before the swap starts, so that a run killed during the swap
is completed by the next one without asking the CA again (see docs/failure-and-recovery.md).
"""

from __future__ import annotations

import datetime
import os
import random
import time

from ansible_collections.tokenfleet.pki.plugins.module_utils.common import PkiError
from ansible_collections.tokenfleet.pki.plugins.module_utils.files import (
    apply_file_attributes,
    check_destination,
    ensure_content,
    read_file,
    remove_leftovers,
)
from ansible_collections.tokenfleet.pki.plugins.module_utils.keys import (
    FileKeys,
    certificate_object_matches,
    discard_token_key,
    ensure_certificate_object,
    key_hex,
    make_token_key,
    staged_token_key,
    swap_token_key,
    token_key_hex,
)
from ansible_collections.tokenfleet.pki.plugins.module_utils.pkcs12_bundle import Pkcs12Bundle
from ansible_collections.tokenfleet.pki.plugins.module_utils.renewal_window import RenewBefore, RenewBeforeError
from ansible_collections.tokenfleet.pki.plugins.module_utils.scep.client import (
    ScepClient,
    load_pinned_certificates,
    normalise_fingerprint,
    normalise_ra_fingerprints,
)
from ansible_collections.tokenfleet.pki.plugins.module_utils.scep.message import (
    STATUS_FAILURE,
    STATUS_PENDING,
    ScepError,
    issuer_and_subject,
    signer_certificate,
    throwaway_signer,
    transaction_id_for,
)
from ansible_collections.tokenfleet.pki.plugins.module_utils.scep.state import ScepState, StateLock, utc_now_text
from ansible_collections.tokenfleet.pki.plugins.module_utils.scep.transport import ScepHttpError, ScepTransport
from ansible_collections.tokenfleet.pki.plugins.module_utils.signer import KeySource, token_private_key
from ansible_collections.tokenfleet.pki.plugins.module_utils.token_objects import key_size_and_curve, matching_public_object
from ansible_collections.tokenfleet.pki.plugins.module_utils.x509 import (
    HAS_CRYPTOGRAPHY,
    RequestSpec,
    certificate_facts,
    certificate_file_facts,
    certificate_pem,
    load_certificate,
    load_request,
    pem_certificates_facts,
    public_key_der,
    public_key_fingerprint,
)

if HAS_CRYPTOGRAPHY:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

try:
    from pkcs11 import KeyType, ObjectClass
except ImportError:  # token keys report the missing library through require_pkcs11
    pass

_STATUS = {'enroll': 'issued', 'renew': 'renewed', 'poll': 'pending'}


def _now():
    return datetime.datetime.now(datetime.timezone.utc)


def _days_left(certificate):
    return (certificate.not_valid_after_utc - _now()).total_seconds() / 86400.0


def _left_text(certificate):
    """Days left (as before), or hours for a certificate that has less than a day."""
    days = _days_left(certificate)
    return '%.1f days' % days if days >= 1 else '%.1f h' % (days * 24)


def _facts(certificate):
    facts = certificate_facts(certificate)
    facts['days_left'] = int(_days_left(certificate))
    return facts


class ScepEnrollBackend(object):
    def __init__(self, module):
        self.module = module
        params = module.params
        self.check_mode = module.check_mode
        try:
            self.renew_before = RenewBefore(params['renew_before'])
        except RenewBeforeError as exc:
            raise ScepError(str(exc))
        for option in ('timeout', 'poll_attempts', 'poll_interval', 'splay', 'history_size'):
            if params[option] < (1 if option in ('timeout', 'history_size') else 0):
                raise ScepError('%s must be %s (got %d)' % (option, 'positive' if option in ('timeout', 'history_size')
                                                            else 'zero or more', params[option]))
        self.certificate_path = params['certificate_path']
        check_destination(self.certificate_path, 'certificate_path', module)
        if params['chain_path']:
            check_destination(params['chain_path'], 'chain_path', module)
        if params['ca_fingerprint'] is None and params['ca_certificate_path'] is None:
            raise ScepError('give ca_fingerprint (the SHA-256 fingerprint scep_ca_info shows) or ca_certificate_path: '
                            'replies are only accepted from a pinned CA')
        self.fingerprint = normalise_fingerprint(params['ca_fingerprint']) if params['ca_fingerprint'] else None
        self.ra_fingerprints = normalise_ra_fingerprints(params['ra_fingerprint'])
        self.pinned = load_pinned_certificates(params['ca_certificate_path']) if params['ca_certificate_path'] else []
        self.transport = ScepTransport(params['url'], params['timeout'], params['validate_certs'], params['ca_path'])
        self.state_path = params['state_path'] or self.certificate_path + '.scep.json'
        check_destination(self.state_path, 'state_path', module)
        self.state = None  # read under the lock
        self.spec = RequestSpec(params) if params['csr_path'] is None else None
        writes_token = not module.check_mode and (params['store_on_token'] or params['rekey'])
        self.key_source = KeySource(module, require=False, rw=writes_token)
        self.files = None
        self.backups = {} if params['backup'] else None
        self.predicted = None  # check mode: what the diff's after differs in from before
        if self.key_source.on_token and params['private_key_path'] is None:
            self.key_path = None
        elif params['private_key_path'] is None:
            raise ScepError('no key given: set private_key_path (generated when missing) or key_label/key_id for a '
                            'key on a token')
        else:
            self.key_path = params['private_key_path']
            check_destination(self.key_path, 'private_key_path', module)
            self.files = FileKeys(module, self.key_path, self.certificate_path, params['private_key_passphrase'],
                                  self.backups)
        if params['store_on_token'] and self.key_path is not None:
            raise ScepError('store_on_token needs a key on a token (key_label/key_id)')
        if params['curve'] is not None and params['key_type'] != 'ec':
            raise ScepError('curve is the curve of a generated EC key: it needs key_type ec (got key_type %s)'
                            % params['key_type'])
        self.bundle = None
        if params['pkcs12_path'] is not None:
            if self.key_path is None:
                raise ScepError('pkcs12_path needs the key in a file (private_key_path): a key on a token cannot be '
                                'exported into a PKCS#12 bundle')
            self.bundle = Pkcs12Bundle(module, self.backups)
        self.replayed = None
        self.written = []

    # ---- local state ----------------------------------------------------------------------

    def _current_certificate(self):
        if not os.path.exists(self.certificate_path):
            return None
        return load_certificate(read_file(self.certificate_path, 'certificate_path'),
                                'certificate_path %s' % self.certificate_path)

    def _file_key(self):
        """(private key, generated now?) for private_key_path; a new key lives in memory until it is needed."""
        key = self.files.load(self.key_path)
        if key is not None:
            return key, False
        return self._new_file_key(), True

    def _new_file_key(self):
        params = self.module.params
        return FileKeys.make(params['key_type'], params['key_size'], params['curve'] or 'secp256r1')

    def _pending_rekey(self):
        return bool(self.state.pending and self.state.pending.get('rekey'))

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
        window = self.renew_before.describe(certificate.not_valid_before_utc, certificate.not_valid_after_utc)
        if self.renew_before.due(certificate.not_valid_before_utc, certificate.not_valid_after_utc, _now()):
            return 'renew', '%s left, %s' % (_left_text(certificate), window)
        return 'unchanged', '%s left, %s' % (_left_text(certificate), window)

    # ---- the run --------------------------------------------------------------------------

    def run(self):
        if self.check_mode:  # reads only: no lock, no replay
            return self._run_reported()
        with StateLock(self.state_path, self.module.params['timeout']):
            return self._run_reported()

    def _run_reported(self):
        """The run, with what the task asked to see: backups made, file contents, the diff."""
        params = self.module.params
        self.state = ScepState(self.state_path, params['history_size'])
        before = self._host_facts() if self.module._diff else None
        if self.state.upgraded and not self.check_mode:
            self.state.save(self.module)  # at once: the old format kept the request, challenge included
        result = self._run()
        if self.bundle is not None:
            self._ensure_bundle(result)
        for name, path in (('backup_file', self.certificate_path), ('private_key_backup_file', self.key_path),
                           ('chain_backup_file', params['chain_path']), ('pkcs12_backup_file', params['pkcs12_path'])):
            if self.backups and path and os.path.abspath(path) in self.backups:
                result[name] = self.backups[os.path.abspath(path)]
        if params['return_content']:
            result['certificate_content'] = self._content(self.certificate_path)
            if params['chain_path']:
                result['chain_content'] = self._content(params['chain_path'])
        if before is not None:
            after = self._host_facts() if not self.check_mode else dict(before, **(self.predicted or {}))
            result['diff'] = dict(before=before, after=after)
        return result

    def _ensure_bundle(self, result):
        """The PKCS#12 bundle of the key, certificate and chain the run ends with; nothing while there is no
        certificate for the key yet (a first request pending). In check mode a certificate to be issued means a new
        bundle; otherwise the bundle is compared with the current files."""
        result['pkcs12_path'] = self.bundle.path
        if self.check_mode and result['status'] in ('issued', 'renewed'):
            return
        certificate = self._current_certificate()
        key = self.files.load(self.key_path)
        if certificate is None or key is None or public_key_der(certificate.public_key()) != public_key_der(
                key.public_key()):
            return
        chain_path = self.module.params['chain_path']
        chain = []
        if chain_path and os.path.exists(chain_path):
            chain = x509.load_pem_x509_certificates(read_file(chain_path, 'chain_path'))
        changed, why = self.bundle.ensure(key, certificate, chain)
        if changed and not result['changed']:
            result['changed'] = True
            result['reason'] += '; pkcs12_path %s %s, so it is written again' % (
                self.bundle.path, why or 'does not have the wanted file attributes')

    @staticmethod
    def _content(path):
        return read_file(path, 'the file').decode('ascii', 'replace') if os.path.exists(path) else None

    def _host_facts(self):
        """What the diff shows: the certificate (and chain) files' certificates and a pending transaction; no secret."""
        certificates = certificate_file_facts(self.certificate_path)
        facts = dict(certificate=certificates[0] if isinstance(certificates, list) and len(certificates) == 1
                     else certificates,
                     pending_transaction_id=self.state.pending['transaction_id'] if self.state.pending else None)
        if self.module.params['chain_path']:
            facts['chain'] = certificate_file_facts(self.module.params['chain_path'])
        return facts

    def _predict_certificate(self, key, action, generated):
        """Check mode: the certificate the CA would issue, as far as it is known without asking it (the key's
        fingerprint only for a key that exists: a key to be generated, or a rekey's new key, is not made yet)."""
        params = self.module.params
        if params['csr_path'] is not None:
            subject = load_request(read_file(params['csr_path'], 'csr_path'), 'csr_path %s' % params['csr_path']).subject
        else:
            subject = self.spec.subject
        new_key = generated or (action == 'renew' and params['rekey'])
        certificate = dict(subject=subject.rfc4514_string(), issuer=None, serial_number=None, not_before=None,
                           not_after=None, fingerprint_sha256=None,
                           public_key_fingerprint=None if new_key else public_key_fingerprint(key.public_key()))
        self.predicted = dict(certificate=certificate, pending_transaction_id=None)

    def _run(self):
        if self.state.swap is not None and self.check_mode:
            swap = self.state.swap
            self.predicted = dict(certificate=pem_certificates_facts(swap['certificate'].encode('ascii'))[0],
                                  pending_transaction_id=None)
            if self.module.params['chain_path'] and swap.get('chain') is not None:
                self.predicted['chain'] = pem_certificates_facts(''.join(swap['chain']).encode('ascii'))
            return self._swap_result(swap, changed=True)
        if self.files is not None:
            if not self.check_mode:  # before a journaled swap is completed too, which needs the .new key
                self.files.clean(keep_new=self._pending_rekey() or self.state.swap is not None,
                                 extra_paths=self._other_paths())
            return self._replay_file() or self._run_file()
        if self.state.swap is not None or self._pending_rekey():
            self.key_source.rw = True
        self.key_source.before_lookup = self._prepare_token
        with self.key_source as key:
            if self.replayed is not None:
                return self.replayed
            return self._run_with_key(self._current_certificate(), key, False)

    def _replay_file(self):
        """Complete (or roll back) a swap of key files a killed run journaled; its result when completed."""
        swap = self.state.swap
        if swap is None:
            return None
        done = swap['kind'] == 'file' and self.files.swap(swap['new_key'], swap['certificate'].encode('ascii'),
                                                          swap.get('keep_old', False))
        if not done:
            self._discard_new_key(True)  # another key than the journal's, or none: rolled back
        return self._close_swap(done)

    def _run_file(self):
        certificate = self._current_certificate()
        key, generated = self._file_key()
        return self._run_with_key(certificate, key, generated)

    def _other_paths(self):
        """The files besides key and certificate that a run may write, whose temp files a killed run may leave."""
        paths = [self.state_path]
        for option in ('chain_path', 'pkcs12_path'):
            if self.module.params[option]:
                paths.append(self.module.params[option])
        return paths

    def _prepare_token(self, session):
        """Before the key is looked up: complete (or roll back) a journaled swap, remove a stale ``.new`` key."""
        if self.check_mode:
            return
        for path in [self.certificate_path, self.certificate_path + '.old'] + self._other_paths():
            remove_leftovers(path)
        swap = self.state.swap
        if swap is not None:
            done = swap['kind'] == 'token' and self._swap_token(session, swap)
            if not done and swap['kind'] == 'token':
                discard_token_key(session, swap['label'])
            self.replayed = self._close_swap(done)
            if self.replayed is not None:
                return
        label = self.module.params['key_label']
        if label is not None and not self._pending_rekey():
            discard_token_key(session, label)

    # ---- the swap (journaled) -------------------------------------------------------------

    def _swap_token(self, session, swap):
        """The token half of a swap, from wherever a killed run stopped; False when the new key is not there."""
        label = swap['label']
        staged = staged_token_key(session, label)
        if staged is not None and token_key_hex(session, staged) != swap['new_key']:
            return False
        if swap.get('old_id') is not None:
            swap_token_key(session, label, swap.get('keep_old', False), bytes.fromhex(swap['old_id']))
        current = session.find_one(ObjectClass.PRIVATE_KEY, label=label)
        if current is None or token_key_hex(session, current) != swap['new_key']:
            return False
        ensure_content(self.module, self.certificate_path, swap['certificate'].encode('ascii'), 0o644, self.backups)
        if self.module.params['store_on_token']:
            ensure_certificate_object(session, current, x509.load_pem_x509_certificate(swap['certificate'].encode('ascii')))
        return True

    def _close_swap(self, done):
        """End a journaled swap: the chain and the history when it is complete; forget it either way.

        Returns the run's result when the swap was completed (the CA is not asked again in this run), else None.
        """
        swap = self.state.swap
        self.state.swap = None
        if not done:
            self.state.save(self.module)
            return None
        if self.module.params['chain_path'] and swap.get('chain') is not None:
            ensure_content(self.module, self.module.params['chain_path'], ''.join(swap['chain']).encode('ascii'), 0o644,
                           self.backups)
        certificate = x509.load_pem_x509_certificate(swap['certificate'].encode('ascii'))
        self.state.add_issued(certificate_facts(certificate))
        self.state.save(self.module)
        return self._swap_result(swap, changed=True)

    def _swap_result(self, swap, changed):
        certificate = x509.load_pem_x509_certificate(swap['certificate'].encode('ascii'))
        verb = 'completes' if self.check_mode else 'completed'
        return dict(changed=changed, status=_STATUS.get(swap['action'], 'renewed'), action=swap['action'],
                    reason='%s the key and certificate swap of an interrupted run (the CA had already issued the '
                           'certificate, so it is not asked again)' % verb,
                    transaction_id=swap.get('transaction_id'), ca_caps=None, certificate=_facts(certificate),
                    history=self.state.history)

    def _commit(self, certificate, chain, key, generated, new_key, action, transaction_id):
        """Journal the new certificate (and key, already complete), then swap; the journal goes when all is in place."""
        params = self.module.params
        request_key = new_key if new_key is not None else key
        swap = dict(kind='file' if self.files is not None else 'token', action=action, transaction_id=transaction_id,
                    certificate=certificate_pem(certificate), chain=[certificate_pem(cert) for cert in chain],
                    new_key=key_hex(request_key.public_key()), keep_old=not params['remove_old'],
                    started_at=utc_now_text())
        if self.files is not None:
            if new_key is not None and self.files.new_key(swap['new_key']) is None:
                self.files.write(self.files.new_path, new_key)
            elif new_key is None and generated:
                self.files.write_generated(key)
        else:
            key_object = self.key_source.key_object
            swap['label'] = key_object.label
            if new_key is not None:
                swap['old_id'] = (key_object.id or b'').hex()
        self.state.pending = None
        self.state.swap = swap
        self.state.save(self.module)
        if self.files is not None:
            done = self.files.swap(swap['new_key'], swap['certificate'].encode('ascii'), swap['keep_old'])
        else:
            done = self._swap_token(self.key_source.session, swap)
            self.key_source.key_object = self.key_source.session.find_one(ObjectClass.PRIVATE_KEY, label=swap['label'])
        if not done:
            raise ScepError('the new key vanished while its certificate was being stored; the certificate is kept in '
                            'state_path %s' % self.state_path)
        self._close_swap(True)
        return dict(status=_STATUS[action], transaction_id=transaction_id, certificate=_facts(certificate))

    def _run_with_key(self, certificate, key, generated):
        params = self.module.params
        if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
            raise ScepError('the key is neither an RSA nor an EC key: scep_enroll enrolls RSA and EC keys only')
        action, reason = self._decide(certificate, key.public_key())
        result = dict(status='unchanged', reason=reason, action=action, transaction_id=None, ca_caps=None,
                      certificate=_facts(certificate) if certificate is not None else None,
                      history=self.state.history)
        if action == 'unchanged':
            # Nothing to ask the CA, but the task's mode/owner/group still apply to the certificate file,
            # and a certificate object missing next to its token key is written again.
            changed = apply_file_attributes(self.module, self.certificate_path, False, 0o644)
            if params['store_on_token'] and not certificate_object_matches(self.key_source.session,
                                                                           self.key_source.key_object, certificate):
                changed = True
                result['reason'] += '; the certificate object on the token was missing or stale and is written again'
                if not self.check_mode:
                    ensure_certificate_object(self.key_source.session, self.key_source.key_object, certificate)
            return dict(result, changed=changed)
        result['changed'] = True
        result['status'] = _STATUS[action]
        if self.check_mode:
            if action != 'poll':
                self._predict_certificate(key, action, generated)
            return result
        if params['splay']:
            time.sleep(random.uniform(0, params['splay']))
        client = ScepClient(self.transport, params['ca_identifier'], self.pinned, self.fingerprint,
                            params['signature_algorithm'], params['encryption_algorithm'],
                            params['allow_legacy_algorithms'], self.ra_fingerprints)
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
        """The request for ``key``, built (and signed) anew on every send: it is never stored, for it holds the
        challenge password."""
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
            if self.state.pending is None and self.state.swap is None:  # else the next run still needs the new key
                self._discard_new_key(new_key)
            raise

    @staticmethod
    def _signer(key, subject, certificate=None):
        """(key, certificate) that sign the pkiMessage; the reply is encrypted to that certificate, so the key decrypts it.

        An RSA key signs its own requests: with ``certificate`` (the current one, for a renewal) or self-signed. An EC
        key cannot decrypt, since SCEP's envelope is RSA key transport: a throwaway RSA key and self-signed certificate
        sign instead, in memory only, for renewals too (step-ca encrypts its reply to every certificate in the request
        and can do so only with RSA). The request itself (the CSR) always carries and is signed by ``key``.
        """
        if not isinstance(key, rsa.RSAPrivateKey):
            return throwaway_signer(subject)
        if certificate is not None:
            return key, certificate
        return key, signer_certificate(key, subject)

    def _send_request(self, client, action, certificate, key, generated, rekey, new_key):
        params = self.module.params
        request_key = new_key if rekey else key
        csr = self._request_for(request_key)
        # a renewal is authenticated by the current certificate (RSA keys only)
        signer_key, signer_cert = self._signer(key, csr.subject, certificate if action == 'renew' else None)
        message_type = 'RenewalReq' if action == 'renew' and params['renewal_message'] == 'renewalreq' else 'PKCSReq'
        transaction_id = transaction_id_for(request_key.public_key())
        der = csr.public_bytes(serialization.Encoding.DER)
        rep = client.exchange(message_type, der, signer_key, signer_cert, transaction_id)
        # What a later run needs to poll or resend, and nothing secret: no request (its challenge), no hash of it.
        # A throwaway signer's certificate is not kept either: its key is gone with this run.
        pending = dict(transaction_id=transaction_id, message_type=message_type, rekey=rekey, action=action,
                       signer_certificate=certificate_pem(signer_cert) if signer_key is key else None,
                       subject=csr.subject.public_bytes().hex(), public_key=key_hex(request_key.public_key()),
                       started_at=utc_now_text())
        if rep.status == STATUS_PENDING:
            # Kept before polling: a poll that fails or runs out of time leaves the request to the next run.
            self._save_pending(pending, key, generated, new_key)
        rep = self._wait(client, rep, signer_key, signer_cert, transaction_id, csr, message_type)
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
        except ScepHttpError:
            pass
        # Servers without CertPoll (micromdm) answer the same request again (RFC 8894 section 3.3.3).
        return client.exchange(message_type, csr.public_bytes(serialization.Encoding.DER), signer_key, signer_cert,
                               transaction_id)

    def _forget_pending(self, why):
        self.state.pending = None
        self.state.save(self.module)
        raise ScepError(why + '; the pending request was forgotten, the next run sends a new one')

    def _poll(self, client, key):
        pending = self.state.pending
        new_key = None
        request_key = key
        if pending.get('rekey'):
            new_key = self._pending_new_key(pending['public_key'])
            if new_key is None:
                self._discard_new_key(True)
                self._forget_pending('the new key of the pending rekey request is gone or is another key')
            request_key = new_key
        elif key_hex(key.public_key()) != pending['public_key']:
            self._forget_pending('the key is not the one the pending request was made for')
        csr = self._request_for(request_key)
        if csr.subject.public_bytes().hex() != pending['subject']:
            raise ScepError('the request\'s subject changed while a request is pending (transaction %s); set the '
                            'subject options back, or move state_path %s away to send a new request'
                            % (pending['transaction_id'], self.state_path))
        stored = pending['signer_certificate']  # None: a throwaway signer, whose key went with the run that made it
        signer_key, signer_cert = self._signer(key, csr.subject,
                                               x509.load_pem_x509_certificate(stored.encode('ascii')) if stored else None)
        rep = self._poll_once(client, signer_key, signer_cert, pending['transaction_id'], csr, pending['message_type'])
        rep = self._wait(client, rep, signer_key, signer_cert, pending['transaction_id'], csr, pending['message_type'])
        return self._finish(client, rep, signer_key, request_key, key, False, new_key, pending, pending['transaction_id'])

    def _finish(self, client, rep, decrypt_key, request_key, key, generated, new_key, pending, transaction_id):
        if rep.status == STATUS_FAILURE:
            if self.state.pending is None:
                raise ScepError(rep.failure_message())
            # The CA rejected a pending request: forget it, so that the next run starts a new one.
            self._discard_new_key(new_key)
            self._forget_pending(rep.failure_message())
        if rep.status == STATUS_PENDING:
            self._save_pending(pending, key, generated, new_key)
            return dict(status='pending', transaction_id=transaction_id)
        certificate, chain = client.issued_certificate(rep, decrypt_key, request_key.public_key())
        return self._commit(certificate, chain, key, generated, new_key, pending['action'], transaction_id)

    # ---- new keys -------------------------------------------------------------------------

    def _new_key(self, key):
        """A new key of the current key's type, size or curve, for rekey (in memory for a file, ``<label>.new`` on a
        token)."""
        if self.files is not None:
            if isinstance(key, ec.EllipticCurvePrivateKey):
                return FileKeys.make('ec', curve=key.curve.name)
            return FileKeys.make('rsa', key.key_size)
        session = self.key_source.session
        key_object = self.key_source.key_object
        size, curve = key_size_and_curve(key_object)
        if key_object.key_type == KeyType.EC:
            public, private = make_token_key(session, key_object.label, 'ec', None, curve, None, ['sign'], False)
        else:
            public, private = make_token_key(session, key_object.label, 'rsa', size, None, None, ['sign', 'decrypt'], False)
        return token_private_key(self.key_source.token, session, private, public)

    def _discard_new_key(self, new_key):
        """Remove a rekey's new key after a failure: from the token, or the file kept for a pending request."""
        if new_key is None:
            return
        if self.files is not None:
            self.files.clean(keep_new=False)
            return
        discard_token_key(self.key_source.session, self.key_source.key_object.label)

    def _pending_new_key(self, wanted_hex):
        """The pending rekey request's new key, only if it is the key the request was made for."""
        if self.files is not None:
            return self.files.new_key(wanted_hex)
        session = self.key_source.session
        private = staged_token_key(session, self.key_source.key_object.label)
        if private is None or token_key_hex(session, private) != wanted_hex:
            return None
        return token_private_key(self.key_source.token, session, private, matching_public_object(session, private))

    def _save_pending(self, pending, key, generated, new_key):
        """Keep a PENDING request for the next run: its keys on disk first, then the state file."""
        if self.files is not None:
            if generated and self.files.load(self.key_path) is None:
                self.files.write_generated(key)
            if new_key is not None and self.files.new_key(key_hex(new_key.public_key())) is None:
                self.files.write(self.files.new_path, new_key)
        if self.state.pending != pending:
            self.state.pending = pending
            self.state.save(self.module)
