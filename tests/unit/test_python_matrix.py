# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Unit tests of the Python matrix of make sanity and make units (tests/utils/pythons.py, run_sanity.py, run_units.py).

The interpreters here are shell scripts that answer the finder's probe the way a Python would
(or fail the way a pyenv shim does), under versions no machine has (3.98, 3.99), so the
interpreter running the tests is never one of the candidates.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest

from ansible_test._internal import junit_xml

UTILS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'utils')


def load_util(name):
    if UTILS_DIR not in sys.path:
        sys.path.insert(0, UTILS_DIR)
    spec = importlib.util.spec_from_file_location('tokenfleet_test_' + name, os.path.join(UTILS_DIR, name + '.py'))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up in sys.modules
    spec.loader.exec_module(module)
    return module


pythons = load_util('pythons')
run_sanity = load_util('run_sanity')
run_units = load_util('run_units')

SHIM = '''#!/bin/sh
echo "pyenv: ${0##*/}: command not found" >&2
exit 127
'''
FAKE_PYTHON = '''#!/bin/sh
echo '{"version": "%s", "executable": "'"$0"'"}'
'''


def write_script(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w', encoding='utf-8') as script:
        script.write(text)
    os.chmod(path, 0o755)
    return path


def test_versions_are_those_tests_config_declares_for_modules():
    versions = pythons.module_python_versions()
    assert versions[0] == '3.10'
    assert list(versions) == sorted(versions, key=lambda version: tuple(int(part) for part in version.split('.')))
    assert '3.11' in versions


def test_a_failing_shim_is_passed_over_for_the_newest_pyenv_release(tmp_path):
    shims = tmp_path / 'shims'
    pyenv = tmp_path / 'pyenv'
    write_script(str(shims / 'python3.99'), SHIM)
    write_script(str(pyenv / 'versions' / '3.99.2' / 'bin' / 'python3.99'), FAKE_PYTHON % '3.99.2')
    newest = write_script(str(pyenv / 'versions' / '3.99.10' / 'bin' / 'python3.99'), FAKE_PYTHON % '3.99.10')
    write_script(str(pyenv / 'versions' / '3.99.11t' / 'bin' / 'python3.99'), FAKE_PYTHON % '3.99.11')
    environ = {'PATH': str(shims), 'PYENV_ROOT': str(pyenv), 'HOME': str(tmp_path)}

    found, missing = pythons.find_pythons(('3.99',), environ)

    assert found == [pythons.Python(version='3.99', full_version='3.99.10', path=newest)]
    assert missing == []
    assert pythons.describe(found, missing) == ['Python 3.99: %s (3.99.10)' % newest]


def test_a_version_without_a_working_interpreter_is_named_with_why(tmp_path):
    shims = tmp_path / 'shims'
    shim = write_script(str(shims / 'python3.99'), SHIM)
    wrong = write_script(str(tmp_path / 'bin' / 'python3.98'), FAKE_PYTHON % '3.97.1')
    environ = {'PATH': os.pathsep.join([str(shims), str(tmp_path / 'bin')]), 'PYENV_ROOT': str(tmp_path / 'none'),
               'HOME': str(tmp_path)}

    found, missing = pythons.find_pythons(('3.98', '3.99', '3.97'), environ)

    assert found == []
    assert missing == [
        pythons.Missing('3.98', '%s is Python 3.97.1' % wrong),
        pythons.Missing('3.99', '%s exited with 127 (pyenv: python3.99: command not found)' % shim),
        pythons.Missing('3.97', 'no python3.97 on PATH or under pyenv'),
    ]
    assert pythons.describe(found, missing)[1] == (
        'Python 3.99: not found (%s exited with 127 (pyenv: python3.99: command not found))' % shim)


def write_junit(junit_dir, test, version, skipped=None, failed=False):
    case = junit_xml.TestCase(classname='sanity', name='%s-python-%s' % (test, version), skipped=skipped,
                              failures=[junit_xml.TestFailure(message='boom')] if failed else [])
    suites = junit_xml.TestSuites(suites=[junit_xml.TestSuite(name='ansible-test', cases=[case])])
    os.makedirs(junit_dir, exist_ok=True)
    path = os.path.join(junit_dir, 'ansible-test-sanity-%s-python-%s.xml' % (test, version))
    with open(path, 'w', encoding='utf-8') as junit_file:
        junit_file.write(suites.to_pretty_xml())


FOUND = [pythons.Python('3.98', '3.98.1', '/opt/python3.98'), pythons.Python('3.99', '3.99.0', '/opt/python3.99')]
MISSING = [pythons.Missing('3.97', 'no python3.97 on PATH or under pyenv')]


def test_sanity_summary_names_the_pythons_each_test_ran_on(tmp_path):
    junit_dir = str(tmp_path)
    for test in ('compile', 'import'):
        write_junit(junit_dir, test, '3.98')
    write_junit(junit_dir, 'compile', '3.99')
    write_junit(junit_dir, 'import', '3.99', failed=True)

    lines, complete = run_sanity.summarize(junit_dir, ('compile', 'import'), FOUND, MISSING, strict=True)

    assert lines == [
        'compile ran on Python 3.98 (passed), 3.99 (passed)',
        'import ran on Python 3.98 (passed), 3.99 (failed)',
        'not found, so not tested: Python 3.97',
    ]
    assert complete is True


@pytest.mark.parametrize('skipped, strict, complete', [
    ('Skipping sanity test "import" on Python 3.99 due to missing virtual environment support.', False, False),
    ('No tests applicable.', True, False),
    ('No tests applicable.', False, True),
    (None, False, False),
])
def test_sanity_summary_fails_when_a_test_did_not_run_on_a_python_found(tmp_path, skipped, strict, complete):
    junit_dir = str(tmp_path)
    write_junit(junit_dir, 'import', '3.98')
    if skipped:
        write_junit(junit_dir, 'import', '3.99', skipped=skipped)

    lines, result = run_sanity.summarize(junit_dir, ('import',), FOUND, [], strict=strict)

    detail = 'skipped: %s' % skipped if skipped else 'missing: no result'
    assert lines == ['import ran on Python 3.98 (passed); did not run on Python 3.99 (%s)' % detail]
    assert result is complete


@pytest.mark.parametrize('arguments, selected', [
    ([], ('compile', 'import')),
    (['--test', 'validate-modules'], ()),
    (['--test', 'import', '--test=pep8'], ('import',)),
    (['--skip-test', 'compile', 'plugins/modules/csr.py'], ('import',)),
    (['--list-tests'], ()),
])
def test_sanity_checks_only_the_multi_version_tests_selected(arguments, selected):
    assert run_sanity.selected_tests(arguments) == selected


def test_sanity_runs_the_controller_in_place_and_each_python_found_as_a_target():
    command = run_sanity.ansible_test_command('/venv/bin/ansible-test', FOUND, ['--test', 'import'])

    assert command == [
        '/venv/bin/ansible-test', 'sanity', '--requirements', '--junit',
        '--controller', 'origin:python=%d.%d@%s' % (sys.version_info[0], sys.version_info[1], sys.executable),
        '--target-python', '3.98@/opt/python3.98', '--target-python', '3.99@/opt/python3.99',
        '--test', 'import',
    ]


def test_ansible_test_finds_the_pythons_found_on_its_path(tmp_path):
    bin_dir = str(tmp_path / 'bin')

    run_sanity.link_pythons(bin_dir, FOUND)

    assert sorted(os.listdir(bin_dir)) == ['python3.98', 'python3.99']
    assert os.readlink(os.path.join(bin_dir, 'python3.99')) == '/opt/python3.99'


def test_a_unit_venv_is_remade_when_a_requirements_file_or_the_interpreter_changes(tmp_path):
    repo = tmp_path / 'repo'
    (repo / 'tests').mkdir(parents=True)
    (repo / 'requirements.txt').write_text('cryptography\n')
    (repo / 'tests' / 'requirements.txt').write_text('pytest>=7.0\n')
    venv = tmp_path / 'venv'
    write_script(str(venv / 'bin' / 'python'), FAKE_PYTHON % '3.99.0')
    python = FOUND[1]
    stamp = run_units.requirements_stamp(python, str(repo))
    (venv / run_units.STAMP).write_text(stamp + '\n')

    assert run_units.venv_is_current(str(venv), stamp) is True

    (repo / 'tests' / 'requirements.txt').write_text('pytest>=8.0\n')
    assert run_units.venv_is_current(str(venv), run_units.requirements_stamp(python, str(repo))) is False

    (repo / 'tests' / 'requirements.txt').write_text('pytest>=7.0\n')
    assert run_units.requirements_stamp(python, str(repo)) == stamp
    upgraded = pythons.Python('3.99', '3.99.1', python.path)
    assert run_units.venv_is_current(str(venv), run_units.requirements_stamp(upgraded, str(repo))) is False


def test_a_unit_venv_is_kept_when_the_same_interpreter_is_reached_by_another_path(tmp_path):
    repo = tmp_path / 'repo'
    (repo / 'tests').mkdir(parents=True)
    (repo / 'requirements.txt').write_text('cryptography\n')
    (repo / 'tests' / 'requirements.txt').write_text('pytest>=7.0\n')
    real = write_script(str(tmp_path / 'pyenv' / 'versions' / '3.99.0' / 'bin' / 'python3.99'), FAKE_PYTHON % '3.99.0')
    link = str(tmp_path / 'python3.99')
    os.symlink(real, link)

    stamp = run_units.requirements_stamp(pythons.Python('3.99', '3.99.0', real), str(repo))

    assert run_units.requirements_stamp(pythons.Python('3.99', '3.99.0', link), str(repo)) == stamp
