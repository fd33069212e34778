# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The error every backend raises and the one way a module runs its backend. Private to the collection."""

from __future__ import annotations


class PkiError(Exception):
    """A failure whose message is safe to show: it names the option or object, never a secret."""


def run_backend(module, backend_class):
    """Run ``backend_class(module).run()`` and exit with its result, or fail with the backend's message."""
    try:
        result = backend_class(module).run()
    except PkiError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(**result)
