# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""SCEP enrollment speed: scep_enroll (run as a standalone module process, as Ansible runs it) against
micromdm's scepclient, alternating, against the same micromdm scepserver in one run.

Both make a new RSA-2048 key per enrollment and enroll it (GetCACaps, GetCACert, one PKIOperation).
Prints the median seconds per enrollment of each and their ratio, and writes them into bench/results.json
(the other keys there, e.g. fleet_bench.py's, are kept).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, 'tests', 'integration'))

from micromdm import MicromdmScepServer, run_scepclient  # noqa: E402  pylint: disable=wrong-import-position

MODULE = os.path.join(REPO, 'plugins', 'modules', 'scep_enroll.py')
COLLECTIONS = os.path.join(REPO, '.tmp', 'collections')


def run_module(server, directory, challenge, common_name):
    args = dict(url=server.url, ca_fingerprint=server.ca_fingerprint_sha256, challenge_password=challenge,
                private_key_path=os.path.join(directory, 'key.pem'),
                certificate_path=os.path.join(directory, 'cert.pem'), common_name=common_name)
    args_path = os.path.join(directory, 'args.json')
    with open(args_path, 'w', encoding='utf-8') as handle:
        json.dump({'ANSIBLE_MODULE_ARGS': args}, handle)
    env = dict(os.environ, PYTHONPATH=COLLECTIONS)
    started = time.monotonic()
    completed = subprocess.run([sys.executable, MODULE, args_path], env=env, capture_output=True, text=True,
                               check=False, timeout=120)
    seconds = time.monotonic() - started
    result = json.loads(completed.stdout)
    if result.get('status') != 'issued':
        raise SystemExit('scep_enroll failed: %s' % completed.stdout[-2000:])
    return seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--enrollments', type=int, default=20)
    parser.add_argument('--output', default=os.path.join(REPO, 'bench', 'results.json'))
    options = parser.parse_args()
    challenge = 'bench-challenge'
    ours, peer = [], []
    with tempfile.TemporaryDirectory(prefix='scep-bench-') as work:
        with MicromdmScepServer(os.path.join(work, 'ca'), challenge=challenge, allowrenew=0) as server:
            for number in range(options.enrollments):
                mine = os.path.join(work, 'ours-%d' % number)
                os.makedirs(mine)
                ours.append(run_module(server, mine, challenge, 'bench-ours-%d' % number))
                theirs = run_scepclient(server, os.path.join(work, 'peer-%d' % number), 'bench-peer-%d' % number,
                                        challenge=challenge)
                if theirs.returncode != 0:
                    raise SystemExit('scepclient failed: %s' % theirs.output()[-2000:])
                peer.append(theirs.seconds)
            issued = len(server.issued())
    if issued != 2 * options.enrollments:
        raise SystemExit('the CA issued %d certificates, expected %d' % (issued, 2 * options.enrollments))
    ours_median, peer_median = statistics.median(ours), statistics.median(peer)
    results = {
        'scep_enroll_seconds_per_enrollment': {'value': round(ours_median, 4), 'unit': 's'},
        'scepclient_seconds_per_enrollment': {'value': round(peer_median, 4), 'unit': 's'},
        'scep_enroll_to_scepclient_ratio': {'value': round(ours_median / peer_median, 2), 'unit': 'x'},
        'enrollments_each': {'value': options.enrollments, 'unit': 'count'},
    }
    merged = {}
    if os.path.exists(options.output):  # keep the other benches' keys (fleet_bench.py)
        with open(options.output, encoding='utf-8') as handle:
            merged = json.load(handle)
    merged.update(results)
    with open(options.output, 'w', encoding='utf-8') as handle:
        json.dump(merged, handle, indent=2, sort_keys=True)
        handle.write('\n')
    print('enrollments each: %d (alternating, same micromdm scepserver, new RSA-2048 key each)' % options.enrollments)
    print('scep_enroll (module process): median %.3f s per enrollment (min %.3f, max %.3f)' % (ours_median, min(ours), max(ours)))
    print('scepclient                  : median %.3f s per enrollment (min %.3f, max %.3f)' % (peer_median, min(peer), max(peer)))
    print('ratio scep_enroll / scepclient: %.2f' % (ours_median / peer_median))
    print('written: %s' % options.output)


if __name__ == '__main__':
    main()
