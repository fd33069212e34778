# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""HTTP client for the KSeF 2.0 API. Private to the collection.

What a run may spend is bounded twice: ``timeout`` is the network time of all its requests together
(bounded_http.NetworkBudget, so a server that drips its answer cannot hold a run), ``max_wait`` the
deliberate waits (429 Retry-After, polling). Answers are read up to MAX_ANSWER bytes, JSON is
checked against the shape the caller expects, and text a server sent reaches a message only
through server_text().
"""

from __future__ import annotations

import datetime
import email.utils
import http.client
import json
import math
import re
import socket
import time
from urllib.error import HTTPError, URLError
from urllib.parse import urlencode, urlsplit

from ansible.module_utils.urls import ConnectionError as UrlsConnectionError
from ansible.module_utils.urls import open_url

from ansible_collections.tokenfleet.pki.plugins.module_utils.bounded_http import (
    AnswerTooLarge,
    BudgetExpired,
    NetworkBudget,
    read_capped,
    server_text,
)
from ansible_collections.tokenfleet.pki.plugins.module_utils.common import PkiError

ENVIRONMENTS = {
    'test': 'https://api-test.ksef.mf.gov.pl/v2',
    'demo': 'https://api-demo.ksef.mf.gov.pl/v2',
    'production': 'https://api.ksef.mf.gov.pl/v2',
}

# The largest legitimate answer is a page of 100 tokens, about 150 KB with 256-character descriptions.
MAX_ANSWER = 1024 * 1024
# Waits after HTTP 429: at least RETRY_FLOOR seconds, doubling with each 429 of the run up to RETRY_CEILING,
# longer when Retry-After asks for it; at most MAX_RATE_LIMITED answers 429 per run, all within max_wait.
RETRY_FLOOR, RETRY_CEILING, MAX_RATE_LIMITED = 1.0, 60.0, 10
# A reference number (36 characters in API 2.6, e.g. 20251010-EC-1DCE3E3000-12ECB5B36E-45), loosely: it goes
# into URLs and messages, so it may hold no control characters, spaces or slashes.
REFERENCE = re.compile(r'[0-9A-Za-z._-]{1,64}')


class KsefError(PkiError):
    """A KSeF call that failed; the message carries KSeF's exception codes, never a token."""


class KsefApiError(KsefError):
    def __init__(self, message, status=None, codes=()):
        super(KsefApiError, self).__init__(message)
        self.status = status
        self.codes = tuple(codes)


_KINDS = {dict: 'an object', list: 'a list', str: 'a string', int: 'a whole number', float: 'a number',
          bool: 'true or false', type(None): 'null'}


def _kind(value):
    return _KINDS.get(type(value), type(value).__name__)


def check_shape(value, shape, endpoint, where=''):
    """``value`` (parsed JSON) when it has ``shape``, else KsefError naming the endpoint and the place.

    ``shape`` is a type or a tuple of types, a compiled pattern a string must match whole, ``[item
    shape]``, or ``{key: shape}`` where a key ending in ``?`` may be missing or null. Unknown keys are
    allowed (KSeF adds fields). Values are never quoted: an answer may hold a secret.
    """
    def unexpected(problem):
        return KsefError('KSeF answered %s with JSON of an unexpected shape: %s' % (endpoint, problem))

    name = where or 'the answer'
    if isinstance(shape, dict):
        if not isinstance(value, dict):
            raise unexpected('%s is %s, not an object' % (name, _kind(value)))
        for key, inner in shape.items():
            optional, key = key.endswith('?'), key.rstrip('?')
            place = '%s.%s' % (where, key) if where else key
            if value.get(key) is None:
                if optional:
                    continue
                raise unexpected('%s has no %s' % (name, key) if key not in value else '%s is null' % place)
            check_shape(value[key], inner, endpoint, place)
    elif hasattr(shape, 'fullmatch'):
        if not isinstance(value, str) or not shape.fullmatch(value):
            raise unexpected('%s is %s' % (name, 'a string of another form' if isinstance(value, str) else _kind(value)))
    elif isinstance(shape, list):
        if not isinstance(value, list):
            raise unexpected('%s is %s, not a list' % (name, _kind(value)))
        for index, item in enumerate(value):
            check_shape(item, shape[0], endpoint, '%s[%d]' % (where, index))
    else:
        types = shape if isinstance(shape, tuple) else (shape,)
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise unexpected('%s is %s, not %s' % (name, _kind(value), ' or '.join(_KINDS.get(kind, kind.__name__) for kind in types)))
    return value


def _error_details(body):
    """(text, codes) from a problem-details or legacy ExceptionResponse body of any shape."""
    try:
        data = json.loads(body.decode('utf-8')) if body else {}
    except ValueError:
        return server_text(body), []
    if not isinstance(data, dict):
        return server_text(json.dumps(data)), []
    parts, codes = [], []

    def add(code, description, details):
        if isinstance(code, int) and not isinstance(code, bool):
            codes.append(code)
        details = '; '.join(str(item) for item in details) if isinstance(details, list) else ''
        parts.append('%s %s%s' % (code, description, ' (%s)' % details if details else ''))

    errors = data.get('errors')
    for error in errors if isinstance(errors, list) else []:
        if isinstance(error, dict):
            add(error.get('code'), error.get('description'), error.get('details'))
    exception = data.get('exception')
    listing = exception.get('exceptionDetailList') if isinstance(exception, dict) else None
    for error in listing if isinstance(listing, list) else []:
        if isinstance(error, dict):
            add(error.get('exceptionCode'), error.get('exceptionDescription'), error.get('details'))
    if data.get('reasonCode'):
        security = data.get('security') if isinstance(data.get('security'), dict) else {}
        extra = ', '.join('%s: %s' % (key, value) for key, value in sorted(security.items()))
        parts.append('%s%s' % (data['reasonCode'], ' (%s)' % extra if extra else ''))
    if not parts:
        status = data.get('status')
        parts.append(data.get('detail') or data.get('title') or (status.get('description') if isinstance(status, dict) else '') or '')
    return server_text('; '.join(str(part) for part in parts if part)), codes


def retry_after_seconds(value, now=None):
    """Seconds a Retry-After header asks for (delta-seconds or an HTTP-date), or None when it asks for nothing usable.

    Negative, NaN and unreadable values are None (the caller's floor applies); inf and huge values are kept,
    so that the caller can refuse to wait that long.
    """
    value = (value or '').strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            moment = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if moment is None:
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=datetime.timezone.utc)
        seconds = (moment - (now or datetime.datetime.now(datetime.timezone.utc))).total_seconds()
        return max(seconds, 0.0)
    if math.isnan(seconds) or seconds < 0:
        return None
    return seconds


class KsefClient(object):
    """One KSeF endpoint; every call sends problem-details errors and waits out 429s within ``max_wait``."""

    def __init__(self, base_url, timeout=30, validate_certs=True, ca_path=None, max_wait=120):
        parts = urlsplit(base_url)
        if parts.scheme != 'https' or not parts.hostname:
            raise KsefError('api_url must be an https:// URL such as %s (got %r)' % (ENVIRONMENTS['test'], base_url))
        if timeout <= 0:
            raise KsefError('timeout must be a positive number of seconds (got %s)' % timeout)
        if max_wait < 0:
            raise KsefError('max_wait must be zero or a positive number of seconds (got %s)' % max_wait)
        self.base_url = base_url.rstrip('/')
        self.timeout = timeout
        self.budget = NetworkBudget(timeout)
        self.validate_certs = validate_certs
        self.ca_path = ca_path
        self.max_wait = max_wait
        self.waited = 0.0
        self.rate_limited = 0
        self.calls = []

    def call(self, method, path, body=None, bearer=None, query=None, headers=None, content_type='application/json', shape=None):
        """(status, parsed JSON or None, response headers) of one call; errors raise KsefError/KsefApiError.

        With ``shape`` (see check_shape) the JSON is checked before it is returned.
        """
        endpoint = '%s %s' % (method, path)
        url = self.base_url + path
        if query:
            url += '?' + urlencode(query, doseq=True)
        request_headers = {'Accept': 'application/json', 'X-Error-Format': 'problem-details'}
        if bearer is not None:
            request_headers['Authorization'] = 'Bearer ' + bearer
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode('utf-8')
            request_headers['Content-Type'] = content_type
        request_headers.update(headers or {})
        while True:
            self.calls.append((method, path))
            status, raw, response_headers = self._exchange(method, url, data, request_headers, endpoint)
            if status == 429:
                self._wait_retry_after(response_headers, endpoint)
                continue
            if not 200 <= status < 300:
                text, codes = _error_details(raw)
                raise KsefApiError('KSeF answered %s with HTTP %d%s' % (endpoint, status, ': ' + text if text else ''), status, codes)
            try:
                parsed = json.loads(raw.decode('utf-8')) if raw else None
            except ValueError:
                raise KsefError('KSeF answered %s with something that is not JSON: %s' % (endpoint, server_text(raw, 80)))
            if shape is not None:
                check_shape(parsed, shape, endpoint)
            return status, parsed, response_headers

    def _exchange(self, method, url, data, headers, endpoint):
        """(status, body, headers) of one request, within the run's network budget; an HTTP error is an answer too."""
        try:
            with self.budget.bound():
                try:
                    response = open_url(url, data=data, method=method, headers=headers, timeout=self.budget.socket_timeout(),
                                        validate_certs=self.validate_certs, ca_path=self.ca_path,
                                        http_agent='tokenfleet.pki-ksef', follow_redirects='none')
                    status = response.status
                except HTTPError as exc:
                    response, status = exc, exc.code
                raw = read_capped(response, MAX_ANSWER, "KSeF's answer to %s" % endpoint)
                return status, raw, response.headers
        except (BudgetExpired, socket.timeout, TimeoutError):
            raise KsefError('KSeF did not answer %s within timeout=%s seconds (the time for all the requests of a run together)'
                            % (endpoint, self.timeout))
        except AnswerTooLarge as exc:
            raise KsefError('%s; nothing of it was used' % exc)
        except URLError as exc:
            if isinstance(exc.reason, (socket.timeout, TimeoutError)):
                raise KsefError('KSeF did not answer %s within timeout=%s seconds (the time for all the requests of a run '
                                'together)' % (endpoint, self.timeout))
            raise KsefError('cannot reach KSeF at %s (%s): %s' % (self.base_url, endpoint, server_text(str(exc.reason))))
        except UrlsConnectionError as exc:
            raise KsefError('cannot reach KSeF at %s (%s): %s' % (self.base_url, endpoint, server_text(str(exc))))
        except (http.client.HTTPException, OSError) as exc:
            raise KsefError('the connection to KSeF broke off during %s: %s' % (endpoint, server_text(repr(exc))))

    def _wait_retry_after(self, headers, endpoint):
        """Sleep before retrying after HTTP 429, or KsefApiError when the retries or max_wait are used up."""
        self.rate_limited += 1
        header = headers.get('Retry-After') if headers is not None else None
        asked = retry_after_seconds(header)
        floor = min(RETRY_FLOOR * 2 ** (self.rate_limited - 1), RETRY_CEILING)
        delay = floor if asked is None else max(asked, floor)
        said = ' (Retry-After: %s)' % server_text(header, 40) if header else ' (no Retry-After)'
        if self.rate_limited > MAX_RATE_LIMITED:
            raise KsefApiError('KSeF kept answering %s with HTTP 429 (rate limit)%s: %d times in this run, the most the module '
                               'retries; waited %.0f of max_wait=%s seconds. Run later.'
                               % (endpoint, said, self.rate_limited, self.waited, self.max_wait), 429)
        if self.waited + delay > self.max_wait:
            raise KsefApiError('KSeF kept answering %s with HTTP 429 (rate limit)%s: waited %.0f of max_wait=%s seconds in this '
                               'run, the next wait of %.0f seconds would pass it. Raise max_wait or run later.'
                               % (endpoint, said, self.waited, self.max_wait, delay), 429)
        time.sleep(delay)
        self.waited += delay

    def pause(self, seconds):
        """Sleep ``seconds`` out of max_wait (polling); False, without sleeping, when that would pass max_wait."""
        if self.waited + seconds > self.max_wait:
            return False
        time.sleep(seconds)
        self.waited += seconds
        return True
