# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""ksef_token and ksef_token_info against a hostile KSeF: the fake KSeF API (TLS on 127.0.0.1, the official
contract everywhere else) answers one endpoint the way a broken or hostile server would (tests/fakes/ksef_hostile.py).

Deadlines (a dripping answer, 60 MB answers), 429 backoff for every kind of Retry-After, endless paging,
JSON of the wrong shape, server text with terminal escapes, and a token whose secret never arrived.
"""

from __future__ import annotations

import email.utils
import os
import sys
import time

import pytest

from fixtures_ksef import NIP, OWNER, admin_token, started_ksef  # noqa: F401  pylint: disable=unused-import
from harness import REPO_ROOT, module_task

sys.path.insert(0, os.path.join(REPO_ROOT, 'tests', 'fakes'))
import ksef_hostile as hostile  # noqa: E402  pylint: disable=wrong-import-position,import-error

DESCRIPTION = 'Integration - ERP'
ANSI = '\x1b[31mERROR\x1b[0m\r\n\x1b]0;owned\x07\tline\x00' * 120   # about 5 KB of escapes, newlines, controls


@pytest.fixture
def ksef():
    """The KSeF double, where a session opened with a KSeF token may make tokens (so auth_token suffices here)."""
    with started_ksef() as fake:
        fake.token_sessions_can_generate = True
        yield fake


def connection(ksef, admin_token, **extra):
    return dict(api_url=ksef.base_url, ca_path=ksef.ca_pem_path, context=dict(type='nip', value=NIP), auth_token=admin_token,
                **extra)


def failed_message(run, name):
    """The message of a task that failed cleanly (a backend message, not a crash)."""
    record = run.result(name)
    assert record['status'] == 'failed', run.output()
    result = record['result']
    crashed = 'module_stderr' in result or 'Traceback' in str(result.get('exception')) or 'Traceback' in run.stdout
    assert not crashed and not result['msg'].startswith('MODULE FAILURE'), run.output()
    return result['msg']


def secret_of(ksef, reference):
    return ksef.token(reference)['secret']


def files_holding(directory, value):
    """Every file under ``directory`` whose bytes contain ``value``."""
    found = []
    for root, dummy, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            if os.path.isfile(path) and not os.path.islink(path):
                with open(path, 'rb') as handle:
                    if value.encode() in handle.read():
                        found.append(path)
    return found


# ---------------------------------------------------------------------------------------------- deadlines

def test_a_dripping_answer_is_stopped_by_the_run_timeout(ksef, admin_token, run_playbook):
    drip = hostile.Drip(pause=1.0, limit=60)
    ksef.misbehave('GET', '/tokens', drip)
    run = run_playbook([module_task('ksef_token_info', 'list', connection(ksef, admin_token, timeout=5))])
    ended = time.monotonic()
    message = failed_message(run, 'list')
    assert message.startswith('KSeF did not answer GET /tokens within timeout=5 seconds'), message
    started = ksef.requests()[0]['at']
    assert ended - started < 5 + 5, 'the run took %.1f s after its first request with timeout=5' % (ended - started)
    assert drip.count == 1


def test_the_timeout_is_shared_by_all_the_requests_of_a_run(ksef, admin_token, run_playbook):
    slow = hostile.EndlessPages(cap=30, delay=1.5)   # every page well within a per-request timeout of 5 s
    ksef.misbehave('GET', '/tokens', slow)
    run = run_playbook([module_task('ksef_token_info', 'list', connection(ksef, admin_token, timeout=5))])
    ended = time.monotonic()
    message = failed_message(run, 'list')
    assert message.startswith('KSeF did not answer GET /tokens within timeout=5 seconds'), message
    assert 2 <= slow.count <= 4
    assert ended - ksef.requests()[0]['at'] < 5 + 5


@pytest.mark.parametrize('announce', [True, False], ids=['announced', 'streamed'])
def test_a_60_mb_answer_is_refused_without_being_read(ksef, admin_token, run_playbook, announce):
    huge = hostile.Huge(60 * 1024 * 1024, announce=announce)
    ksef.misbehave('GET', '/tokens', huge)
    run = run_playbook([module_task('ksef_token_info', 'list', connection(ksef, admin_token))])
    message = failed_message(run, 'list')
    assert message.startswith("KSeF's answer to GET /tokens: the answer"), message
    assert 'the limit of 1048576 bytes' in message, message
    assert huge.sent < 20 * 1024 * 1024, 'the client took %d bytes of a 60 MB answer' % huge.sent


# ---------------------------------------------------------------------------------------------- 429 backoff

def http_date(offset):
    return email.utils.formatdate(time.time() + offset, usegmt=True)


RETRY_AFTER = {
    'zero': '0', 'fraction': '0.001', 'negative': '-5', 'nan': 'nan', 'inf': 'inf', 'huge': '99999999',
    'past date': 'Wed, 21 Oct 2015 07:28:00 GMT', 'future date': lambda: http_date(3), 'junk': 'soon', 'missing': None,
}


@pytest.mark.parametrize('case', sorted(RETRY_AFTER))
def test_any_retry_after_gives_bounded_retries_within_max_wait(ksef, admin_token, run_playbook, case):
    storm = hostile.TooManyRequests(RETRY_AFTER[case])
    ksef.misbehave('GET', '/tokens', storm)
    run = run_playbook([module_task('ksef_token_info', 'list', connection(ksef, admin_token, max_wait=6))])
    message = failed_message(run, 'list')
    assert message.startswith('KSeF kept answering GET /tokens with HTTP 429 (rate limit)'), message
    value = RETRY_AFTER[case]
    if value is None:
        assert '(no Retry-After)' in message, message
    elif isinstance(value, str):
        assert '(Retry-After: %s)' % value in message, message
    else:
        assert '(Retry-After: ' in message, message
    # floors of 1 s and 2 s (the authentication's poll spent 1 s of max_wait=6), then 4 s would pass max_wait
    assert 1 <= storm.count <= 4, '%d requests in %.1f s' % (storm.count, storm.times[-1] - storm.times[0])
    assert storm.times[-1] - storm.times[0] <= 6 + 1


# ---------------------------------------------------------------------------------------------- paging

@pytest.mark.parametrize('repeat', [None, 'the-same-token'], ids=['new tokens', 'repeated token'])
def test_endless_continuation_pages_are_bounded(ksef, admin_token, run_playbook, repeat):
    pages = hostile.EndlessPages(repeat=repeat)
    ksef.misbehave('GET', '/tokens', pages)
    run = run_playbook([module_task('ksef_token_info', 'list', connection(ksef, admin_token))])
    message = failed_message(run, 'list')
    if repeat:
        assert message.startswith('KSeF answered GET /tokens (page 2) with a continuation token it had sent before'), message
        assert pages.count == 2
    else:
        assert message.startswith('KSeF kept sending continuation tokens for GET /tokens: stopped after 100 pages'), message
        assert pages.count == 100


# ---------------------------------------------------------------------------------------------- clean errors

SHAPES = {
    'list page': ('GET', '/tokens', [], 'GET /tokens', 'the answer is a list, not an object'),
    'tokens a string': ('GET', '/tokens', {'tokens': 'none'}, 'GET /tokens', 'tokens is a string, not a list'),
    'item without reference': ('GET', '/tokens', {'tokens': [{'description': 'x', 'status': 'Active'}]}, 'GET /tokens',
                               'tokens[0] has no referenceNumber'),
    'redeem without token': ('POST', '/auth/token/redeem', {}, 'POST /auth/token/redeem', 'the answer has no accessToken'),
    'status a string': ('GET', '/auth/[^/]+', {'status': 'ok'}, 'GET /auth/', 'status is a string, not an object'),
    'challenge a number': ('POST', '/auth/challenge', {'challenge': 5, 'timestampMs': 1}, 'POST /auth/challenge',
                           'challenge is a whole number, not a string'),
    'keys an object': ('GET', '/security/public-key-certificates', {'certificates': []}, 'GET /security/public-key-certificates',
                       'the answer is an object, not a list'),
}


@pytest.mark.parametrize('case', sorted(SHAPES))
def test_json_of_the_wrong_shape_names_the_endpoint(ksef, admin_token, run_playbook, case):
    method, path, body, endpoint, problem = SHAPES[case]
    ksef.misbehave(method, path, hostile.Answer(200, body))
    run = run_playbook([module_task('ksef_token_info', 'list', connection(ksef, admin_token))], verbosity=3)
    message = failed_message(run, 'list')
    assert message.startswith('KSeF answered %s' % endpoint), message
    assert message.endswith('with JSON of an unexpected shape: %s' % problem), message
    run.assert_not_leaked(admin_token)


TEXTS = {
    'plain 500': ('GET', '/tokens', hostile.Answer(500, ANSI.encode(), 'text/plain'), 'KSeF answered GET /tokens with HTTP 500: '),
    'problem 400': ('GET', '/tokens', hostile.Answer(400, {'title': 'Bad', 'status': 400, 'detail': ANSI}, 'application/problem+json'),
                    'KSeF answered GET /tokens with HTTP 400: '),
    'error list 400': ('GET', '/tokens', hostile.Answer(400, {'errors': [{'code': 21405, 'description': ANSI, 'details': [ANSI]}]}),
                       'KSeF answered GET /tokens with HTTP 400: 21405 '),
    'auth status': ('GET', '/auth/[^/]+', hostile.Answer(200, {'status': {'code': 450, 'description': ANSI, 'details': [ANSI]}}),
                    'KSeF refused the authentication (KSeF token): status 450 '),
    'html 200': ('GET', '/tokens', hostile.Answer(200, ANSI.encode(), 'text/html'),
                 'KSeF answered GET /tokens with something that is not JSON: '),
}


@pytest.mark.parametrize('case', sorted(TEXTS))
def test_server_text_in_messages_is_cut_and_clean(ksef, admin_token, run_playbook, case):
    method, path, behaviour, start = TEXTS[case]
    ksef.misbehave(method, path, behaviour)
    run = run_playbook([module_task('ksef_token_info', 'list', connection(ksef, admin_token))])
    message = failed_message(run, 'list')
    assert message.startswith(start), message
    assert 'ERROR' in message
    assert not any(character in message for character in '\x1b\r\n\t\x00\x07'), repr(message)
    assert len(message) < len(start) + 2 * 200 + 10, 'message of %d characters: %r' % (len(message), message)


# ---------------------------------------------------------------------------------------------- lost secret

def test_a_token_whose_secret_never_arrived_is_revoked_and_made_anew(ksef, admin_token, run_playbook, tmp_path):
    token_file = tmp_path / 'erp.token'
    args = connection(ksef, admin_token, description=DESCRIPTION, permissions=['InvoiceRead'], token_path=str(token_file))
    made_then_failed = hostile.Contract(status=500, body=b'Internal Server Error')
    ksef.misbehave('POST', '/tokens', made_then_failed)
    first = run_playbook([module_task('ksef_token', 'create', args)], verbosity=3)
    assert failed_message(first, 'create').startswith('KSeF answered POST /tokens with HTTP 500'), first.output()
    [lost] = [token['referenceNumber'] for token in ksef.tokens() if token['description'] == DESCRIPTION]
    assert not token_file.exists()
    ksef.behave()

    run = run_playbook([module_task('ksef_token', 'check', args, check=True), module_task('ksef_token', 'replace', args),
                        module_task('ksef_token', 'again', args)], verbosity=3)
    check, replace, again = (run.result(name) for name in ('check', 'replace', 'again'))
    for record in (check, replace):
        assert record['status'] == 'ok' and record['changed'], run.output()
        assert record['result']['actions'] == ['revoke %s' % lost, 'create']
        [warning] = record['result']['warnings']
        assert lost in warning and 'its secret is not in token_path %s' % token_file in warning, warning
    assert check['result']['reference_number'] is None
    assert again['status'] == 'ok' and not again['changed'] and again['result']['actions'] == []
    new = replace['result']['reference_number']
    assert again['result']['reference_number'] == new != lost
    assert ksef.token(lost)['status'] in ('Revoking', 'Revoked') and ksef.token(new)['status'] == 'Active'
    assert token_file.read_text() == secret_of(ksef, new) + '\n'
    for secret in (secret_of(ksef, lost), secret_of(ksef, new), admin_token):
        first.assert_not_leaked(secret)
        run.assert_not_leaked(secret)
    assert files_holding(tmp_path, secret_of(ksef, lost)) == []
    assert files_holding(tmp_path, secret_of(ksef, new)) == [str(token_file)]


def test_token_path_with_another_tokens_secret_is_not_taken_for_the_secret(ksef, admin_token, run_playbook, tmp_path):
    old, old_secret = ksef.add_token(NIP, OWNER, ['InvoiceRead'], DESCRIPTION)
    ksef.set_token_status(old, 'Revoked')
    current, dummy = ksef.add_token(NIP, OWNER, ['InvoiceRead'], DESCRIPTION)   # its secret went nowhere
    token_file = tmp_path / 'erp.token'
    token_file.write_text(old_secret + '\n')
    args = connection(ksef, admin_token, description=DESCRIPTION, permissions=['InvoiceRead'], token_path=str(token_file))
    run = run_playbook([module_task('ksef_token', 'keep', args), module_task('ksef_token', 'force', dict(args, force=True))])
    message = failed_message(run, 'keep')
    assert current in message and old in message and 'force=true' in message, message
    forced = run.result('force')
    assert forced['status'] == 'ok' and forced['result']['actions'] == ['revoke %s' % current, 'create'], run.output()
    new = forced['result']['reference_number']
    assert token_file.read_text() == secret_of(ksef, new) + '\n'
    assert ksef.token(current)['status'] in ('Revoking', 'Revoked')
    run.assert_not_leaked(old_secret, secret_of(ksef, new), admin_token)


def test_the_secret_is_kept_when_the_new_tokens_status_cannot_be_read(ksef, admin_token, run_playbook, tmp_path):
    token_file = tmp_path / 'erp.token'
    args = connection(ksef, admin_token, description=DESCRIPTION, permissions=['InvoiceRead'], token_path=str(token_file))
    ksef.misbehave('GET', '/tokens/[^/]+', hostile.Answer(500, ANSI.encode(), 'text/plain'))
    run = run_playbook([module_task('ksef_token', 'create', args)], verbosity=3)
    created = run.result('create')
    assert created['status'] == 'ok' and created['changed'], run.output()
    new = created['result']['reference_number']
    [warning] = created['result']['warnings']
    assert warning.startswith('the token %s was made, but its status could not be read: KSeF answered GET /tokens/' % new)
    assert '\x1b' not in warning
    assert token_file.read_text() == secret_of(ksef, new) + '\n'
    ksef.behave()
    again = run_playbook([module_task('ksef_token', 'again', args)]).result('again')
    assert not again['changed'] and again['result']['reference_number'] == new
    run.assert_not_leaked(secret_of(ksef, new))


def test_a_creation_answer_of_the_wrong_shape_still_delivers_the_secret(ksef, admin_token, run_playbook, tmp_path):
    token_file = tmp_path / 'erp.token'
    args = connection(ksef, admin_token, description=DESCRIPTION, permissions=['InvoiceRead'], token_path=str(token_file))
    ksef.misbehave('POST', '/tokens', hostile.Contract(transform=lambda created: {'token': created['token']}))
    run = run_playbook([module_task('ksef_token', 'create', args)], verbosity=3)
    message = failed_message(run, 'create')
    assert message == 'KSeF answered POST /tokens with JSON of an unexpected shape: the answer has no referenceNumber', message
    [made] = [token for token in ksef.tokens() if token['description'] == DESCRIPTION]
    assert token_file.read_text() == made['secret'] + '\n'
    run.assert_not_leaked(made['secret'])
    ksef.behave()
    again = run_playbook([module_task('ksef_token', 'again', args)]).result('again')
    assert again['status'] == 'ok' and not again['changed'] and again['result']['reference_number'] == made['referenceNumber']


def test_a_directory_as_token_path_is_refused_before_any_call(ksef, admin_token, run_playbook, tmp_path):
    """Else the token would be made in KSeF and its secret, shown once, could not be written anywhere."""
    (tmp_path / 'erp.token').mkdir()
    args = connection(ksef, admin_token, description=DESCRIPTION, permissions=['InvoiceRead'],
                      token_path=str(tmp_path / 'erp.token'))
    calls = len(ksef.requests())
    run = run_playbook([module_task('ksef_token', 'create', args)])
    assert failed_message(run, 'create') == 'token_path %s is a directory, not a file' % (tmp_path / 'erp.token')
    assert len(ksef.requests()) == calls
    assert [token for token in ksef.tokens() if token['description'] == DESCRIPTION] == []


def test_a_temp_file_a_killed_run_left_with_a_secret_is_removed(ksef, admin_token, run_playbook, tmp_path):
    """A kill between writing the secret's temp file and its rename leaves the secret there: the next run removes it."""
    leftover = tmp_path / '.tokenfleet-erp.token-ab12cd_9'
    leftover.write_text('a secret a killed run was writing\n')
    other = tmp_path / '.tokenfleet-other.token-ab12cd_9'
    other.write_text('not ours\n')
    args = connection(ksef, admin_token, description=DESCRIPTION, permissions=['InvoiceRead'],
                      token_path=str(tmp_path / 'erp.token'))
    run = run_playbook([module_task('ksef_token', 'create', args)])
    assert run.result('create')['changed'], run.output()
    assert not leftover.exists()
    assert other.exists()  # another destination's temp file is not ours to remove
    assert (tmp_path / 'erp.token').read_text().strip() == secret_of(ksef, run.result('create')['result']['reference_number'])
