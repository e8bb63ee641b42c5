"""Messages between the engine and a zygote: one JSON object per SOCK_SEQPACKET datagram,
with file descriptors riding along as SCM_RIGHTS."""

from __future__ import annotations

import json
import os
import select
import socket
from typing import Any

MAX_MESSAGE = 1 << 20
MAX_FDS = 16


def send(sock: socket.socket, msg: dict[str, Any], fds: list[int] | tuple[int, ...] = ()) -> None:
    data = json.dumps(msg, separators=(",", ":")).encode()
    if fds:
        socket.send_fds(sock, [data], list(fds))
    else:
        sock.send(data)


def wait(fd: int | socket.socket, events: int, timeout_s: float | None = None) -> bool:
    """Whether `fd` is ready for `events` (select.POLLIN, POLLOUT) within the timeout. By
    poll(), not select(), which refuses an fd past 1024: a zygote in a burst holds
    thousands, and a cloner started then gets fds past them."""
    poller = select.poll()
    poller.register(fd, events)
    return bool(poller.poll(None if timeout_s is None else timeout_s * 1000))


def recv(sock: socket.socket) -> tuple[dict[str, Any] | None, list[int]]:
    """One message and its fds; (None, []) when the peer has gone."""
    try:
        data, fds, _flags, _addr = socket.recv_fds(sock, MAX_MESSAGE, MAX_FDS)
    except ConnectionResetError:  # it closed with messages of ours still unread
        return None, []
    if not data:
        for fd in fds:
            os.close(fd)
        return None, []
    return json.loads(data), fds
