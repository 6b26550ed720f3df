"""Port checks of `unifier stack up` (unifier/processes.py), with real sockets."""

from __future__ import annotations

import socket

import pytest

from unifier.processes import StackError, ensure_port_free


def test_a_port_left_in_time_wait_by_a_stopped_server_is_free() -> None:
    """`stack down` then `stack up` at once: the stopped collector's connections sit in
    TIME_WAIT for about a minute, and nothing listens — the port is free."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = server.accept()
    accepted.close()  # the server's side closes first: its end goes to TIME_WAIT
    client.close()
    server.close()
    ensure_port_free("127.0.0.1", port, "the collector", "UNIFIER_COLLECTOR_PORT")


def test_a_port_something_listens_on_is_refused_with_the_setting_to_change() -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        with pytest.raises(StackError, match=f"127.0.0.1:{port} is already in use") as err:
            ensure_port_free("127.0.0.1", port, "the collector", "UNIFIER_COLLECTOR_PORT")
    assert "UNIFIER_COLLECTOR_PORT" in str(err.value)
