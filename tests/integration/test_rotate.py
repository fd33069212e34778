# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""playbooks/rotate.yml on a provisioned fleet: when nothing is due, one module call per host and no CA request;
when everything is due, every host renews."""

from __future__ import annotations

import json
import subprocess
import sys

import yaml
from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs12

from harness import CALLBACK_DIR, RECORD_ENV, REPO_ROOT, random_pin, venv_tool


def rotate(softhsm, inventory, tmp_path, name, *extra):
    results = tmp_path / ('%s.jsonl' % name)
    env = dict(softhsm.env, ANSIBLE_CALLBACK_PLUGINS=CALLBACK_DIR, ANSIBLE_CALLBACKS_ENABLED='record_results')
    env[RECORD_ENV] = str(results)
    completed = subprocess.run([venv_tool('ansible-playbook'), '-i', str(inventory), 'playbooks/rotate.yml',
                                '-e', 'rotate_splay=0'] + list(extra),
                               cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-2000:]
    return [json.loads(line) for line in results.read_text().splitlines() if line.strip()]


def test_rotation_makes_one_module_call_per_host_when_nothing_is_due(micromdm, token, run_playbook, tmp_path):
    challenge = random_pin(32)
    server = micromdm(challenge=challenge)
    workstation = dict(ansible_connection='local', ansible_python_interpreter=sys.executable, token_certificate_pkcs11_module=token['hsm'].module,
                       token_certificate_token_label=token['label'], token_certificate_user_pin=token['user'],
                       token_certificate_scep_url=server.url, token_certificate_ca_fingerprint=server.ca_fingerprint_sha256,
                       token_certificate_challenge_password=challenge, token_certificate_path=str(tmp_path / 'ws' / 'vpn.pem'),
                       token_certificate_common_name='ws-001.example.com')
    printer = dict(ansible_connection='local', ansible_python_interpreter=sys.executable, device_certificate_scep_url=server.url,
                   device_certificate_ca_fingerprint=server.ca_fingerprint_sha256, device_certificate_challenge_password=challenge,
                   device_certificate_pkcs12_passphrase=random_pin(), device_certificate_dir=str(tmp_path / 'mfp-001'),
                   device_certificate_out_dir=str(tmp_path / 'out'), device_certificate_common_name='192.0.2.21')
    # Provision first (key on the token, per-device directory, first certificates).
    run = run_playbook([
        {'name': 'ws', 'ansible.builtin.include_role': {'name': 'tokenfleet.pki.token_certificate'}, 'vars': workstation},
        {'name': 'mfp', 'ansible.builtin.include_role': {'name': 'tokenfleet.pki.device_certificate'}, 'vars': printer},
    ])
    assert run.rc == 0, run.output()
    assert server.pkioperation_count() == 2
    inventory = tmp_path / 'fleet.yml'
    inventory.write_text(yaml.safe_dump({'all': {'children': {
        'workstations': {'hosts': {'ws-001': workstation}},
        'printers': {'hosts': {'mfp-001': printer}}}}}))

    quiet = rotate(token['hsm'], inventory, tmp_path, 'quiet')
    # The roles' argument validation is an action on the controller; it sends no module to the host.
    ran = [(record['host'], record['task']) for record in quiet
           if record['status'] != 'skipped' and not record['task'].startswith('Validating arguments against arg spec')]
    assert sorted(host for host, dummy in ran) == ['mfp-001', 'ws-001'], ran  # one module call per host
    assert [record for record in quiet if record['changed']] == []
    assert server.pkioperation_count() == 2  # and nothing sent to the CA

    bundle = tmp_path / 'out' / 'mfp-001' / 'bundle.p12'  # provisioning ran as localhost: its bundle is under out/localhost
    assert not bundle.exists()
    due = rotate(token['hsm'], inventory, tmp_path, 'due', '-e', 'token_certificate_renew_before=400',
                 '-e', 'device_certificate_renew_before=400')
    # (the results are hidden by the roles' no_log; the CA's log and the files tell what happened)
    renewed = sorted(record['host'] for record in due if record['task'].startswith('Certificate') and record['changed'])
    assert renewed == ['mfp-001', 'ws-001']
    assert server.pkioperation_count() == 4
    # The printer got a bundle holding the renewed certificate.
    dummy, packed, dummy2 = pkcs12.load_key_and_certificates(bundle.read_bytes(),
                                                             printer['device_certificate_pkcs12_passphrase'].encode())
    assert packed == x509.load_pem_x509_certificate((tmp_path / 'mfp-001' / 'cert.pem').read_bytes())
