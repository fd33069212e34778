# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations


class ModuleDocFragment(object):
    """The PKCS#11 token options shared by the token modules."""

    MODULE = r"""
options:
  pkcs11_module:
    description:
      - Path of the PKCS#11 module (shared library) of the token, for example V(/usr/lib/softhsm/libsofthsm2.so)
        or V(/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so).
      - Symbolic links are resolved before the module is loaded, so two paths to the same library are one library.
      - If not set, the value of the E(PKCS11_MODULE) environment variable is used; one of them is required
        wherever a token is used.
    type: path
requirements:
  - python-pkcs11 >= 0.9.4
  - cryptography
  - asn1crypto
notes:
  - The PKCS#11 module runs on the managed host, so the token and python-pkcs11 must be there, with Python 3.10 or newer.
"""

    DOCUMENTATION = r"""
options:
  token_label:
    description:
      - Label of the token to work on. Mutually exclusive with O(token_serial).
      - When neither O(token_label) nor O(token_serial) is given, the only initialised token is used; more than one
        is an error that lists them. A label or serial that matches no token is an error that lists the tokens present.
    type: str
  token_serial:
    description:
      - Serial number of the token to work on, as the token reports it (see M(tokenfleet.pki.token_info)).
      - Mutually exclusive with O(token_label).
    type: str
  user_pin:
    description:
      - The user PIN. It is never logged or returned.
      - A wrong PIN is tried once and never retried, so that a real token does not lock itself.
      - If not set, the value of the E(PKCS11_USER_PIN) environment variable is used (for AWX credential types).
    type: str
"""

    ATTRIBUTES = r"""
options: {}
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying the token.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
  action_group:
    description:
      - Use C(group/tokenfleet.pki.pki) in C(module_defaults) to set defaults for this module.
      - Ansible refuses an option a module does not have, also from C(module_defaults), so a group default must be
        an option of every module the play runs (C(pkcs11_module) and C(user_pin) are, except in scep_ca_info).
    support: full
    membership:
      - tokenfleet.pki.pki
"""
