# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""SCEP over HTTP (RFC 8894 section 4) through ansible.module_utils.urls. Private to the collection."""

from __future__ import annotations

import base64
import socket
from urllib.error import HTTPError, URLError
from urllib.parse import quote, urlsplit

from ansible.module_utils.urls import open_url

from ansible_collections.tokenfleet.pki.plugins.module_utils.scep.message import ScepError

MAX_RESPONSE = 4 * 1024 * 1024


def scep_server_argument_spec():
    """How to reach the server (``tokenfleet.pki.scep`` fragment)."""
    return dict(
        url=dict(type='str', required=True),
        timeout=dict(type='int', default=30),
        validate_certs=dict(type='bool', default=True),
        ca_path=dict(type='path'),
        ca_identifier=dict(type='str'),
    )


class ScepTransport(object):
    """GET and POST of SCEP operations with one timeout; errors name host, port and cause."""

    def __init__(self, url, timeout=30, validate_certs=True, ca_path=None):
        parts = urlsplit(url)
        if parts.scheme not in ('http', 'https') or not parts.hostname:
            raise ScepError('url must be an http:// or https:// URL of the SCEP service (got %r)' % url)
        if parts.query:
            raise ScepError('url must not contain a query (?...); the operation is added by the module')
        self.url = url
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == 'https' else 80)
        self.timeout = timeout
        self.validate_certs = validate_certs
        self.ca_path = ca_path
        self.requests = []

    def _request(self, operation, message=None, body=None):
        query = 'operation=' + operation
        if message is not None:
            query += '&message=' + quote(message, safe='')
        url = '%s?%s' % (self.url, query)
        method = 'POST' if body is not None else 'GET'
        self.requests.append((method, operation))
        headers = {'Content-Type': 'application/x-pki-message'} if body is not None else None
        where = '%s:%d' % (self.host, self.port)
        try:
            response = open_url(url, data=body, method=method, headers=headers, timeout=self.timeout,
                                validate_certs=self.validate_certs, ca_path=self.ca_path, follow_redirects='safe',
                                http_agent='tokenfleet.pki-scep')
            data = response.read(MAX_RESPONSE + 1)
            content_type = response.headers.get('Content-Type', '')
        except HTTPError as exc:
            detail = ''
            try:
                detail = exc.read(300).decode('utf-8', 'replace').strip()
            except (OSError, ValueError):
                pass
            raise ScepError('the SCEP server at %s answered %s with HTTP status %d %s%s'
                            % (where, operation, exc.code, exc.reason, ': ' + detail if detail else ''))
        except (socket.timeout, TimeoutError):
            raise ScepError('communication error: no answer from %s within the timeout of %s seconds (%s)'
                            % (where, self.timeout, operation))
        except URLError as exc:
            reason = exc.reason
            if isinstance(reason, (socket.timeout, TimeoutError)):
                raise ScepError('communication error: no answer from %s within the timeout of %s seconds (%s)'
                                % (where, self.timeout, operation))
            if isinstance(reason, ConnectionRefusedError):
                raise ScepError('communication error: connection to %s refused (is the SCEP server running?)' % where)
            raise ScepError('communication error with %s: %s' % (where, reason))
        except (OSError, ValueError) as exc:
            raise ScepError('communication error with %s: %s' % (where, exc))
        if len(data) > MAX_RESPONSE:
            raise ScepError('the SCEP server at %s sent more than %d bytes for %s' % (where, MAX_RESPONSE, operation))
        return content_type, data

    def get_ca_caps(self, ca_identifier=None):
        try:
            dummy, data = self._request('GetCACaps', ca_identifier)
        except ScepError as exc:
            if 'HTTP status' in str(exc):
                return []  # RFC 8894 3.5.1: no answer means no capabilities
            raise
        return [line.strip() for line in data.decode('ascii', 'replace').splitlines() if line.strip()]

    def get_ca_cert(self, ca_identifier=None):
        return self._request('GetCACert', ca_identifier)

    def pki_operation(self, message, use_post):
        if use_post:
            dummy, data = self._request('PKIOperation', body=message)
        else:
            dummy, data = self._request('PKIOperation', base64.b64encode(message).decode('ascii'))
        return data
