# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""HTTP client for the KSeF 2.0 API: JSON, problem-details errors, 429 Retry-After. Private to the collection."""

from __future__ import annotations

import json
import socket
import time
from urllib.error import HTTPError, URLError
from urllib.parse import urlencode, urlsplit

from ansible.module_utils.urls import open_url

from ansible_collections.tokenfleet.pki.plugins.module_utils.common import PkiError

ENVIRONMENTS = {
    'test': 'https://api-test.ksef.mf.gov.pl/v2',
    'demo': 'https://api-demo.ksef.mf.gov.pl/v2',
    'production': 'https://api.ksef.mf.gov.pl/v2',
}


class KsefError(PkiError):
    """A KSeF call that failed; the message carries KSeF's exception codes, never a token."""


class KsefApiError(KsefError):
    def __init__(self, message, status=None, codes=()):
        super(KsefApiError, self).__init__(message)
        self.status = status
        self.codes = tuple(codes)


def _error_details(status, body):
    """(text, codes) from a problem-details or legacy ExceptionResponse body."""
    try:
        data = json.loads(body.decode('utf-8')) if body else {}
    except ValueError:
        return body.decode('utf-8', 'replace')[:300].strip(), []
    if not isinstance(data, dict):
        return str(data)[:300], []
    parts, codes = [], []
    for error in data.get('errors') or []:
        codes.append(error.get('code'))
        details = '; '.join(error.get('details') or [])
        parts.append('%s %s%s' % (error.get('code'), error.get('description'), ' (%s)' % details if details else ''))
    for error in (data.get('exception') or {}).get('exceptionDetailList') or []:
        codes.append(error.get('exceptionCode'))
        details = '; '.join(error.get('details') or [])
        parts.append('%s %s%s' % (error.get('exceptionCode'), error.get('exceptionDescription'),
                                  ' (%s)' % details if details else ''))
    if data.get('reasonCode'):
        security = data.get('security') or {}
        extra = ', '.join('%s: %s' % (key, value) for key, value in sorted(security.items()))
        parts.append('%s%s' % (data['reasonCode'], ' (%s)' % extra if extra else ''))
    if not parts:
        parts.append(data.get('detail') or data.get('title') or (data.get('status') or {}).get('description') or '')
    return '; '.join(part for part in parts if part), [code for code in codes if code is not None]


class KsefClient(object):
    """One KSeF endpoint; every call sends problem-details errors and waits out 429s within ``max_wait``."""

    def __init__(self, base_url, timeout=30, validate_certs=True, ca_path=None, max_wait=120):
        parts = urlsplit(base_url)
        if parts.scheme != 'https' or not parts.hostname:
            raise KsefError('api_url must be an https:// URL such as %s (got %r)' % (ENVIRONMENTS['test'], base_url))
        self.base_url = base_url.rstrip('/')
        self.timeout = timeout
        self.validate_certs = validate_certs
        self.ca_path = ca_path
        self.max_wait = max_wait
        self.waited = 0.0
        self.calls = []

    def call(self, method, path, body=None, bearer=None, query=None, headers=None, content_type='application/json'):
        """(status, parsed JSON or None, response headers) of one call; errors raise KsefApiError."""
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
            try:
                response = open_url(url, data=data, method=method, headers=request_headers, timeout=self.timeout,
                                    validate_certs=self.validate_certs, ca_path=self.ca_path,
                                    http_agent='tokenfleet.pki-ksef', follow_redirects='none')
                raw = response.read()
                return response.status, (json.loads(raw.decode('utf-8')) if raw else None), response.headers
            except HTTPError as exc:
                raw = exc.read() if hasattr(exc, 'read') else b''
                if exc.code == 429 and self._wait_retry_after(exc.headers, method, path):
                    continue
                text, codes = _error_details(exc.code, raw)
                message = 'KSeF answered %s %s with HTTP %d%s' % (method, path, exc.code, ': ' + text if text else '')
                raise KsefApiError(message, exc.code, codes)
            except (socket.timeout, TimeoutError):
                raise KsefError('no answer from %s within %s seconds (%s %s)' % (self.base_url, self.timeout, method, path))
            except URLError as exc:
                raise KsefError('cannot reach KSeF at %s: %s' % (self.base_url, exc.reason))
            except ValueError as exc:
                raise KsefError('KSeF sent an answer to %s %s that is not JSON: %s' % (method, path, exc))

    def _wait_retry_after(self, headers, method, path):
        try:
            delay = float(headers.get('Retry-After', '1'))
        except (TypeError, ValueError):
            delay = 1.0
        if self.waited + delay > self.max_wait:
            raise KsefApiError('KSeF kept answering %s %s with HTTP 429 (rate limit); waited %.0f seconds of max_wait=%s, '
                               'the next Retry-After was %.0f seconds' % (method, path, self.waited, self.max_wait, delay),
                               429)
        time.sleep(delay)
        self.waited += delay
        return True
