# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""kill -9 around the CA's reply, for scep_enroll rekeys of file and token keys (against micromdm), and for
token_key replace: the next normal run must leave a matching key and certificate, no leftovers, and must not
ask the CA again. The timing comes from tests/fakes/delay_proxy.py, which holds micromdm's PKIOperation reply
and says when it forwards it; ansible-playbook's whole process group is killed at offsets from that moment.

Keys and certificates are checked independently: openssl for files, OpenSC pkcs11-tool for token objects.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from harness import CALLBACK_DIR, REPO_ROOT, module_task, random_pin, token_args, venv_tool

sys.path.insert(0, os.path.join(REPO_ROOT, 'tests', 'fakes'))
from delay_proxy import DelayProxy  # noqa: E402  pylint: disable=wrong-import-position,import-error

OFFSETS = (-0.1, 0.0, 0.01, 0.025, 0.05, 0.1, 0.25)
"""Seconds after the proxy forwards the CA's reply at which the run is killed."""
HOLD = 0.3
REPLY_TIMEOUT = 90


def openssl(*args, data=None):
    completed = subprocess.run(['openssl'] + list(args), input=data, capture_output=True, check=True, timeout=60)
    return completed.stdout


def cert_pubkey(path, inform='PEM'):
    return openssl('x509', '-noout', '-pubkey', '-inform', inform, '-in', str(path))


def key_pubkey(path, passphrase=None):
    return openssl('pkey', '-pubout', '-in', str(path), '-passin', 'pass:' + (passphrase or ''))


def spawn_playbook(runner, tasks, name):
    """ansible-playbook with ``tasks``, in its own process group (so that kill -9 reaches the module too)."""
    playbook = os.path.join(runner.directory, 'killed-%s.yml' % name)
    play = dict(name='killed run', hosts='localhost', connection='local', gather_facts=False,
                vars=dict(ansible_python_interpreter=sys.executable), tasks=tasks)
    with open(playbook, 'w', encoding='utf-8') as output:
        yaml.safe_dump([play], output, sort_keys=False)
    env = dict(runner.env, ANSIBLE_CONFIG=runner.config, ANSIBLE_CALLBACK_PLUGINS=CALLBACK_DIR,
               ANSIBLE_LOCAL_TEMP=os.path.join(runner.directory, 'ansible-local-tmp'),
               ANSIBLE_REMOTE_TEMP=os.path.join(runner.directory, 'ansible-remote-tmp'))
    return subprocess.Popen([venv_tool('ansible-playbook'), '-i', runner.inventory, playbook], cwd=runner.directory,
                            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def descendants(pid):
    """Every process below ``pid`` (from /proc), children first found first."""
    parents = {}
    for entry in os.listdir('/proc'):
        if entry.isdigit():
            try:
                with open('/proc/%s/stat' % entry, encoding='utf-8') as stat:
                    parents[int(entry)] = int(stat.read().rsplit(')', 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        children = [child for child, parent in parents.items() if parent == current]
        found += children
        todo += children
    return found


def kill_tree(process):
    """kill -9 ansible-playbook, its process group and every process below it.

    Ansible's workers call setsid(), so the module runs outside ansible-playbook's process group; the process
    groups of all the descendants are killed too.
    """
    pids = [process.pid] + descendants(process.pid)
    groups = set()
    for pid in pids:
        try:
            groups.add(os.getpgid(pid))
        except ProcessLookupError:
            pass
    for group in groups:
        try:
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait(60)


def kill_at(process, proxy, offset):
    """Kill the run ``offset`` seconds after the proxy forwards the CA's reply."""
    forward_at = proxy.next_reply(REPLY_TIMEOUT)
    assert forward_at is not None, 'the run sent no PKIOperation within %d s' % REPLY_TIMEOUT
    time.sleep(max(0.0, forward_at + offset - time.monotonic()))
    kill_tree(process)


def leftovers(directory):
    return sorted(name for name in os.listdir(directory) if name.startswith('.tokenfleet-') or name.endswith('.new'))


@pytest.fixture
def ca_behind_proxy(micromdm):
    challenge = random_pin(32)
    server = micromdm(challenge=challenge, allowrenew=0)
    proxy = DelayProxy(server.port, hold=HOLD).start()
    yield dict(server=server, proxy=proxy, challenge=challenge)
    proxy.stop()


def scep_args(ca, host, **options):
    args = dict(url=ca['proxy'].url, ca_fingerprint=ca['server'].ca_fingerprint_sha256, challenge_password=ca['challenge'],
                certificate_path=str(host / 'cert.pem'), common_name='ws01.example.com', timeout=60)
    args.update(options)
    return args


def sweep(run_playbook, ca, host, args, check_pair, offsets=OFFSETS):
    """Enroll, then for each offset: a killed rekey, a normal run, the pair checked; returns the outcomes."""
    server, proxy = ca['server'], ca['proxy']
    first = run_playbook([module_task('scep_enroll', 'enroll', args)])
    assert first.result('enroll')['result']['status'] == 'issued', first.output()
    outcomes = {}
    for offset in offsets:
        before = check_pair()
        process = spawn_playbook(run_playbook, [module_task('scep_enroll', 'rekey', dict(args, renew_before=400))],
                                 'offset%d' % int(offset * 1000))
        kill_at(process, proxy, offset)
        asked = server.pkioperation_count()
        run = run_playbook([module_task('scep_enroll', 'normal run', args)])
        record = run.result('normal run')
        assert record['status'] == 'ok', 'offset %+d ms: %s' % (offset * 1000, run.output())
        assert server.pkioperation_count() == asked, 'offset %+d ms: the CA was asked again' % (offset * 1000)
        try:
            after = check_pair()
        except AssertionError as exc:
            raise AssertionError('after the kill at %+d ms and a normal run: %s' % (offset * 1000, exc)) from exc
        issued = x509.load_pem_x509_certificate(server.issued()[-1].pem).public_bytes(serialization.Encoding.PEM).strip()
        if after['certificate'] == before['certificate']:
            outcomes[offset] = 'old pair'
        else:
            assert after['certificate'] == issued, 'offset %+d ms: a certificate the CA did not just issue' % (offset * 1000)
            assert (after['public_key'] != before['public_key']) is bool(args.get('rekey'))
            outcomes[offset] = 'new pair' + (' (completed by the next run)' if record['changed'] else '')
        state = json.loads((host / 'cert.pem.scep.json').read_text())
        assert state.get('swap') is None and state.get('pending') is None, state
    assert outcomes[OFFSETS[0]] == 'old pair'  # killed before the reply was forwarded
    print('outcomes by offset (s):', outcomes)
    return outcomes


@pytest.mark.parametrize('remove_old', [True, False], ids=['remove_old', 'keep_old'])
def test_file_rekey_killed_around_the_reply(ca_behind_proxy, run_playbook, tmp_path, remove_old):
    host = tmp_path / 'host'
    host.mkdir()
    args = scep_args(ca_behind_proxy, host, private_key_path=str(host / 'key.pem'), rekey=True, remove_old=remove_old)

    def check_pair():
        cert = (host / 'cert.pem').read_bytes().strip()
        public = key_pubkey(host / 'key.pem')
        assert cert_pubkey(host / 'cert.pem') == public, 'key.pem does not match cert.pem'
        assert leftovers(host) == []
        if not remove_old and (host / 'key.pem.old').exists():
            assert cert_pubkey(host / 'cert.pem.old') == key_pubkey(host / 'key.pem.old')
        return dict(certificate=cert, public_key=public)

    sweep(run_playbook, ca_behind_proxy, host, args, check_pair)


def token_listing(hsm, pin):
    """pkcs11-tool --list-objects as a list of dicts: kind (private, public, cert), label, id."""
    output = hsm.pkcs11_tool('--token-label', 'ws-001', '--login', '--list-objects', pin=pin).stdout
    objects = []
    for line in output.splitlines():
        match = re.match(r'^(Private Key|Public Key|Certificate) Object', line)
        if match:
            objects.append(dict(kind={'Private Key': 'private', 'Public Key': 'public', 'Certificate': 'cert'}[match.group(1)]))
            continue
        match = re.match(r'^\s+(label|ID):\s*(.*?)\s*$', line)
        if match and objects:
            objects[-1][match.group(1).lower()] = match.group(2)
    return objects


def token_pair(hsm, pin, directory, label='vpn'):
    """Check exactly one key pair labelled ``label`` with one certificate object of its id that matches it."""
    objects = token_listing(hsm, pin)
    mine = [obj for obj in objects if obj.get('label') == label]
    kinds = sorted(obj['kind'] for obj in mine)
    assert kinds == ['cert', 'private', 'public'], objects
    assert len(set(obj['id'] for obj in mine)) == 1, objects
    assert not [obj for obj in objects if obj.get('label', '').endswith('.new')], objects
    object_id = mine[0]['id']
    hsm.pkcs11_tool('--token-label', 'ws-001', '--login', '--read-object', '--type', 'pubkey', '--id', object_id,
                    '--output-file', str(directory / 'pub.der'), pin=pin)
    hsm.pkcs11_tool('--token-label', 'ws-001', '--login', '--read-object', '--type', 'cert', '--id', object_id,
                    '--output-file', str(directory / 'cert.der'), pin=pin)
    public = openssl('pkey', '-pubin', '-inform', 'DER', '-in', str(directory / 'pub.der'), '-pubout')
    assert cert_pubkey(directory / 'cert.der', 'DER') == public, 'the certificate object does not match the key'
    return objects, public


def same_certificate(pem_path, der_path):
    """cert.pem and the certificate object read from the token are one certificate."""
    return (x509.load_pem_x509_certificate(pem_path.read_bytes())
            == x509.load_der_x509_certificate(der_path.read_bytes()))


@pytest.mark.parametrize('remove_old', [True, False], ids=['remove_old', 'keep_old'])
def test_token_rekey_killed_around_the_reply(ca_behind_proxy, token, run_playbook, tmp_path, remove_old):
    host, scratch = tmp_path / 'host', tmp_path / 'scratch'
    host.mkdir()
    scratch.mkdir()
    hsm = token['hsm']
    key = run_playbook([module_task('token_key', 'key', dict(token_args(token), label='vpn', type='rsa'))])
    assert key.result('key')['changed'], key.output()
    args = scep_args(ca_behind_proxy, host, key_label='vpn', store_on_token=True, rekey=True, remove_old=remove_old,
                     **token_args(token))

    def check_pair():
        objects, public = token_pair(hsm, token['user'], scratch)
        assert cert_pubkey(host / 'cert.pem') == public, 'cert.pem is not the token key\'s certificate'
        assert same_certificate(host / 'cert.pem', scratch / 'cert.der'), 'the token holds another certificate'
        assert leftovers(host) == []
        olds = [obj for obj in objects if obj.get('label') == 'vpn.old']
        if remove_old:
            assert olds == []
        else:
            assert sorted(obj['kind'] for obj in olds) in ([], ['cert', 'private', 'public']), objects
        return dict(certificate=(host / 'cert.pem').read_bytes().strip(), public_key=public)

    sweep(run_playbook, ca_behind_proxy, host, args, check_pair)


@pytest.mark.parametrize('where', ['file', 'token'])
def test_plain_renewal_killed_around_the_reply(ca_behind_proxy, token, run_playbook, tmp_path, where):
    host, scratch = tmp_path / 'host', tmp_path / 'scratch'
    host.mkdir()
    scratch.mkdir()
    if where == 'file':
        args = scep_args(ca_behind_proxy, host, private_key_path=str(host / 'key.pem'))
    else:
        key = run_playbook([module_task('token_key', 'key', dict(token_args(token), label='vpn', type='rsa'))])
        assert key.result('key')['changed'], key.output()
        args = scep_args(ca_behind_proxy, host, key_label='vpn', store_on_token=True, **token_args(token))

    def check_pair():
        if where == 'file':
            public = key_pubkey(host / 'key.pem')
        else:
            dummy, public = token_pair(token['hsm'], token['user'], scratch)
            assert same_certificate(host / 'cert.pem', scratch / 'cert.der'), 'the token holds another certificate'
        assert cert_pubkey(host / 'cert.pem') == public
        assert leftovers(host) == []
        return dict(certificate=(host / 'cert.pem').read_bytes().strip(), public_key=public)

    sweep(run_playbook, ca_behind_proxy, host, args, check_pair)


RELABEL_PRIVATE = '''
import sys, pkcs11
from pkcs11 import Attribute, ObjectClass
token = pkcs11.lib(sys.argv[1]).get_token(token_label=sys.argv[2])
with token.open(rw=True, user_pin=sys.argv[3]) as session:
    for obj in session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.LABEL: 'vpn.new'}):
        obj[Attribute.LABEL] = 'vpn'
'''


def keypairgen(hsm, pin, key_type, label, object_id):
    hsm.pkcs11_tool('--token-label', 'ws-001', '--login', '--keypairgen', '--key-type', key_type, '--label', label,
                    '--id', object_id, pin=pin)


@pytest.mark.parametrize('left', ['old and new', 'new only', 'new private relabelled'])
def test_token_key_replace_killed_midway_is_completed(token, run_playbook, tmp_path, left):
    """What a replace (type ec -> rsa, force) killed at each step leaves; the next run makes one rsa pair of it.

    'old and new': killed after the new pair was made; 'new only': after the old pair was destroyed;
    'new private relabelled': after the new private key took the label, before its public key did.
    """
    hsm, pin = token['hsm'], token['user']
    if left == 'old and new':
        keypairgen(hsm, pin, 'EC:prime256v1', 'vpn', '01')
    keypairgen(hsm, pin, 'rsa:2048', 'vpn.new', '0a')
    if left == 'new private relabelled':
        subprocess.run([sys.executable, '-c', RELABEL_PRIVATE, hsm.module, 'ws-001', pin], env=hsm.env, check=True,
                       capture_output=True, timeout=60)
    args = dict(token_args(token), label='vpn', type='rsa', size=2048, force=True)
    run = run_playbook([module_task('token_key', 'next run', args), module_task('token_key', 'again', args)])
    record = run.result('next run')
    assert record['status'] == 'ok' and record['changed'], run.output()
    objects = token_listing(hsm, pin)
    assert sorted((obj['kind'], obj['label'], obj['id']) for obj in objects) == [
        ('private', 'vpn', '0a'), ('public', 'vpn', '0a')], objects
    assert record['result']['type'] == 'rsa' and record['result']['id'] == '0a'
    assert 'completed an interrupted replace' in record['result']['actions']
    assert run.result('again')['changed'] is False
