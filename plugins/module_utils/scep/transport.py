# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""SCEP over HTTP (RFC 8894 section 4) through ansible.module_utils.urls. Private to the collection.

One ``NetworkBudget`` per transport: ``timeout`` bounds all the requests of a run together
(GetCACaps, GetCACert, every PKIOperation, redirects and slow answers), not each socket read.
Answers are read up to a size limit; what the server says goes into messages through
``server_text()`` only.
"""

from __future__ import annotations

import base64
import re
import socket
from urllib.error import HTTPError, URLError
from urllib.parse import quote, urlsplit

from ansible.module_utils.urls import open_url

from ansible_collections.tokenfleet.pki.plugins.module_utils.bounded_http import (
    AnswerTooLarge,
    BudgetExpired,
    NetworkBudget,
    read_capped,
    server_text,
)
from ansible_collections.tokenfleet.pki.plugins.module_utils.scep.message import ScepError

MAX_RESPONSE = 4 * 1024 * 1024
"""GetCACert and CertRep answers: a CA chain or one certificate is a few KiB; micromdm caps requests at 2 MiB."""
MAX_CAPS_RESPONSE = 16 * 1024
"""GetCACaps is a list of a dozen keywords; certmonger refuses answers over 1 KiB as "some random page"."""
ERROR_BODY_LIMIT = 1024

# RFC 8894 table 7, plus keywords older servers send (SHA-224/SHA-384 read by sscep and cryptlib, Update by jscep)
KNOWN_CAPS = frozenset(('AES', 'DES3', 'GETNEXTCACERT', 'POSTPKIOPERATION', 'RENEWAL', 'SHA-1', 'SHA-224', 'SHA-256',
                        'SHA-384', 'SHA-512', 'SCEPSTANDARD', 'UPDATE'))
_KEYWORD = re.compile(r'^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$')


def scep_server_argument_spec():
    """How to reach and trust the server (``tokenfleet.pki.scep`` fragment)."""
    return dict(
        url=dict(type='str', required=True),
        timeout=dict(type='int', default=30),
        validate_certs=dict(type='bool', default=True),
        ca_path=dict(type='path'),
        ca_identifier=dict(type='str'),
        ra_fingerprint=dict(type='list', elements='str'),
    )


class ScepHttpError(ScepError):
    """The server answered with an HTTP error status (``status``); the message says "HTTP status"."""

    def __init__(self, message, status):
        super(ScepHttpError, self).__init__(message)
        self.status = status


class ScepUnreachable(ScepError):
    """No answer at all: connection refused, or the run's timeout spent."""


class ScepCapsError(ScepError):
    """GetCACaps gave no usable answer (HTTP error, broken connection, empty or not a list of keywords)."""


def parse_caps(data):
    """The keywords of a GetCACaps answer; ScepCapsError when it is empty or is not a keyword list."""
    try:
        text = data.decode('ascii')
    except UnicodeDecodeError:
        raise ScepCapsError('the GetCACaps answer is not text (%d bytes): %s' % (len(data), server_text(data)))
    words = text.split()
    if not words:
        raise ScepCapsError('the GetCACaps answer is empty')
    if not all(_KEYWORD.match(word) for word in words):
        raise ScepCapsError('the GetCACaps answer is not a list of capabilities: %s' % server_text(text))
    if not any(word.upper() in KNOWN_CAPS for word in words):
        raise ScepCapsError('the GetCACaps answer names no SCEP capability: %s' % server_text(text))
    return words


class ScepTransport(object):
    """GET and POST of SCEP operations within one time budget; errors name host, port and cause."""

    def __init__(self, url, timeout=30, validate_certs=True, ca_path=None):
        parts = urlsplit(url)
        if parts.scheme not in ('http', 'https') or not parts.hostname:
            raise ScepError('url must be an http:// or https:// URL of the SCEP service (got %r)' % url)
        if parts.query:
            raise ScepError('url must not contain a query (?...); the operation is added by the module')
        self.url = url
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == 'https' else 80)
        self.where = '%s:%d' % (self.host, self.port)
        self.timeout = timeout
        self.budget = NetworkBudget(timeout)
        self.validate_certs = validate_certs
        self.ca_path = ca_path
        self.requests = []

    def _timed_out(self, operation):
        return ScepUnreachable('communication error: no complete answer from %s within the timeout of %s seconds (%s)'
                               % (self.where, self.timeout, operation))

    def _request(self, operation, message=None, body=None, limit=MAX_RESPONSE):
        query = 'operation=' + operation
        if message is not None:
            query += '&message=' + quote(message, safe='')
        url = '%s?%s' % (self.url, query)
        method = 'POST' if body is not None else 'GET'
        self.requests.append((method, operation))
        headers = {'Content-Type': 'application/x-pki-message'} if body is not None else None
        try:
            with self.budget.bound():
                return self._open(url, operation, method, body, headers, limit)
        except BudgetExpired:
            raise self._timed_out(operation)

    def _open(self, url, operation, method, body, headers, limit):
        where = self.where
        try:
            response = open_url(url, data=body, method=method, headers=headers, timeout=self.budget.socket_timeout(),
                                validate_certs=self.validate_certs, ca_path=self.ca_path, follow_redirects='safe',
                                http_agent='tokenfleet.pki-scep')
            data = read_capped(response, limit, 'the SCEP server at %s answering %s' % (where, operation))
            content_type = response.headers.get('Content-Type', '')
        except HTTPError as exc:
            detail = ''
            try:
                detail = server_text(exc.read(ERROR_BODY_LIMIT))
            except (OSError, ValueError):
                pass
            raise ScepHttpError('the SCEP server at %s answered %s with HTTP status %d %s%s'
                                % (where, operation, exc.code, server_text(exc.reason), ': ' + detail if detail else ''),
                                exc.code)
        except (socket.timeout, TimeoutError):
            raise self._timed_out(operation)
        except URLError as exc:
            reason = exc.reason
            if isinstance(reason, (socket.timeout, TimeoutError)):
                raise self._timed_out(operation)
            if isinstance(reason, ConnectionRefusedError):
                raise ScepUnreachable('communication error: connection to %s refused (is the SCEP server running?)' % where)
            raise ScepError('communication error with %s: %s' % (where, server_text(reason)))
        except (OSError, ValueError) as exc:
            raise ScepError('communication error with %s: %s' % (where, server_text(exc)))
        return content_type, data

    def get_ca_caps(self, ca_identifier=None):
        """The server's capabilities; ScepCapsError when it gives none (RFC 8894 would fall back to SHA-1/3DES/GET).

        An unreachable server (refused, timeout) is reported as such, not as missing capabilities.
        """
        try:
            dummy, data = self._request('GetCACaps', ca_identifier, limit=MAX_CAPS_RESPONSE)
        except (ScepCapsError, ScepUnreachable):
            raise
        except (ScepError, AnswerTooLarge) as exc:
            raise ScepCapsError(str(exc))
        return parse_caps(data)

    def get_ca_cert(self, ca_identifier=None):
        return self._request('GetCACert', ca_identifier)

    def pki_operation(self, message, use_post):
        if use_post:
            dummy, data = self._request('PKIOperation', body=message)
        else:
            dummy, data = self._request('PKIOperation', base64.b64encode(message).decode('ascii'))
        return data
