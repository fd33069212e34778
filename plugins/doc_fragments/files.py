# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations


class ModuleDocFragment(object):
    """How the modules that write files write them, and their backup option; used with ansible.builtin.files."""

    DOCUMENTATION = r"""
options:
  backup:
    description:
      - Keep a copy of a file the module replaces (or removes), named like the ones M(ansible.builtin.copy) makes,
        V(<file>.<pid>.<date>@<time>~), in the same directory, with the original's owner, group and mode; its name is
        returned as RV(backup_file). No copy is made when the file does not change.
      - A copy is written like every file here (below), so the copy of a key, PIN or token file is never readable by
        others either.
    type: bool
    default: false
notes:
  - Files are written as community.crypto writes them. The content is staged in a temp file of mode V(0600),
    V(.tokenfleet-<name>-*) beside the destination, and moved over it by C(AnsibleModule.atomic_move), which keeps
    an existing file's SELinux context and, with O(unsafe_writes=true), writes a destination that a rename cannot
    replace (a bind-mounted file) in place. A destination that is a mount point is refused before anything changes
    unless O(unsafe_writes=true).
  - The content is never visible with more access than V(0600) or the mode the task wants, not even for an instant.
    An existing file gets the wanted owner, group and mode before its content is replaced; a new one appears with
    V(0600), whatever the umask, and then gets them.
"""
