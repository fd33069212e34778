# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Make ``ansible_collections.tokenfleet.pki`` importable for plain pytest.

The collection is reached through ``.tmp/collections/ansible_collections/tokenfleet/pki``
(a symlink to the repository root that ``make deps`` creates; created here if missing).
That collection root goes first on sys.path, where ``ansible_collections`` is found as
a namespace package, and into ANSIBLE_COLLECTIONS_PATH for ansible's own collection loader.
"""

from __future__ import annotations

import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COLLECTIONS_ROOT = os.path.join(REPO_ROOT, '.tmp', 'collections')
COLLECTION_LINK = os.path.join(COLLECTIONS_ROOT, 'ansible_collections', 'tokenfleet', 'pki')


def _ensure_collection_link() -> None:
    if os.path.lexists(COLLECTION_LINK):
        if os.path.realpath(COLLECTION_LINK) != os.path.realpath(REPO_ROOT):
            raise RuntimeError('%s exists but does not point to %s' % (COLLECTION_LINK, REPO_ROOT))
        return
    os.makedirs(os.path.dirname(COLLECTION_LINK), exist_ok=True)
    os.symlink(os.path.join('..', '..', '..', '..'), COLLECTION_LINK)


_ensure_collection_link()
if COLLECTIONS_ROOT not in sys.path:
    sys.path.insert(0, COLLECTIONS_ROOT)
_paths = [path for path in os.environ.get('ANSIBLE_COLLECTIONS_PATH', '').split(os.pathsep) if path]
if COLLECTIONS_ROOT not in _paths:
    os.environ['ANSIBLE_COLLECTIONS_PATH'] = os.pathsep.join([COLLECTIONS_ROOT] + _paths)
