# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations


class ModuleDocFragment(object):
    """The signing key: a key on a token (with the token options) or a key file."""

    DOCUMENTATION = r"""
options:
  private_key_path:
    description:
      - A private key file (PEM or DER, PKCS#1, SEC1 or PKCS#8) on the managed host.
      - Give either this or O(key_label)/O(key_id) (a key on a token), not both.
    type: path
  private_key_passphrase:
    description: Passphrase of an encrypted O(private_key_path). It is never logged or returned.
    type: str
  key_label:
    description:
      - Label of the private key on the token (see M(tokenfleet.pki.token_key)). Signing with it needs O(user_pin).
    type: str
  key_id:
    description: Id (CKA_ID, hexadecimal) of the private key on the token, alone or with O(key_label).
    type: str
  so_pin:
    description:
      - Not accepted. Signing with a key is the user's act, so a token key is only used after a user login
        (O(user_pin)); an SO PIN given here, for example through C(module_defaults), is refused with an explanation.
    type: str
"""
