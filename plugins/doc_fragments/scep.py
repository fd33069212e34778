# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations


class ModuleDocFragment(object):
    """How to reach a SCEP server; shared by scep_enroll and scep_ca_info."""

    DOCUMENTATION = r"""
options:
  url:
    description:
      - URL of the SCEP service, with the port if not the default, for example V(http://ndes.example.com/certsrv/mscep/mscep.dll)
        or V(http://ca.example.com:8080/scep).
    type: str
    required: true
  timeout:
    description:
      - Seconds of network time for the whole run, spent across all its requests (GetCACaps, GetCACert, every
        PKIOperation and poll, redirects, slow answers), not per request or per read. A server that answers too slowly,
        or drips its answer, ends the run with C(no complete answer from HOST:PORT within the timeout of N seconds).
      - The waits of M(tokenfleet.pki.scep_enroll) between polls (its C(poll_interval)) and before contacting the server
        (its C(splay)) are not network time and do not count.
      - Answers are read up to 4 MiB (GetCACaps up to 16 KiB); a longer answer fails the run with a message naming the
        limit.
    type: int
    default: 30
  validate_certs:
    description: Verify the server's TLS certificate for an V(https://) O(url).
    type: bool
    default: true
  ca_path:
    description: A PEM bundle of CAs to verify an V(https://) O(url) with.
    type: path
  ca_identifier:
    description: The CA identifier some servers need in GetCACert/GetCACaps (EJBCA's CA name, for example).
    type: str
  ra_fingerprint:
    description:
      - SHA-256 fingerprints (hexadecimal, colons and case do not matter, as M(tokenfleet.pki.scep_ca_info) returns
        them) of the RA certificates to trust, for example NDES's two RA certificates. A single string is a list of one.
      - When set, only these certificates (and the pinned CA) count as RA certificates, whatever their extended key
        usage; each must still be issued by the issuing CA (the pinned CA, or the CA of the pinned chain that issues
        certificates when a root above it is pinned), be valid and allow keyEncipherment (to receive requests) or
        digitalSignature (to sign replies). M(tokenfleet.pki.scep_enroll) fails before sending anything when the server
        no longer sends one of them (its RA certificates were renewed; update the pins).
      - When not set, an RA certificate is one the issuing CA issued, valid now, with that key usage, and with the
        Certificate Request Agent (1.3.6.1.4.1.311.20.2.1, NDES), CMC RA (1.3.6.1.5.5.7.3.28) or anyExtendedKeyUsage
        extended key usage or with no extended key usage at all (OpenXPKI, the fake responder). A certificate whose
        extended key usage limits it to other uses (serverAuth, clientAuth, emailProtection, ...) is a device's
        certificate, never an RA; to trust such an RA anyway, pin it here.
      - A request is encrypted only to an RA certificate for encryption, else to the issuing CA (never to a root above
        it); a reply is accepted only when signed by a CA of the pinned chain or an RA certificate for signing.
    type: list
    elements: str
"""
