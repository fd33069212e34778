# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""AWX / Automation Platform: the execution environment metadata and the credential types (docs/awx.md).

The EE test builds the collection, runs ``ansible-builder create`` (no container engine) on the
definition documented in docs/awx.md with the built tarball as its galaxy requirement, and then
replays the two build steps that read the collection's dependencies, reading them from the
generated Containerfile: the galaxy stage's ``ansible-galaxy collection install`` and the builder
stage's ``introspect.py``, with the scripts from the build context. What introspect writes is what
the image build installs with pip and bindep.
"""

from __future__ import annotations

import functools
import glob
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile

import pytest
import yaml
from bindep.depends import Depends

from harness import REPO_ROOT, ansible_env, venv_tool

EE_META_FILES = ('meta/execution-environment.yml', 'meta/ee-requirements.txt', 'meta/ee-bindep.txt')
EE_PYTHON = {'python-pkcs11', 'cryptography', 'asn1crypto', 'signxml', 'lxml'}
# requirements.txt entries an EE does not take from the collection: the base image brings ansible-core (and jinja2 with it).
NOT_EE_PYTHON = {'ansible-core', 'jinja2'}
# bindep platform profiles of the RPM-based images ansible-builder supports, and of Debian
RPM_PLATFORM = ['platform:rpm', 'platform:redhat', 'platform:fedora', 'platform:centos', 'platform:rhel']
DPKG_PLATFORM = ['platform:dpkg', 'platform:debian', 'platform:ubuntu']

AWX_DIR = os.path.join(REPO_ROOT, 'extensions', 'awx')
# credential type file -> the environment variables it injects
CREDENTIAL_TYPES = {
    'pkcs11_token.yml': {'PKCS11_MODULE', 'PKCS11_USER_PIN', 'PKCS11_SO_PIN'},
    'scep_challenge.yml': {'SCEP_CHALLENGE_PASSWORD'},
    'ksef_token.yml': {'KSEF_TOKEN'},
    'device_pkcs12.yml': {'DEVICE_PKCS12_PASSPHRASE'},
}
# Variables the modules read that no credential type here injects (token_cert's .p12 password, see docs/awx.md).
NOT_INJECTED = {'PKCS12_PASSPHRASE'}
SECRET_WORDS = re.compile(r'PIN|PASSWORD|PASSPHRASE|TOKEN|SECRET', re.IGNORECASE)
ENV_FALLBACK = re.compile(r'env_fallback,\s*\[([^\]]*)\]')
ENV_LOOKUP = re.compile(r"lookup\('ansible\.builtin\.env', '(\w+)'\)")
TEMPLATE = re.compile(r'^\{\{\s*(\w+)\s*\}\}$')
COMMAND_TIMEOUT = 300


def run(args: list[str], cwd: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    completed = subprocess.run(args, cwd=cwd, env=env or ansible_env(), capture_output=True, text=True, check=False,
                               timeout=COMMAND_TIMEOUT)
    assert completed.returncode == 0, '%s failed (%d):\n%s\n%s' % (' '.join(args), completed.returncode,
                                                                   completed.stdout, completed.stderr)
    return completed


def read(path: str) -> str:
    with open(path, encoding='utf-8') as handle:
        return handle.read()


def requirement_names(text: str) -> dict[str, str]:
    """Project name (lower case) -> requirement line, for a pip requirements text (comments dropped)."""
    names = {}
    for line in text.splitlines():
        line = line.split('#', 1)[0].strip()
        if line:
            names[re.split(r'[\s<>=!~;\[]', line, maxsplit=1)[0].lower()] = line
    return names


@functools.lru_cache(maxsize=None)
def parse_bindep(text: str) -> Depends:
    return Depends(text)  # bindep builds its parser for every file: more than half a second


def bindep_packages(text: str, profiles: list[str]) -> set[str]:
    """Packages bindep selects from a bindep text for these profiles (platform and user)."""
    return {rule[0] for rule in parse_bindep(text).active_rules(profiles)}


def documented_ee_definition() -> dict:
    """The execution-environment.yml shown in docs/awx.md (its first top-level yaml block with version 3)."""
    for block in re.findall(r'^```yaml\n(.*?)^```', read(os.path.join(REPO_ROOT, 'docs', 'awx.md')), re.M | re.S):
        definition = yaml.safe_load(block)
        if isinstance(definition, dict) and definition.get('version') == 3:
            return definition
    raise AssertionError('docs/awx.md shows no execution-environment.yml (a yaml block with version: 3)')


def containerfile_stages(text: str) -> dict[str, list[str]]:
    """Stage name -> its instructions (one logical line each), from a Containerfile written by ansible-builder."""
    stages: dict[str, list[str]] = {}
    current = None
    for line in text.replace('\\\n', ' ').splitlines():
        match = re.match(r'FROM\s+\S+\s+AS\s+(\w+)', line, re.I)
        if match:
            current = stages.setdefault(match.group(1), [])
        elif current is not None and line.strip():
            current.append(line.strip())
    return stages


def single(instructions: list[str], pattern: str) -> str:
    matches = [line for line in instructions if re.search(pattern, line)]
    assert len(matches) == 1, 'expected one instruction matching %r, got %r' % (pattern, matches)
    return matches[0]


@pytest.fixture(scope='module')
def collection_tarball(tmp_path_factory) -> str:
    """The collection built from this checkout by ansible-galaxy (build_ignore applies)."""
    out = str(tmp_path_factory.mktemp('collection'))
    run([venv_tool('ansible-galaxy'), 'collection', 'build', '--output-path', out, REPO_ROOT], cwd=out)
    tarballs = glob.glob(os.path.join(out, 'tokenfleet-pki-*.tar.gz'))
    assert len(tarballs) == 1, tarballs
    return tarballs[0]


# ---------------------------------------------------------------------------------------------
# Execution environment


def test_ee_metadata_points_at_the_requirement_files():
    definition = yaml.safe_load(read(os.path.join(REPO_ROOT, 'meta', 'execution-environment.yml')))
    assert definition == {'version': 1, 'dependencies': {'python': 'meta/ee-requirements.txt', 'system': 'meta/ee-bindep.txt'}}


def test_ee_python_requirements_are_the_collections_without_upper_bounds():
    ee = requirement_names(read(os.path.join(REPO_ROOT, 'meta', 'ee-requirements.txt')))
    collection = requirement_names(read(os.path.join(REPO_ROOT, 'requirements.txt')))
    assert set(ee) == EE_PYTHON
    # everything the modules need, nothing ansible-core brings (certification rules: no ansible, no pins or caps)
    assert set(ee) == set(collection) - NOT_EE_PYTHON
    assert not {'ansible', 'ansible-core'} & set(ee)
    for line in ee.values():
        assert not re.search(r'<|==|~=', line), 'no upper bounds or pins in meta/ee-requirements.txt: %s' % line


def test_ee_bindep_profiles():
    text = read(os.path.join(REPO_ROOT, 'meta', 'ee-bindep.txt'))
    # what ansible-builder's assemble installs: the default profile into the image, "compile" in the builder stage only
    assert bindep_packages(text, ['default'] + RPM_PLATFORM) == {'opensc', 'openssl'}
    assert bindep_packages(text, ['compile'] + RPM_PLATFORM) == {'opensc', 'openssl', 'gcc', 'python3-devel', 'redhat-rpm-config'}
    assert bindep_packages(text, ['demo'] + RPM_PLATFORM) == {'opensc', 'openssl', 'softhsm'}
    assert bindep_packages(text, ['compile', 'platform:rpm', 'platform:suse']) == {'opensc', 'openssl', 'gcc', 'python3-devel'}
    assert bindep_packages(text, ['default'] + DPKG_PLATFORM) == {'opensc', 'openssl'}
    assert bindep_packages(text, ['compile'] + DPKG_PLATFORM) == {'opensc', 'openssl', 'gcc', 'python3-dev'}
    assert bindep_packages(text, ['demo'] + DPKG_PLATFORM) == {'opensc', 'openssl', 'softhsm2'}


def test_collection_tarball_carries_the_ee_metadata(collection_tarball):
    """galaxy.yml's build_ignore must not drop the files ansible-builder reads from the installed collection."""
    with tarfile.open(collection_tarball) as tarball:
        members = set(tarball.getnames())
        for path in EE_META_FILES:
            assert path in members, '%s is missing from the built collection (build_ignore in galaxy.yml?)' % path
            assert tarball.extractfile(path).read().decode('utf-8') == read(os.path.join(REPO_ROOT, path))


def test_ansible_builder_create_with_the_collection(collection_tarball, tmp_path):
    definition = documented_ee_definition()
    base_image = definition['images']['base_image']['name']
    tarball_name = os.path.basename(collection_tarball)
    shutil.copy(collection_tarball, tmp_path / tarball_name)
    definition['dependencies']['galaxy'] = {'collections': [{'name': 'collections/' + tarball_name, 'type': 'file'}]}
    definition['additional_build_files'] = [{'src': tarball_name, 'dest': 'collections'}]
    (tmp_path / 'execution-environment.yml').write_text(yaml.safe_dump(definition, sort_keys=False), encoding='utf-8')

    run([venv_tool('ansible-builder'), 'create', '--file', 'execution-environment.yml', '--context', 'context',
         '--output-filename', 'Containerfile'], cwd=str(tmp_path))

    context = tmp_path / 'context'
    build = context / '_build'
    containerfile = (context / 'Containerfile').read_text(encoding='utf-8')
    assert 'ARG EE_BASE_IMAGE="%s"' % base_image in containerfile
    assert (build / 'collections' / tarball_name).read_bytes() == open(collection_tarball, 'rb').read()
    assert yaml.safe_load((build / 'requirements.yml').read_text(encoding='utf-8')) == definition['dependencies']['galaxy']
    stages = containerfile_stages(containerfile)
    assert {'galaxy', 'builder', 'final'} <= set(stages), sorted(stages)

    # galaxy stage: "COPY _build /build", "WORKDIR /build", then ansible-galaxy collection install -r requirements.yml
    collections_dir = str(tmp_path / 'usr-share-ansible' / 'collections')
    install = single(stages['galaxy'], r'ansible-galaxy collection install')
    assert 'COPY _build /build' in stages['galaxy'] and 'WORKDIR /build' in stages['galaxy']
    words = shlex.split(install[len('RUN '):])
    # as in the image, where /usr/share/ansible/collections is the only collections path (the test
    # environment's path already holds tokenfleet.pki, which ansible-galaxy would call installed)
    env = ansible_env()
    env['ANSIBLE_COLLECTIONS_PATH'] = collections_dir
    while re.match(r'^[A-Z_]+=', words[0]):
        name, value = words.pop(0).split('=', 1)
        env[name] = value
    assert words[:3] == ['ansible-galaxy', 'collection', 'install']
    words = [venv_tool('ansible-galaxy')] + [word for word in words[1:] if not word.startswith('$')]
    words = [collections_dir if word == '/usr/share/ansible/collections' else word for word in words]
    assert collections_dir in words, install
    run(words, cwd=str(build), env=env)
    installed = os.path.join(collections_dir, 'ansible_collections', 'tokenfleet', 'pki')
    for path in EE_META_FILES:
        assert os.path.isfile(os.path.join(installed, path)), path

    # builder stage: the files it copies from _build, then introspect.py over /usr/share/ansible/collections
    builder_dir = tmp_path / 'builder'
    builder_dir.mkdir()
    for line in stages['builder']:
        match = re.match(r'COPY\s+_build/(\S+)\s+(\S+)$', line)
        if match:
            shutil.copy(build / match.group(1), builder_dir / match.group(2))
    introspect = single(stages['builder'], r'introspect\.py introspect')
    src_dir = tmp_path / 'tmp-src'
    words = shlex.split(introspect[len('RUN '):])
    assert words[:3] == ['$PYCMD', '/output/scripts/introspect.py', 'introspect'], introspect
    words = [sys.executable, str(build / 'scripts' / 'introspect.py')] + [
        word.replace('/tmp/src/', str(src_dir) + '/') for word in words[2:]] + [collections_dir]
    assert any(word.startswith('--write-pip=') for word in words) and any(word.startswith('--write-bindep=') for word in words)
    run(words, cwd=str(builder_dir))

    # what the image build installs: pip requirements ...
    pip_lines = (src_dir / 'requirements.txt').read_text(encoding='utf-8').splitlines()
    ours = requirement_names('\n'.join(line for line in pip_lines if line.endswith('# from collection tokenfleet.pki')))
    assert set(ours) == EE_PYTHON, pip_lines
    assert set(requirement_names('\n'.join(pip_lines))) == EE_PYTHON

    # ... and system packages, selected by bindep as assemble does on the RPM-based image
    bindep_text = (src_dir / 'bindep.txt').read_text(encoding='utf-8')
    assert re.search(r'^opensc\s+# from collection tokenfleet\.pki$', bindep_text, re.M), bindep_text
    user_system = set(definition['dependencies'].get('system', []))
    assert bindep_packages(bindep_text, ['default'] + RPM_PLATFORM) == {'opensc', 'openssl'} | user_system
    assert {'gcc', 'python3-devel', 'redhat-rpm-config'} <= bindep_packages(bindep_text, ['compile'] + RPM_PLATFORM)


# ---------------------------------------------------------------------------------------------
# AWX credential types


def env_fallbacks() -> dict[str, list[str]]:
    """Environment variable -> the source lines that read it: env_fallback in plugins/, env lookups in role defaults."""
    found: dict[str, list[str]] = {}
    for path in sorted(glob.glob(os.path.join(REPO_ROOT, 'plugins', '**', '*.py'), recursive=True)):
        for line in read(path).splitlines():
            for match in ENV_FALLBACK.finditer(line):
                for name in re.findall(r'[\'"](\w+)[\'"]', match.group(1)):
                    found.setdefault(name, []).append(line)
    for path in sorted(glob.glob(os.path.join(REPO_ROOT, 'roles', '*', 'defaults', 'main.yml'))):
        for line in read(path).splitlines():
            for name in ENV_LOOKUP.findall(line):
                found.setdefault(name, []).append(line)
    return found


def load_credential_type(name: str) -> dict:
    return yaml.safe_load(read(os.path.join(AWX_DIR, name)))


def test_the_modules_read_the_expected_variables():
    """A rename in plugins/ or roles/ (or a new environment variable without a credential type) shows up here."""
    read_by_modules = set(env_fallbacks())
    injected = set().union(*CREDENTIAL_TYPES.values())
    assert injected <= read_by_modules, 'injected but read by no module: %s' % sorted(injected - read_by_modules)
    assert read_by_modules - injected == NOT_INJECTED


def test_one_file_per_credential_type():
    assert sorted(name for name in os.listdir(AWX_DIR) if name.endswith(('.yml', '.yaml'))) == sorted(CREDENTIAL_TYPES)
    docs = read(os.path.join(REPO_ROOT, 'docs', 'awx.md'))
    for name in CREDENTIAL_TYPES:
        assert name in docs


@pytest.mark.parametrize('name', sorted(CREDENTIAL_TYPES))
def test_credential_type(name):
    definition = load_credential_type(name)
    assert isinstance(definition['name'], str) and definition['name']
    assert isinstance(definition['description'], str) and definition['description']
    assert definition['kind'] in ('cloud', 'net')  # the kinds AWX accepts for custom types
    assert set(definition) <= {'name', 'description', 'kind', 'inputs', 'injectors'}

    fields = {field['id']: field for field in definition['inputs']['fields']}
    assert len(fields) == len(definition['inputs']['fields']), 'duplicate field ids'
    for field in fields.values():
        assert set(field) <= {'id', 'label', 'type', 'secret', 'help_text', 'multiline', 'format', 'choices', 'default'}
        assert field['type'] in ('string', 'boolean') and field['label']
    assert set(definition['inputs'].get('required', [])) <= set(fields)

    injectors = definition['injectors']
    assert set(injectors) == {'env'}
    env = injectors['env']
    assert set(env) == CREDENTIAL_TYPES[name]
    assert not [var for var in env if var.upper().startswith('ANSIBLE_')]
    read_by = env_fallbacks()
    injected_fields = set()
    for var, template in env.items():
        assert var in read_by, '%s is read by no module (grep env_fallback plugins/)' % var
        match = TEMPLATE.match(template)
        assert match and match.group(1) in fields, '%s: %r is not "{{ <field id> }}"' % (var, template)
        field = fields[match.group(1)]
        injected_fields.add(field['id'])
        # a secret for the module (no_log option, or a PIN/password/token by name) is a secret input in AWX
        secret = any('no_log=True' in line for line in read_by[var]) or bool(SECRET_WORDS.search(var))
        assert field.get('secret', False) is secret, '%s (-> %s): secret should be %s' % (field['id'], var, secret)
    assert injected_fields == set(fields), 'fields that are not injected: %s' % sorted(set(fields) - injected_fields)
    for field in fields.values():
        if SECRET_WORDS.search(field['id']) or SECRET_WORDS.search(field['label']):
            assert field.get('secret') is True, field['id']
