# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The network budget against a server that drips its answer, the size cap, and server text clean-up."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from ansible.module_utils.urls import open_url

from ansible_collections.tokenfleet.pki.plugins.module_utils.bounded_http import (
    AnswerTooLarge,
    BudgetExpired,
    NetworkBudget,
    read_capped,
    server_text,
)


def _serve(answer: bytes, pause: float, connections: int = 1):
    """A loopback server sending ``answer`` one byte every ``pause`` seconds; returns its URL."""
    listener = socket.socket()
    listener.bind(('127.0.0.1', 0))
    listener.listen(4)
    listener.settimeout(30)

    def run():
        for dummy in range(connections):
            try:
                conn, dummy_address = listener.accept()
            except OSError:
                break
            with conn:
                conn.recv(65536)
                try:
                    for byte in answer:
                        conn.sendall(bytes([byte]))
                        time.sleep(pause)
                except OSError:
                    pass
        listener.close()

    threading.Thread(target=run, daemon=True).start()
    return 'http://127.0.0.1:%d/' % listener.getsockname()[1]


def test_a_dripping_server_is_stopped_by_the_budget_not_after_every_byte():
    url = _serve(b'HTTP/1.1 200 OK\r\nContent-Length: 400\r\n\r\n' + b'x' * 400, 0.05)
    budget = NetworkBudget(1.0)
    start = time.monotonic()
    with pytest.raises(BudgetExpired):
        with budget.bound():
            response = open_url(url, timeout=budget.socket_timeout())
            read_capped(response, 1000, 'GET /')
    elapsed = time.monotonic() - start
    assert elapsed < 2.0, 'the run took %.1f s with a 1 s budget' % elapsed
    assert budget.remaining() <= 0.05
    with pytest.raises(BudgetExpired):
        with budget.bound():
            pass


def test_the_budget_is_shared_by_the_requests_of_a_run():
    budget = NetworkBudget(5.0)
    url = _serve(b'HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok', 0.01, connections=2)
    for dummy in range(2):
        with budget.bound():
            assert read_capped(open_url(url, timeout=budget.socket_timeout()), 10, 'GET /') == b'ok'
    assert 0 < budget.spent < 5.0
    assert budget.remaining() == pytest.approx(5.0 - budget.spent)


@pytest.mark.parametrize('headers', [b'Content-Length: 5000\r\n', b''])
def test_an_answer_over_the_limit_is_refused_with_the_limit_named(headers):
    url = _serve(b'HTTP/1.1 200 OK\r\n' + headers + b'Connection: close\r\n\r\n' + b'y' * 5000, 0)
    with NetworkBudget(10).bound():
        response = open_url(url, timeout=10)
        with pytest.raises(AnswerTooLarge, match='limit of 1024 bytes'):
            read_capped(response, 1024, 'GET /')


def test_server_text_loses_escapes_and_control_characters_and_is_cut():
    hostile = b'\x1b[31mDENIED\x1b[0m\r\nSet-Cookie: x\x07\x00' + b'A' * 5000
    text = server_text(hostile)
    assert text.startswith('DENIED Set-Cookie: x A')
    assert len(text) <= 203 and text.endswith('...')
    assert not any(ord(c) < 32 or 0x7f <= ord(c) <= 0x9f for c in text)
    assert server_text('  short\n text ') == 'short text'
    assert server_text(None) == ''
