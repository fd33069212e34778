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
    description: Seconds to wait for each answer of the server.
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
"""
