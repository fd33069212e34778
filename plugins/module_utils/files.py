# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Atomic file writes with mode and owner, private to the collection."""

from __future__ import annotations

import os
import re
import tempfile

from ansible_collections.tokenfleet.pki.plugins.module_utils.common import PkiError


class FileError(PkiError):
    """A file problem whose message is safe to show."""


def read_file(path, option):
    """The bytes of a file on the managed host; a clear error names the option otherwise."""
    try:
        with open(path, 'rb') as handle:
            return handle.read()
    except FileNotFoundError:
        raise FileError('%s %s does not exist' % (option, path))
    except IsADirectoryError:
        raise FileError('%s %s is a directory, not a file' % (option, path))
    except OSError as exc:
        raise FileError('%s %s cannot be read: %s' % (option, path, exc.strerror or exc))


def check_destination(path, option):
    """A file the module writes: its directory must exist and the path must not be a directory."""
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise FileError('the directory of %s (%s) does not exist' % (option, parent))
    if os.path.isdir(path):
        raise FileError('%s %s is a directory, not a file' % (option, path))


def staged_prefix(path):
    """Temp files of ``path`` are ``.tokenfleet-<basename>-<8 random characters>`` in its directory."""
    return '.tokenfleet-%s-' % os.path.basename(path)


def fsync_directory(path):
    """Make a rename in the directory of ``path`` durable (a power cut after it cannot undo it)."""
    fd = os.open(os.path.dirname(os.path.abspath(path)) or '.', os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_LEGACY_STAGED = re.compile(r'\.tokenfleet-[a-z0-9_]{8}\Z')


def remove_leftovers(path):
    """Remove the temp files a killed run left for ``path`` (see staged_prefix); the names removed.

    Only names mkstemp makes for exactly this destination match, so another file's temp files are never touched;
    so do the unnamed ones (``.tokenfleet-<8 characters>``) that versions before the named ones left in that directory.
    """
    directory = os.path.dirname(os.path.abspath(path))
    pattern = re.compile(re.escape(staged_prefix(path)) + r'[a-z0-9_]{8}\Z')
    removed = []
    for name in os.listdir(directory):
        if pattern.match(name) or _LEGACY_STAGED.match(name):
            try:
                os.unlink(os.path.join(directory, name))
            except FileNotFoundError:  # removed meanwhile by another run
                continue
            removed.append(name)
    return removed


def remove_file(path):
    """Remove ``path`` if it exists; True when it did."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    fsync_directory(path)
    return True


class StagedFile(object):
    """Content written next to its destination but not yet in place.

    ``commit()`` moves it over the destination atomically; ``discard()`` removes it.
    Staging first lets a caller write a secret (a new PIN) before the change it records,
    so that the secret is never only on the token. A staged file that a killed run left behind
    is found again by remove_leftovers().
    """

    def __init__(self, module, path, content, default_mode=0o600, file_args=None):
        self.module = module
        self.path = os.path.abspath(path)
        check_destination(self.path, 'the file')
        fd, self.tmp_path = tempfile.mkstemp(prefix=staged_prefix(self.path), dir=os.path.dirname(self.path))
        module.add_cleanup_file(self.tmp_path)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, content if isinstance(content, bytes) else content.encode('utf-8'))
            os.fsync(fd)
        finally:
            os.close(fd)
        if file_args is None:  # the module's own mode/owner/group options apply
            file_args = module.load_file_common_arguments(module.params, path=self.path)
        self.file_args = dict(file_args, path=self.path)
        if self.file_args.get('mode') is None:
            self.file_args['mode'] = default_mode

    def commit(self):
        """Rename the 0600 staged file over the destination, then apply the wanted mode and owner.

        A plain rename within one directory is atomic and keeps the staged file's 0600, so a key is
        never readable by others, not even for a moment (atomic_move would give a new file 0644 first).
        """
        os.replace(self.tmp_path, self.path)
        fsync_directory(self.path)
        self.module.set_fs_attributes_if_different(self.file_args, False)

    def discard(self):
        if os.path.exists(self.tmp_path):
            os.unlink(self.tmp_path)


def write_file(module, path, content, default_mode=0o600, file_args=None):
    StagedFile(module, path, content, default_mode, file_args).commit()


def private_file_args(module, path):
    """File arguments for files only the module's user may read (keys, state), whatever the task's mode says."""
    return module.load_file_common_arguments(dict(mode=0o600), path=path)


def apply_file_attributes(module, path, changed, default_mode):
    """Apply the task's mode/owner/group to ``path`` (or predict it in check mode); True when anything changed."""
    file_args = module.load_file_common_arguments(module.params, path=path)
    if file_args.get('mode') is None:
        file_args['mode'] = default_mode
    if module.check_file_absent_if_check_mode(path):
        return True
    return module.set_fs_attributes_if_different(file_args, changed)


def ensure_content(module, path, content, default_mode):
    """Make ``path`` hold exactly ``content`` with the task's file attributes; True when anything changed."""
    current = read_file(path, 'the file') if os.path.exists(path) else None
    changed = current != content
    if changed and not module.check_mode:
        write_file(module, path, content, default_mode)
    return apply_file_attributes(module, path, changed, default_mode)
