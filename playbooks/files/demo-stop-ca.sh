#!/usr/bin/env bash
# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
#
#   demo-stop-ca.sh CA_DIR
#
# Stops the demo's step-ca: the process whose PID is in CA_DIR/step-ca.pid, but only while that PID still is this
# demo's step-ca (its command line ends in "--password-file FILE CA_DIR/config/ca.json", as the playbook starts it):
# once a process has ended, its PID can be given to any other process. SIGTERM, then SIGKILL after 10 seconds. Prints "stopped step-ca (PID N)" when it stopped one,
# nothing otherwise, and removes the PID file. playbooks/demo.yml runs it before it starts step-ca and when it is
# done (also when hosts failed); make demo runs it after the playbook, for a run that was interrupted.
set -eu -o pipefail

[ $# -eq 1 ] || { echo "usage: $0 CA_DIR" >&2; exit 2; }
ca_dir=$(realpath -m -- "$1")
pid_file=$ca_dir/step-ca.pid
config=$ca_dir/config/ca.json

[ -e "$pid_file" ] || exit 0
pid=$(<"$pid_file")

# True while $pid runs with this demo's ca.json as the playbook gives it to step-ca (a zombie has an empty command
# line: it is gone).
is_demo_ca() {
  local argv=()
  mapfile -d '' argv 2>/dev/null <"/proc/$pid/cmdline" || return 1
  [ "${#argv[@]}" -ge 4 ] && [ "${argv[-3]}" = --password-file ] && [ "${argv[-1]}" = "$config" ]
}

# Waits up to $1 tenths of a second for the process to end; false if it still runs.
ended_within() {
  local tenths
  for ((tenths = 0; tenths < $1; tenths++)); do
    is_demo_ca || return 0
    sleep 0.1
  done
  ! is_demo_ca
}

if [[ $pid =~ ^[1-9][0-9]*$ ]] && is_demo_ca; then
  kill -TERM "$pid" 2>/dev/null || true
  if ! ended_within 100; then
    kill -KILL "$pid" 2>/dev/null || true
    ended_within 50 || { echo "step-ca (PID $pid) did not end after SIGKILL" >&2; exit 1; }
  fi
  echo "stopped step-ca (PID $pid)"
fi
rm -f -- "$pid_file"
