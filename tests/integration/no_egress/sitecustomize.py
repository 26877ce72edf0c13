"""Egress guard for tests: imported by every Python process whose PYTHONPATH holds this folder.

With ``MOAA_EGRESS_LOG`` set, each process appends to that file (JSON lines):

- one ``start`` record: pid, parent pid, command line and the offline settings it runs with,
  so a test can see which processes (driver, Ray workers, engine processes) ran guarded;
- one ``egress`` record per socket ``connect``/``connect_ex``/``sendto`` aimed at an address
  that is not on this host. The call is then refused with ``ENETUNREACH``, as if there were
  no route, so a library that would have reached out fails fast instead of hanging;
- one ``egress`` record (``resolve``) per name lookup that fails or yields an address off
  this host: answering it took a DNS query (the lookup itself is not refused).

Unix sockets and addresses of this host (loopback, or any address a socket can bind to here)
pass untouched. Only Python-level sockets are seen; the test's network namespace catches the
rest (C extensions, DNS lookups).
"""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import socket
import sys
import traceback

_LOG = os.environ.get("MOAA_EGRESS_LOG")
OFFLINE_KEYS = (
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "HF_DATASETS_OFFLINE",
    "HF_HUB_DISABLE_TELEMETRY",
    "DO_NOT_TRACK",
    "VLLM_NO_USAGE_STATS",
    "RAY_USAGE_STATS_ENABLED",
    "WANDB_MODE",
)


def _write(record: dict) -> None:
    line = (json.dumps(record, default=str) + "\n").encode()
    fd = os.open(_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(
            fd, line
        )  # one write of a short line: appends from many processes interleave whole
    finally:
        os.close(fd)


def _cmdline() -> list[str]:
    try:
        with open(f"/proc/{os.getpid()}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return list(sys.argv)


_local_cache: dict[str, bool] = {}
_getaddrinfo = socket.getaddrinfo


def _is_host_ip(ip: str) -> bool:
    """Loopback, unspecified, or an address some interface of this host owns."""
    if ip in _local_cache:
        return _local_cache[ip]
    try:
        addr = ipaddress.ip_address(ip.split("%")[0])
    except ValueError:
        _local_cache[ip] = False
        return False
    ok = addr.is_loopback or addr.is_unspecified
    if not ok:
        family = socket.AF_INET6 if addr.version == 6 else socket.AF_INET
        probe = socket.socket(family, socket.SOCK_DGRAM)
        try:
            probe.bind((ip, 0))  # binding succeeds only for an address of this host
            ok = True
        except OSError:
            ok = False
        finally:
            probe.close()
    _local_cache[ip] = ok
    return ok


def _is_local(family: int, address: object) -> bool:
    if family == getattr(socket, "AF_UNIX", None) or isinstance(address, str | bytes):
        return True
    if not isinstance(address, tuple) or not address:
        return True  # not an IP destination (netlink, packet sockets...)
    host = address[0]
    if isinstance(host, bytes):
        host = host.decode()
    if host in ("", "localhost"):
        return True
    try:
        ipaddress.ip_address(str(host).split("%")[0])
        return _is_host_ip(str(host))
    except ValueError:
        pass
    try:
        infos = _getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(_is_host_ip(info[4][0]) for info in infos)


def _refuse(sock: socket.socket, kind: str, address: object) -> OSError:
    stack = traceback.extract_stack()[:-3][-12:]
    _write(
        {
            "event": "egress",
            "kind": kind,
            "pid": os.getpid(),
            "family": int(sock.family),
            "type": int(sock.type),
            "address": address,
            "cmdline": _cmdline()[:4],
            "stack": [f"{f.filename}:{f.lineno} {f.name}" for f in stack],
        }
    )
    return OSError(errno.ENETUNREACH, f"egress refused by the test guard: {address!r}")


def _is_literal(host: object) -> bool:
    if not host:
        return True
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    try:
        ipaddress.ip_address(str(host).split("%")[0])
    except ValueError:
        return False
    return True


def _write_resolve(host: object, addresses: list[str] | None) -> None:
    stack = traceback.extract_stack()[:-3][-12:]
    _write(
        {
            "event": "egress",
            "kind": "resolve",
            "pid": os.getpid(),
            "address": [str(host), addresses],
            "cmdline": _cmdline()[:4],
            "stack": [f"{f.filename}:{f.lineno} {f.name}" for f in stack],
        }
    )


def _install() -> None:
    cls = socket.socket
    connect, connect_ex, sendto = cls.connect, cls.connect_ex, cls.sendto

    def guarded_connect(self, address):
        if not _is_local(self.family, address):
            raise _refuse(self, "connect", address)
        return connect(self, address)

    def guarded_connect_ex(self, address):
        if not _is_local(self.family, address):
            return _refuse(self, "connect_ex", address).errno
        return connect_ex(self, address)

    def guarded_sendto(self, data, *args):
        address = args[-1]
        if not _is_local(self.family, address):
            raise _refuse(self, "sendto", address)
        return sendto(self, data, *args)

    cls.connect, cls.connect_ex, cls.sendto = guarded_connect, guarded_connect_ex, guarded_sendto

    def recorded_getaddrinfo(host, *args, **kwargs):
        # A name that is not in /etc/hosts costs a DNS query, which is egress in itself: record
        # lookups that fail or leave the host (the namespace's sink counts the packets).
        if _is_literal(host):
            return _getaddrinfo(host, *args, **kwargs)  # an address, not a name: no DNS
        try:
            infos = _getaddrinfo(host, *args, **kwargs)
        except OSError:
            _write_resolve(host, None)
            raise
        if host and not all(_is_host_ip(str(i[4][0])) for i in infos):
            _write_resolve(host, sorted({str(i[4][0]) for i in infos}))
        return infos

    socket.getaddrinfo = recorded_getaddrinfo
    _write(
        {
            "event": "start",
            "pid": os.getpid(),
            "ppid": os.getppid(),
            "cmdline": _cmdline(),
            "env": {k: os.environ.get(k) for k in OFFLINE_KEYS},
        }
    )


if _LOG:
    _install()
