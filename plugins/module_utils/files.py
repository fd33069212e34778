# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""File writes the way community.crypto makes them (module.atomic_move), with mode and owner, private to the collection.

Every file a module writes is staged (mode 0600) beside its destination and put in place by ``module.atomic_move``,
so that ``unsafe_writes`` and SELinux contexts work; see place() for how its content is never visible with more
access than 0600 or the mode the task wants, not even for an instant.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
import time

from ansible_collections.tokenfleet.pki.plugins.module_utils.common import PkiError

# A destination atomic_move creates gets 0666 & ~umask after the rename: with this umask that is 0600.
_PRIVATE_UMASK = 0o177
# The errors for which atomic_move falls back to a copy (and, with unsafe_writes, to writing the file in place).
_NOT_RENAMEABLE = (errno.EPERM, errno.EXDEV, errno.EACCES, errno.ETXTBSY, errno.EBUSY)


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


def unsafe_writes(module):
    """The task's ``unsafe_writes`` (ansible.builtin.files); false for a module without file options."""
    return bool(module.params.get('unsafe_writes'))


def _mount_points():
    """Mount points of this process (Linux /proc/self/mountinfo, octal escapes decoded); empty elsewhere."""
    try:
        with open('/proc/self/mountinfo', 'rb') as handle:
            lines = handle.read().decode('utf-8', 'surrogateescape').splitlines()
    except OSError:
        return set()
    return set(re.sub(r'\\([0-7]{3})', lambda match: chr(int(match.group(1), 8)), line.split(' ')[4])
               for line in lines if len(line.split(' ')) > 4)


def check_destination(path, option, module=None):
    """A file the module writes: its directory must exist and the path must not be a directory.

    With ``module``, a destination that is a mount point of its own (a bind-mounted file, as containers use), which
    no rename can replace, is refused unless the task sets ``unsafe_writes``: before anything changes.
    """
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise FileError('the directory of %s (%s) does not exist' % (option, parent))
    if os.path.isdir(path):
        raise FileError('%s %s is a directory, not a file' % (option, path))
    if module is not None and not unsafe_writes(module) and os.path.exists(path) \
            and os.path.realpath(path) in _mount_points():
        raise FileError('%s %s is a mount point (a bind-mounted file), which a rename cannot replace; set '
                        'unsafe_writes=true to have it written in place (not atomically)' % (option, path))


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
    """Remove the temp files a killed run left for ``path``; the names removed.

    Those are ours (see staged_prefix) and atomic_move's (``.ansible_tmp<8 characters><basename>``, made when a
    rename fails and it copies instead). Only names mkstemp makes for exactly this destination match, so another
    file's temp files are never touched; so do the unnamed ones (``.tokenfleet-<8 characters>``) that versions
    before the named ones left in that directory.
    """
    directory = os.path.dirname(os.path.abspath(path))
    basename = re.escape(os.path.basename(path))
    patterns = (re.compile(re.escape(staged_prefix(path)) + r'[a-z0-9_]{8}\Z'),
                re.compile(r'\.ansible_tmp[a-z0-9_]{8}' + basename + r'\Z'), _LEGACY_STAGED)
    removed = []
    for name in os.listdir(directory):
        if any(pattern.match(name) for pattern in patterns):
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


def stage(path, content, mode=0o600):
    """A temp file (see staged_prefix) beside ``path`` holding ``content``, on disk; its name.

    The mode is set before any content is written, so the content is never visible with another mode. For writers
    without a module (the fleet report's action plugin) as well as for modules (see _stage()).
    """
    fd, tmp_path = tempfile.mkstemp(prefix=staged_prefix(path), dir=os.path.dirname(os.path.abspath(path)))
    try:
        with os.fdopen(fd, 'wb') as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(content if isinstance(content, bytes) else content.encode('utf-8'))
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        os.unlink(tmp_path)
        raise
    return tmp_path


def _stage(module, path, content):
    """stage() at mode 0600, removed by the module when it exits (also when it fails)."""
    tmp_path = stage(path, content)
    module.add_cleanup_file(tmp_path)
    return tmp_path


def backup_file(module, path):
    """A copy of ``path`` named as module.backup_local names it (``<path>.<pid>.<date>@<time>~``); its name.

    Not made by backup_local: its shutil.copy2 creates the copy with the umask's mode and gives it the original's
    mode only after the content, so the copy of a key or PIN file would be readable by others for that moment.
    Here the copy is staged 0600, then gets the original's owner, mode and extended attributes, then its name.
    """
    name = '%s.%s.%s' % (path, os.getpid(), time.strftime('%Y-%m-%d@%H:%M:%S~', time.localtime()))
    tmp_path = _stage(module, path, read_file(path, 'the file to back up'))
    original = os.stat(path)
    try:
        os.chown(tmp_path, original.st_uid, original.st_gid)
    except PermissionError:  # not root: the copy stays the user's, as backup_local's would
        pass
    shutil.copystat(path, tmp_path)
    os.rename(tmp_path, name)
    fsync_directory(name)
    return name


def place(module, src, path, file_args):
    """Move ``src`` (a 0600 file beside ``path``) over ``path`` with module.atomic_move, then apply ``file_args``.

    atomic_move keeps what an existing destination has (owner, group, mode, SELinux context) by copying it onto
    ``src`` before the rename, and gives a destination it creates ``0666 & ~umask`` after the rename. So an
    existing destination gets the wanted attributes first (the old content carries them for a moment, never the
    new content the old ones), and the umask is 0177 during the move, so that a new file appears as 0600; then the
    wanted owner, group and mode are set, in that order. ``unsafe_writes`` lets atomic_move write a destination
    that cannot be renamed over (a bind-mounted file) in place.
    """
    file_args = dict(file_args, path=path)
    if os.path.exists(path):
        module.set_fs_attributes_if_different(file_args, False)
    umask = os.umask(_PRIVATE_UMASK)
    try:
        module.atomic_move(src, path, unsafe_writes=unsafe_writes(module))
    except Exception as exc:  # ansible-core 2.19 raises; earlier versions fail the module with their own message
        cause = exc.__cause__ if isinstance(exc.__cause__, OSError) else exc
        hint = ''
        if isinstance(cause, OSError) and cause.errno in _NOT_RENAMEABLE and not unsafe_writes(module):
            hint = ('; a rename cannot replace it (a bind-mounted file?): set unsafe_writes=true to have it written '
                    'in place (not atomically)')
        raise FileError('%s could not be replaced: %s%s' % (path, getattr(cause, 'strerror', None) or cause, hint))
    finally:
        os.umask(umask)
    fsync_directory(path)
    module.set_fs_attributes_if_different(file_args, False)


class StagedFile(object):
    """Content written next to its destination but not yet in place.

    ``commit()`` moves it over the destination (see place()); ``discard()`` removes it.
    Staging first lets a caller write a secret (a new PIN) before the change it records,
    so that the secret is never only on the token. A staged file that a killed run left behind
    is found again by remove_leftovers(). With a dict ``backups``, commit() first copies the file it replaces
    (see backup_file()) and records ``backups[path] = <the copy's name>``.
    """

    def __init__(self, module, path, content, default_mode=0o600, file_args=None, backups=None):
        self.module = module
        self.path = os.path.abspath(path)
        self.backups = backups
        check_destination(self.path, 'the file')
        self.tmp_path = _stage(module, self.path, content)
        if file_args is None:  # the module's own mode/owner/group options apply
            file_args = module.load_file_common_arguments(module.params, path=self.path)
        self.file_args = dict(file_args, path=self.path)
        if self.file_args.get('mode') is None:
            self.file_args['mode'] = default_mode

    def commit(self):
        if self.backups is not None and os.path.exists(self.path):
            self.backups[self.path] = backup_file(self.module, self.path)
        place(self.module, self.tmp_path, self.path, self.file_args)

    def discard(self):
        if os.path.exists(self.tmp_path):
            os.unlink(self.tmp_path)


def write_file(module, path, content, default_mode=0o600, file_args=None, backups=None):
    StagedFile(module, path, content, default_mode, file_args, backups).commit()


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


def ensure_content(module, path, content, default_mode, backups=None):
    """Make ``path`` hold exactly ``content`` with the task's file attributes; True when anything changed.

    ``backups``: see StagedFile.
    """
    current = read_file(path, 'the file') if os.path.exists(path) else None
    changed = current != content
    if changed and not module.check_mode:
        write_file(module, path, content, default_mode, backups=backups)
    return apply_file_attributes(module, path, changed, default_mode)


def backup_argument_spec():
    """The ``backup`` option of every module that replaces a file (documented by the tokenfleet.pki.files fragment)."""
    return dict(backup=dict(type='bool', default=False))
