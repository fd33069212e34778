# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""ksef_token and ksef_token_info against the KSeF test double, which checks every request against the official
OpenAPI document; certificate authentication with a key on a SoftHSM token."""

from __future__ import annotations

import datetime
import hashlib
import os

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from fixtures_ksef import NIP, OWNER, admin_token, ksef  # noqa: F401  pylint: disable=unused-import
from harness import FOUR_RUN, assert_four_run, four_run_tasks, module_task, token_args


def connection(ksef):
    return dict(api_url=ksef.base_url, ca_path=ksef.ca_pem_path, context=dict(type='nip', value=NIP), max_wait=20)


@pytest.fixture
def seal(ksef, token, test_ca, run_playbook, tmp_path):
    """A company seal certificate (organizationIdentifier VATPL-<NIP>) for an RSA key on the SoftHSM token."""
    key = run_playbook([module_task('token_key', 'key', dict(token_args(token), label='seal'))]).result('key')['result']
    ca_key, ca_cert = test_ca
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, 'Example sp. z o.o.'),
                                            x509.NameAttribute(NameOID.ORGANIZATION_IDENTIFIER, 'VATPL-' + NIP),
                                            x509.NameAttribute(NameOID.COUNTRY_NAME, 'PL')]))
                   .issuer_name(ca_cert.subject).public_key(serialization.load_pem_public_key(key['public_key'].encode()))
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=30))
                   .sign(ca_key, hashes.SHA256()))
    ksef.trust_ca(ca_cert)
    path = tmp_path / 'seal.pem'
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return dict(token_args(token), auth_certificate_path=str(path), key_label='seal')


def test_create_four_run_with_a_certificate_on_a_token(ksef, seal, token, run_playbook, tmp_path):
    token_file = tmp_path / 'anna.token'
    args = dict(connection(ksef), description='Accounting - Anna Nowak', permissions=['InvoiceRead', 'InvoiceWrite'],
                token_path=str(token_file), **seal)
    run = run_playbook(four_run_tasks('ksef_token', args), verbosity=3)
    assert_four_run(run, FOUR_RUN)
    created = run.result('run 1')['result']
    assert created['status'] == 'Active' and created['permissions'] == ['InvoiceRead', 'InvoiceWrite']
    assert run.result('run 2')['result']['reference_number'] == created['reference_number']
    assert run.result('check 1')['result']['reference_number'] is None
    assert oct(os.stat(token_file).st_mode & 0o777) == '0o600'
    secret = token_file.read_text().strip()
    assert secret.startswith(created['reference_number'] + '|')
    assert [t['description'] for t in ksef.tokens() if t['status'] == 'Active'].count('Accounting - Anna Nowak') == 1
    sessions = ksef.sessions()
    assert len(sessions) == 4 and all(session['redeemed'] and session['closed'] for session in sessions)
    run.assert_not_leaked(secret, token['user'])


def test_revoke_four_run_with_a_ksef_token(ksef, admin_token, run_playbook):
    reference, dummy = ksef.add_token(NIP, OWNER, ['InvoiceRead'], 'Accounting - Jan Kowalski')
    args = dict(connection(ksef), auth_token=admin_token, description='Accounting - Jan Kowalski', state='absent')
    run = run_playbook(four_run_tasks('ksef_token', args), verbosity=3)
    assert_four_run(run, FOUR_RUN)
    assert run.result('run 1')['result']['actions'] == ['revoke %s' % reference]
    assert ksef.token(reference)['status'] in ('Revoking', 'Revoked')
    run.assert_not_leaked(admin_token)


def test_create_four_run_with_a_ksef_token_where_allowed(ksef, admin_token, run_playbook):
    ksef.token_sessions_can_generate = True
    args = dict(connection(ksef), auth_token=admin_token, description='Integration - ERP', permissions=['InvoiceRead'])
    run = run_playbook(four_run_tasks('ksef_token', args))
    assert_four_run(run, FOUR_RUN)


def test_info_pages_through_250_tokens(ksef, admin_token, run_playbook):
    ksef.populate_tokens(250, NIP, OWNER, ['InvoiceRead'])
    filtered = dict(connection(ksef), auth_token=admin_token, description='Token 01', status=['Active'])
    run = run_playbook([module_task('ksef_token_info', 'all', dict(connection(ksef), auth_token=admin_token)),
                        module_task('ksef_token_info', 'filtered', filtered)])
    tokens = run.result('all')['result']['tokens']
    assert len(tokens) == 251 and len(set(t['reference_number'] for t in tokens)) == 251
    # KSeF filters descriptions by case-insensitive substring: 'Token 01' is in 'Token 0100' ... 'Token 0199'.
    assert sorted(t['description'] for t in run.result('filtered')['result']['tokens']) == [
        'Token %04d' % i for i in range(100, 200)]
    assert all('token' not in t for t in tokens)
    listing = [request for request in ksef.requests() if request.get('method') == 'GET' and request.get('path', '').endswith('/tokens')]
    unfiltered = [request for request in listing if not any(name == 'description' for name, dummy in request['query'])]
    assert len(unfiltered) == 3  # 251 tokens at 100 a page


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


@pytest.mark.parametrize('case', ['not held', 'token session', 'unknown permission', 'wrong token', 'expired challenge',
                                  '429 storm', 'other permissions'])
def test_errors_name_the_cause_and_leave_the_token_file_alone(ksef, admin_token, seal, run_playbook, tmp_path, case):
    token_file = tmp_path / 'token'
    token_file.write_text('previous secret\n')
    before = digest(token_file)
    args = dict(connection(ksef), description='Accounting - Ewa', permissions=['InvoiceRead'], token_path=str(token_file),
                force=True, **seal)
    expected = {
        'not held': 'you cannot grant permissions you do not hold yourself',
        'token session': 'a session authenticated with a KSeF token may not create tokens',
        'unknown permission': 'value of permissions must be one or more of',
        'wrong token': 'KSeF refused the authentication (KSeF token)',
        'expired challenge': 'KSeF answered POST /auth/ksef-token with HTTP 400',
        '429 storm': 'HTTP 429 (rate limit)',
        'other permissions': "a token described 'Accounting - Ewa' already exists with permissions InvoiceWrite",
    }[case]
    if case == 'not held':
        args['permissions'] = ['SubunitManage']
    elif case == 'token session':
        args = dict(connection(ksef), auth_token=admin_token, description='Accounting - Ewa', permissions=['InvoiceRead'],
                    token_path=str(token_file), force=True)
    elif case == 'unknown permission':
        args['permissions'] = ['InvoiceReed']
    elif case == 'wrong token':
        args = dict(connection(ksef), auth_token=admin_token[:-4] + 'ffff', description='Accounting - Ewa',
                    permissions=['InvoiceRead'], token_path=str(token_file), force=True)
    elif case == 'expired challenge':
        ksef.challenge_ttl = 0
        args = dict(connection(ksef), auth_token=admin_token, description='Accounting - Ewa', state='absent')
    elif case == '429 storm':
        ksef.rate_limit_storm(seconds=30, retry_after=5)
        args['max_wait'] = 6
    else:
        ksef.add_token(NIP, OWNER, ['InvoiceWrite'], 'Accounting - Ewa')
        args['force'] = False
        token_file.unlink()
        before = None
    run = run_playbook([module_task('ksef_token', 'bad', args)], verbosity=3)
    record = run.result('bad')
    assert record['status'] == 'failed'
    assert expected in record['result']['msg'], record['result']['msg']
    assert digest(token_file) == before
    run.assert_not_leaked(admin_token)


def test_revoke_four_run_with_a_certificate_on_a_token(ksef, seal, run_playbook):
    reference, dummy = ksef.add_token(NIP, OWNER, ['InvoiceRead'], 'Accounting - Leaving')
    run = run_playbook(four_run_tasks('ksef_token', dict(connection(ksef), description='Accounting - Leaving',
                                                         state='absent', **seal)))
    assert_four_run(run, FOUR_RUN)
    assert ksef.token(reference)['status'] in ('Revoking', 'Revoked')


def test_revoking_others_tokens_needs_credentials_manage(ksef, run_playbook):
    reference, dummy = ksef.add_token(NIP, OWNER, ['InvoiceRead'], 'Accounting - Someone')
    author = ('Nip', '1111111111')
    dummy, reader_token = ksef.add_token(NIP, author, ['InvoiceRead'], 'Reader only')
    run = run_playbook([module_task('ksef_token', 'revoke', dict(connection(ksef), auth_token=reader_token,
                                                                 reference_number=reference, state='absent'))], verbosity=3)
    record = run.result('revoke')
    assert record['status'] == 'failed'
    assert record['result']['msg'].startswith('revoking (or seeing) tokens made by others needs the CredentialsManage '
                                              'permission in this context'), record['result']['msg']
    assert 'HTTP 403' in record['result']['msg']
    assert ksef.token(reference)['status'] == 'Active'
    run.assert_not_leaked(reader_token)


def test_force_with_duplicates_revokes_the_others_and_keeps_the_matching_token(ksef, admin_token, run_playbook):
    kept, dummy = ksef.add_token(NIP, OWNER, ['InvoiceRead'], 'Integration - ERP')
    other, dummy = ksef.add_token(NIP, OWNER, ['InvoiceWrite'], 'Integration - ERP')
    args = dict(connection(ksef), auth_token=admin_token, description='Integration - ERP', permissions=['InvoiceRead'],
                force=True)
    run = run_playbook([module_task('ksef_token', 'force', args), module_task('ksef_token', 'again', args)])
    forced, again = run.result('force')['result'], run.result('again')['result']
    assert forced['changed'] and forced['actions'] == ['revoke %s' % other], forced
    assert forced['reference_number'] == kept
    assert not again['changed'] and again['reference_number'] == kept
    live = [token for token in ksef.tokens() if token['status'] in ('Pending', 'Active')
            and token['description'] == 'Integration - ERP']
    assert [token['referenceNumber'] for token in live] == [kept]
    assert ksef.violations() == []


def test_a_ksef_token_in_the_environment_does_not_stop_certificate_authentication(ksef, admin_token, seal, run_playbook):
    """KSEF_TOKEN exported for the info tasks (an AWX credential) must not block creating tokens with the seal:
    auth_certificate_path wins, and the session is a certificate session (token sessions may not create here)."""
    args = dict(connection(ksef), description='Integration - ERP', permissions=['InvoiceRead'], **seal)
    task = dict(module_task('ksef_token', 'create', args), environment={'KSEF_TOKEN': admin_token})
    run = run_playbook([task])
    created = run.result('create')
    assert created['status'] == 'ok' and created['result']['status'] == 'Active', run.output()
    assert ksef.violations() == []
