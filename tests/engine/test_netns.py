"""What netns.py reads of a network namespace before it hands it to another sandbox: each
way a process without capabilities can leave something behind moves it away from a new
namespace's reading, and a namespace left as it was reads the same. Each case runs in a
thread of its own that enters a new namespace (a namespace is per thread), so the tests'
process stays at home."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Callable

import pytest

from execbox.sandbox import libc, netns


def in_new_namespace(fn: Callable[[], object]) -> object:
    out: list[object] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            libc.unshare(libc.CLONE_NEWNET)
            netns._bring_up_lo()
            out.append(fn())
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=run)
    t.start()
    t.join()
    if errors:
        raise errors[0]
    return out[0]


@pytest.fixture(scope="module")
def pristine() -> netns.Template:
    if os.geteuid() != 0:
        pytest.fail("network namespaces need root, as execbox itself does")
    home = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        return netns.pristine(home)  # made, read and left: this thread comes back home
    finally:
        os.close(home)


def as_new(pristine: netns.Template) -> bool:
    """The cloner's own check, in this thread's namespace."""
    return netns.reads_as_new(pristine)


def test_a_new_namespace_reads_as_pristine_and_the_reading_is_stable(pristine) -> None:
    def twice() -> tuple[bool, bool]:
        first = as_new(pristine)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM):
            pass  # a socket made and closed, never bound: nothing stays
        return first, as_new(pristine)

    assert in_new_namespace(twice) == (True, True)


def test_a_held_unix_name_shows_until_it_is_released(pristine) -> None:
    def name() -> tuple[bool, bool]:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.bind(b"\0execbox-netns-unit")
        held = as_new(pristine)
        s.close()
        return held, as_new(pristine)

    assert in_new_namespace(name) == (False, True)


def _no_route() -> None:
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s, contextlib.suppress(OSError):
        s.sendto(b"x", ("2001:db8::1", 9))


def _tcp_over_lo() -> None:
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        with socket.create_connection(srv.getsockname()):
            conn, _ = srv.accept()
            conn.close()


@pytest.mark.parametrize("touch", [_no_route, _tcp_over_lo], ids=["no route (v6)", "tcp"])
def test_what_a_process_leaves_behind_shows(pristine, touch: Callable[[], None]) -> None:
    def after() -> bool:
        touch()
        return as_new(pristine)

    assert in_new_namespace(after) is False


def test_the_check_is_exact_but_for_sockstats_host_wide_numbers(tmp_path) -> None:
    """cloner.c's comparison, on files of our own standing in for a namespace's."""
    sockstat = "/proc/thread-self/net/sockstat"
    text = b"sockets: used 12\nTCP: inuse 0 orphan 3 tw 0 alloc 7 mem 1\n"
    files = {"dev": b"lo: 0 0\n", sockstat: text}
    paths = []
    for name, data in files.items():
        path = tmp_path / "f" if name == "dev" else tmp_path / "sockstat"
        path.write_bytes(data)
        paths.append(str(path))
    # the template is made with sockstat's path, so its numbers become wildcards
    template = netns.Template(list(files.values()), paths=("dev", sockstat))
    template.paths[0], template.paths[1] = paths[0].encode(), paths[1].encode()
    assert netns.reads_as_new(template)
    (tmp_path / "sockstat").write_bytes(text.replace(b"used 12", b"used 40961"))
    assert netns.reads_as_new(template)  # the whole host's count moved
    (tmp_path / "sockstat").write_bytes(text.replace(b"inuse 0", b"inuse 1"))
    assert not netns.reads_as_new(template)  # a socket of the namespace's own
    (tmp_path / "sockstat").write_bytes(text.replace(b"used 12", b"used "))
    assert not netns.reads_as_new(template)  # a wildcard is one digit at least
    (tmp_path / "sockstat").write_bytes(text)
    (tmp_path / "f").write_bytes(b"lo: 0 0\nx")
    assert not netns.reads_as_new(template)  # longer than the template
    (tmp_path / "f").write_bytes(b"lo: 0 0")
    assert not netns.reads_as_new(template)  # shorter
    (tmp_path / "f").unlink()
    assert not netns.reads_as_new(template)  # unreadable
