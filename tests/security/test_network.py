"""Network (Faber's heading): no route from a sandbox to the host's other addresses or to
the execbox server's port, no resolver, no raw or packet socket, and a net namespace of
its own for each sandbox. Host listeners stand ready for every attempt, and must see
nothing."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest

from execbox.config import Settings
from execbox.jobs import Job, Status

from ..conftest import make_limits
from .conftest import py_json


def host_addresses() -> list[tuple[str, int]]:
    """The host's own non-loopback addresses, (address, family); link-local ones need a
    scope and reach only the link, so they are left out."""
    try:
        data = json.loads(subprocess.run(["ip", "-j", "addr"], capture_output=True).stdout)
        addrs = [a["local"] for i in data for a in i.get("addr_info", [])]
    except (OSError, ValueError):
        addrs = [ai[4][0] for ai in socket.getaddrinfo(socket.gethostname(), None)]
    out = []
    for a in dict.fromkeys(addrs):
        ip = ipaddress.ip_address(a)
        if not (ip.is_loopback or ip.is_link_local):
            out.append((a, int(socket.AF_INET6 if ip.version == 6 else socket.AF_INET)))
    return out


class Listeners:
    """TCP and UDP listeners on every host address (0.0.0.0 and ::) at one port,
    recording whatever reaches them."""

    def __init__(self, port: int = 0, host: str | None = None) -> None:
        self.got: list[object] = []
        self.socks: list[socket.socket] = []
        self._stop = threading.Event()
        binds = [(socket.AF_INET, host or "0.0.0.0")] + (
            [(socket.AF_INET6, "::")] if not host else []
        )
        for fam, addr in binds:
            for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                s = socket.socket(fam, kind)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if fam == socket.AF_INET6:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                s.bind((addr, port))
                port = s.getsockname()[1]  # the same port for all of them
                if kind == socket.SOCK_STREAM:
                    s.listen(16)
                s.settimeout(0.05)
                self.socks.append(s)
        self.port = port
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            for s in self.socks:
                with contextlib.suppress(OSError):
                    if s.type == socket.SOCK_STREAM:
                        conn, peer = s.accept()
                        self.got.append(("tcp", peer))
                        conn.close()
                    else:
                        self.got.append(("udp", s.recvfrom(4096)))

    def reachable_from_host(self, addrs: list[tuple[str, int]]) -> None:
        """The same connections, made from the host, do arrive."""
        for addr, fam in addrs:
            with socket.socket(fam) as c:
                c.settimeout(2)
                c.connect((addr, self.port))
        deadline = time.monotonic() + 2
        while len(self.got) < len(addrs) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(self.got) == len(addrs), self.got
        self.got.clear()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        for s in self.socks:
            s.close()


@pytest.fixture
def listeners() -> Iterator[Listeners]:
    lst = Listeners()
    try:
        yield lst
    finally:
        lst.close()


PROBE = """
import errno, json, socket
def tcp(addr, fam, port):
    s = socket.socket(fam); s.settimeout(1)
    try:
        s.connect((addr, port)); return "connected"
    except socket.timeout:
        return "timeout"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
    finally:
        s.close()
def udp(addr, fam, port):
    s = socket.socket(fam, socket.SOCK_DGRAM); s.settimeout(0.3)
    try:  # connected, so that an ICMP "port unreachable" is reported
        s.connect((addr, port)); s.send(b"hello")
        s.recv(512); return "answered"
    except socket.timeout:
        return "sent, no answer"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
    finally:
        s.close()
"""


@pytest.fixture
def extra_host_address() -> Iterator[tuple[str, int]]:
    """A routable (non-loopback-range) address of the host's own, made for the test, so the
    test has one to try even on a host with no address but loopback. It sits on the host's
    lo (this kernel has no dummy interfaces); to a sandbox it is as foreign as any other."""
    addr = "198.51.100.7"  # TEST-NET-2
    subprocess.run(["ip", "addr", "add", f"{addr}/32", "dev", "lo"], check=True)
    try:
        yield addr, int(socket.AF_INET)
    finally:
        subprocess.run(["ip", "addr", "del", f"{addr}/32", "dev", "lo"], check=False)


def test_no_route_to_the_hosts_other_addresses(
    engine, listeners: Listeners, extra_host_address: tuple[str, int]
) -> None:
    addrs = list(dict.fromkeys([*host_addresses(), extra_host_address]))
    code = (
        PROBE
        + f"""
res = {{}}
for addr, fam in {addrs!r}:
    res[addr] = [tcp(addr, fam, {listeners.port}), udp(addr, fam, {listeners.port})]
print(json.dumps(res))
"""
    )
    res = py_json(engine, code)
    time.sleep(0.2)  # anything in flight reaches the listeners
    assert listeners.got == []
    listeners.reachable_from_host(addrs)  # so the refusals above are the sandbox's
    # the sandbox has a loopback interface and no route at all
    assert res == {a: ["ENETUNREACH", "ENETUNREACH"] for a, _ in addrs}


def test_no_route_to_the_execbox_server_port(engine) -> None:
    """A listener stands in for the server on its configured port (all addresses), where a
    sandbox would look for it: loopback, localhost, the host's addresses and name."""
    port = Settings().port
    try:
        stand_in = Listeners(port)
    except OSError:  # the port is taken (a real server?): any port proves the same
        stand_in = Listeners()
    try:
        loopback = [("127.0.0.1", int(socket.AF_INET)), ("::1", int(socket.AF_INET6))]
        targets = [*loopback, *host_addresses()]
        code = (
            PROBE
            + f"""
port = {stand_in.port}
res = {{}}
for addr, fam in {targets!r}:
    res[addr] = tcp(addr, fam, port)
for name in ("localhost", {socket.gethostname()!r}):
    try:
        infos = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)
        res[name] = sorted({{tcp(i[4][0], i[0], port) for i in infos}})
    except socket.gaierror as e:
        res[name] = "gaierror"
print(json.dumps(res))
"""
        )
        res = py_json(engine, code)
        time.sleep(0.2)
        assert stand_in.got == []
        stand_in.reachable_from_host(targets)
        # loopback is the sandbox's own, where nothing listens; there is no other route
        assert res.pop("127.0.0.1") == "ECONNREFUSED"
        assert res.pop("::1") == "ECONNREFUSED"
        assert res.pop("localhost") == ["ECONNREFUSED"]  # /etc/hosts: loopback only
        hostname = res.pop(socket.gethostname())
        assert hostname == "gaierror" or hostname == ["ECONNREFUSED"], hostname
        assert res == {a: "ENETUNREACH" for a, _ in host_addresses()}
    finally:
        stand_in.close()


def _host_nameservers() -> list[str]:
    with contextlib.suppress(OSError), open("/etc/resolv.conf") as f:
        return [ln.split()[1] for ln in f if ln.startswith("nameserver") and len(ln.split()) > 1]
    return []


def test_there_is_no_resolver(engine) -> None:
    """Not the sandbox's own (its resolv.conf is empty), not the host's nameservers, and
    not a resolver listening on the host's loopback, where libc looks when resolv.conf
    names none."""
    try:
        resolver = Listeners(53, host="127.0.0.1")
    except OSError:  # a real resolver is there: it must not be reached either
        resolver = None
    try:
        servers = [s for s in _host_nameservers() if ":" not in s] + ["8.8.8.8", "1.1.1.1"]
        code = (
            PROBE
            + f"""
out = {{"resolv.conf": open("/etc/resolv.conf").read()}}
for name in ("example.com", "pypi.org", "execbox.invalid"):
    try:
        socket.getaddrinfo(name, 443); out[name] = "resolved"
    except socket.gaierror as e:
        out[name] = e.errno
for server in {servers!r} + ["127.0.0.1", "127.0.0.53"]:
    out[server] = [udp(server, socket.AF_INET, 53), tcp(server, socket.AF_INET, 53)]
print(json.dumps(out))
"""
        )
        res = py_json(engine, code)
        time.sleep(0.2)
        if resolver is not None:
            assert resolver.got == []
            resolver.reachable_from_host([("127.0.0.1", int(socket.AF_INET))])
        assert res.pop("resolv.conf") == ""
        for name in ("example.com", "pypi.org", "execbox.invalid"):
            # EAI_NONAME or EAI_AGAIN: nothing answered
            assert res.pop(name) in (socket.EAI_NONAME, socket.EAI_AGAIN), name
        for loop in ("127.0.0.1", "127.0.0.53"):
            assert res.pop(loop) == ["ECONNREFUSED", "ECONNREFUSED"], loop
        assert res == {s: ["ENETUNREACH", "ENETUNREACH"] for s in servers}
    finally:
        if resolver is not None:
            resolver.close()


def test_raw_and_packet_sockets_are_refused(engine) -> None:
    code = """
import errno, json, socket
res = {}
for name, args in [("inet raw icmp", (2, 3, 1)), ("inet raw tcp", (2, 3, 6)),
                   ("inet raw ipproto_raw", (2, 3, 255)), ("inet6 raw icmpv6", (10, 3, 58)),
                   ("inet sock_packet", (2, 10, 0x0300)),
                   ("packet dgram", (17, 2, 0x0300)), ("packet raw", (17, 3, 0x0300)),
                   ("inet icmp datagram", (2, 2, 1)), ("inet6 icmp datagram", (10, 2, 58))]:
    try:
        socket.socket(*args).close(); res[name] = "opened"
    except OSError as e:
        res[name] = errno.errorcode[e.errno]
print(json.dumps(res))
"""
    assert py_json(engine, code) == {
        # no CAP_NET_RAW
        "inet raw icmp": "EPERM",
        "inet raw tcp": "EPERM",
        "inet raw ipproto_raw": "EPERM",
        "inet6 raw icmpv6": "EPERM",
        "inet sock_packet": "EPERM",
        # the family itself is refused by seccomp
        "packet dgram": "EAFNOSUPPORT",
        "packet raw": "EAFNOSUPPORT",
        # unprivileged ICMP sockets: no group is in the new namespace's ping_group_range
        "inet icmp datagram": "EACCES",
        "inet6 icmp datagram": "EACCES",
    }


def test_concurrent_sandboxes_have_their_own_net_namespaces(engine) -> None:
    code = """
import json, os, time
t0 = time.time()
ns = os.readlink("/proc/self/ns/net")
time.sleep(0.5)
ifs = [l.split(":")[0].strip() for l in open("/proc/net/dev").readlines()[2:]]
print(json.dumps({"ns": ns, "ifs": ifs, "span": [t0, time.time()]}))
"""
    jobs = [
        Job(runtime="python", code=code, limits=make_limits(wall_time_s=10)),
        Job(runtime="bash", code=f"exec python3 -c '{code}'", limits=make_limits(wall_time_s=10)),
    ]
    outs = engine.many(jobs)
    assert all(o.status is Status.SUCCESS for o in outs), [o.stderr for o in outs]
    a, b = (json.loads(o.stdout) for o in outs)
    assert a["span"][0] < b["span"][1] and b["span"][0] < a["span"][1]  # alive together
    assert a["ns"] != b["ns"]
    mine = os.readlink("/proc/self/ns/net")
    zygotes = {os.readlink(f"/proc/{z.proc.pid}/ns/net") for z in engine.engine.zygotes.values()}
    assert mine not in (a["ns"], b["ns"]) and not zygotes & {a["ns"], b["ns"]}
    assert a["ifs"] == b["ifs"] == ["lo"]


def test_each_sandbox_has_its_own_working_loopback_and_the_zygote_stays_home(engine) -> None:
    """The zygote brings up each sandbox's `lo` from outside, entering the sandbox's network
    namespace for it: the sandbox's servers on 127.0.0.1 and ::1 answer it, and the zygote
    is back in the host's namespace every time."""
    code = """
import json, os, socket
out = {"ns": os.readlink("/proc/self/ns/net")}
for family, addr in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
    with socket.socket(family) as srv:
        srv.bind((addr, 0)); srv.listen()
        with socket.create_connection(srv.getsockname()[:2], timeout=2) as c:
            conn, _ = srv.accept(); conn.sendall(b"hi"); out[addr] = c.recv(2).decode()
print(json.dumps(out))
"""
    seen = [py_json(engine, code) for _ in range(3)]
    assert all(s["127.0.0.1"] == "hi" and s["::1"] == "hi" for s in seen), seen
    assert len({s["ns"] for s in seen}) == 3  # a namespace of its own, each
    host = os.readlink("/proc/self/ns/net")
    for z in engine.engine.zygotes.values():
        assert os.readlink(f"/proc/{z.proc.pid}/ns/net") == host, z.runtime


# SO_NETNS_COOKIE: a number the kernel gives each network namespace and never gives again
# (an inode number can come back once a namespace is freed)
NETNS_VIEW = """
import json, socket
a, b = socket.socketpair()
cookie = int.from_bytes(a.getsockopt(socket.SOL_SOCKET, 71, 8), "little")
a.close(); b.close()
"""


def _plain_view() -> str:
    """What a later sandbox sees of its namespace: its cookie, lo's packet counts, every
    socket table, the no-route counters; and whether it can take the names an earlier
    execution used."""
    return (
        NETNS_VIEW
        + """
import os
lo = [l.split() for l in open("/proc/net/dev") if l.strip().startswith("lo:")][0]
names = ("tcp", "tcp6", "udp", "udp6", "unix")
tables = {t: open(f"/proc/net/{t}").read().splitlines()[1:] for t in names}
snmp = open("/proc/net/snmp").read().splitlines()
ip = dict(zip(snmp[0].split()[1:], snmp[1].split()[1:]))
free = {}
for fam, addr in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
    with socket.socket(fam) as s:
        s.bind((addr, 47123)); free[addr] = True
with socket.socket(socket.AF_UNIX) as s:
    s.bind(b"\\0execbox-netns-test"); free["abstract"] = True
print(json.dumps({"cookie": cookie, "lo_packets": [int(lo[2]), int(lo[10])],
                  "tables": tables, "no_routes": int(ip["OutNoRoutes"]), "free": free}))
"""
    )


def test_untouched_network_namespaces_are_reused_and_look_new(engine) -> None:
    """A namespace no execution used is handed to a later sandbox (netns.py): the cookies
    repeat across sequential executions. Each sandbox still finds its namespace as a new
    one: no packet on lo, no socket, no counter moved (the view's own sockets, closed at
    its exit, leave nothing either)."""
    seen = [py_json(engine, _plain_view()) for _ in range(8)]
    assert len({s["cookie"] for s in seen}) < len(seen), "no namespace was reused"
    for s in seen:
        assert s["lo_packets"] == [0, 0] and s["no_routes"] == 0, s
        assert s["tables"] == {t: [] for t in ("tcp", "tcp6", "udp", "udp6", "unix")}, s
        assert s["free"] == {"127.0.0.1": True, "::1": True, "abstract": True}, s


# uses of a namespace that a later sandbox could see for good: counters that never go back
TOUCHES = {
    # a connection over lo: packets, and a socket left in TIME_WAIT
    "tcp over lo": """
srv = socket.socket(); srv.bind(("127.0.0.1", 47123)); srv.listen()
c = socket.create_connection(("127.0.0.1", 47123)); conn, _ = srv.accept()
c.close(); conn.close(); srv.close()
""",
    # a datagram to itself over ::1
    "udp over ::1": """
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); s.bind(("::1", 47123))
s.sendto(b"x", ("::1", 47123)); s.close()
""",
    # no packet at all: a send with no route only moves a counter
    "no route": """
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    s.sendto(b"x", ("192.0.2.1", 9))
except OSError:
    pass
""",
}


@pytest.mark.parametrize("touch", list(TOUCHES))
def test_a_touched_network_namespace_is_never_handed_on(engine, touch: str) -> None:
    """An execution that used its namespace in any way a later one could see leaves it to
    be torn down: none of the next executions gets it, and each finds a new one."""
    code = NETNS_VIEW + TOUCHES[touch] + "print(json.dumps({'cookie': cookie}))\n"
    used = py_json(engine, code)["cookie"]
    after = [py_json(engine, _plain_view()) for _ in range(5)]
    assert used not in {s["cookie"] for s in after}
    for s in after:
        assert s["lo_packets"] == [0, 0] and s["no_routes"] == 0, s
        assert s["free"] == {"127.0.0.1": True, "::1": True, "abstract": True}, s


def test_a_name_held_in_flight_is_never_seen_by_a_later_sandbox(engine) -> None:
    """An abstract unix name held by a socket in flight on itself outlives its process
    until the kernel's collector of unix sockets frees it: a namespace is handed on only
    once it has (when exactly is the collector's timing; tests/engine/test_netns.py shows
    the check sees such a socket)."""
    code = """
import socket
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); s.bind(b"\\0execbox-netns-test")
s.connect(b"\\0execbox-netns-test"); socket.send_fds(s, [b"x"], [s.fileno()])
print("ok")
"""
    for _ in range(3):
        out = engine.py(code)
        assert out.status is Status.SUCCESS and out.stdout == b"ok\n", out
        after = py_json(engine, _plain_view())
        assert after["tables"]["unix"] == [] and after["free"]["abstract"], after


def test_a_sandbox_cannot_change_its_namespace_s_settings(engine) -> None:
    """What the reuse check does not read (netns.py): the namespace's sysctls, addresses and
    routes. The code cannot change them: each try is refused."""
    code = """
import errno, json, fcntl, socket, struct
out = {}
tries = (("ipv4/ip_unprivileged_port_start", "0"), ("ipv4/ping_group_range", "0 2147483647"),
         ("ipv4/ip_local_port_range", "40000 40001"), ("core/somaxconn", "1"))
for name, value in tries:
    try:
        with open(f"/proc/sys/net/{name}", "w") as f:
            f.write(value)
        out[name] = "written"
    except OSError as e:
        out[name] = errno.errorcode[e.errno]
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    try:  # SIOCSIFFLAGS: take lo down
        fcntl.ioctl(s, 0x8914, struct.pack("16sH14x", b"lo", 0))
        out["lo down"] = "done"
    except OSError as e:
        out["lo down"] = errno.errorcode[e.errno]
print(json.dumps(out))
"""
    out = py_json(engine, code)
    assert "written" not in out.values() and out["lo down"] == "EPERM", out
    assert all(v in ("EACCES", "EPERM", "EROFS") for v in out.values()), out
