# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations


class ModuleDocFragment(object):
    """KSeF connection, context and authentication options."""

    DOCUMENTATION = r"""
options:
  environment:
    description:
      - The KSeF environment, V(test) (U(https://api-test.ksef.mf.gov.pl/v2)), V(demo) or V(production).
      - One of O(environment) and O(api_url) is required.
    type: str
    choices: [demo, production, test]
  api_url:
    description: Base URL of the KSeF API including the version path, like the OpenAPI document's C(servers) entry.
    type: str
  validate_certs:
    description: Verify KSeF's TLS certificate. Only turn this off for a test double.
    type: bool
    default: true
  ca_path:
    description: A PEM bundle of CAs to verify KSeF's TLS certificate with.
    type: path
  timeout:
    description:
      - Seconds of network time for all the requests of a run together (the authentication, every page of a
        listing, the token calls), however slowly a server sends its answers. When it is used up the run fails
        with a message naming the request and the timeout.
      - Redirects are not followed. Answers longer than 1 MiB are refused (a page of 100 tokens is about 150 KB).
    type: int
    default: 30
  max_wait:
    description:
      - Longest total time in seconds a run waits on purpose, all waits together, on rate limits (HTTP 429), on the
        authentication status and on a new token becoming Active. A run therefore ends within about O(timeout) +
        O(max_wait).
      - After HTTP 429 the module waits what C(Retry-After) asks, but at least 1 second, doubling with each 429 of
        the run up to 60 seconds; it retries at most 10 times and never past O(max_wait). A C(Retry-After) that asks
        for more than is left ends the run at once, with a message naming the request.
      - A listing follows at most 100 pages (10,000 tokens) and stops when KSeF repeats a continuation token.
    type: int
    default: 120
  context:
    description: The KSeF context (the taxpayer) the session works in.
    type: dict
    required: true
    suboptions:
      type:
        description: V(nip) or V(internal_id).
        type: str
        choices: [nip, internal_id]
        default: nip
      value:
        description: The NIP (10 digits, checksum verified) or the InternalId (NIP, hyphen, 5 digits).
        type: str
        required: true
  auth_token:
    description:
      - Authenticate with this KSeF token. It is never logged or returned. A session opened with a KSeF token may
        not be allowed to create tokens; authenticate with a certificate for that.
      - If not set, the value of the E(KSEF_TOKEN) environment variable is used.
      - Not used when O(auth_certificate_path) is given.
    type: str
  auth_certificate_path:
    description:
      - Authenticate with this certificate (PEM or DER) and its key, given with O(private_key_path) or as a key on
        a token (O(key_label)/O(key_id) with the token options). The module signs a XAdES-BES AuthTokenRequest with it.
    type: path
requirements:
  - signxml (for certificate authentication)
  - lxml
"""
