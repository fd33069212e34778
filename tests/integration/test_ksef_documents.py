# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The official KSeF documents the test double checks against are in the repository, as SOURCE.txt says."""

from __future__ import annotations

import hashlib
import os
import re
import sys

from harness import REPO_ROOT

sys.path.insert(0, os.path.join(REPO_ROOT, 'tests', 'fakes'))
import ksef_api  # noqa: E402  pylint: disable=wrong-import-position,import-error

DOCUMENTS = os.path.join(REPO_ROOT, 'tests', 'fakes', 'ksef')


def git_blob(path):
    with open(path, 'rb') as handle:
        data = handle.read()
    return hashlib.sha1(b'blob %d\0' % len(data) + data).hexdigest()


def test_the_documents_are_in_the_repository_byte_for_byte_as_sourced():
    with open(os.path.join(DOCUMENTS, 'SOURCE.txt'), encoding='utf-8') as handle:
        source = handle.read()
    assert 'CIRFMF/ksef-docs' in source and 'd92d285b928896258afdb27f7150f9127ee18ada' in source
    assert 'MIT License' in source and 'Ministerstwo Finansów' in source
    blobs = re.findall(r'^\d\. (\S+)\n.*?Git blob:\s+([0-9a-f]{40})', source, re.M | re.S)
    assert [name for name, dummy in blobs] == ['open-api.json', 'schemat_auth_v2-0.xsd', 'schemat_auth_v2-1.xsd']
    for name, blob in blobs:
        assert git_blob(os.path.join(DOCUMENTS, name)) == blob, name
    with open(os.path.join(DOCUMENTS, 'open-api.json'), 'rb') as handle:
        assert hashlib.sha256(handle.read()).hexdigest() in source


def test_the_fake_reads_the_documents_from_the_repository(monkeypatch):
    monkeypatch.delenv('KSEF_SPEC_DIR', raising=False)
    assert os.path.realpath(ksef_api.DEFAULT_SPEC_DIR) == os.path.realpath(DOCUMENTS)
    spec = ksef_api.Spec.load(DOCUMENTS)
    assert spec.base_path == '/v2' and 'InvoiceRead' in spec.permissions
