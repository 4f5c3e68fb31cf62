"""A multi-node Ray cluster on this host for the tests, and a check that it stays on 127.0.0.1.

``start`` uses Ray's own multi-node test utility (``ray.cluster_utils.Cluster``: one GCS and
several raylets, each with its own workers) with every node on ``127.0.0.1``. Import this module
before ``ray`` is imported anywhere: it sets ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, without
which Ray swaps 127.0.0.1 for the machine's own address (``services.resolve_ip_for_localhost``).
``non_loopback_sockets`` lists every TCP/UDP socket of this process and its descendants (GCS,
raylets, agents, workers, a driver subprocess) bound to or connected to anything but loopback.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

LOOPBACK = "127.0.0.1"
PLUGIN = str(Path(__file__).resolve().parent / "ray_plugin.py")


def start(nodes: int = 3, cpus: int = 1):
    """A cluster of ``nodes`` nodes (the head included) of ``cpus`` CPUs each, all on
    127.0.0.1; the caller shuts it down (``cluster.shutdown()``)."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args=dict(
        node_ip_address=LOOPBACK, num_cpus=cpus, include_dashboard=False))
    for _ in range(nodes - 1):
        add_node(cluster, cpus=cpus)
    return cluster


def add_node(cluster, cpus: int = 1, env: dict | None = None):
    """One more node on 127.0.0.1; ``env``: environment variables of its raylet, which its
    agents and workers inherit (a node with another install, simulated)."""
    return cluster.add_node(node_ip_address=LOOPBACK, num_cpus=cpus, env_vars=env)


def label(node) -> str:
    """How the executor names a node: ``NodeManagerAddress:NodeManagerPort``."""
    import ray

    for info in ray.nodes():
        if info["NodeID"] == node.node_id:
            return f"{info['NodeManagerAddress']}:{info['NodeManagerPort']}"
    raise KeyError(node.node_id)


def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = {root}, [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _socket_inodes(pids: set[int]) -> dict[str, int]:
    inodes = {}
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes[target[8:-1]] = pid
    return inodes


def _address(hex_address: str) -> tuple[ipaddress._BaseAddress, int]:
    host, port = hex_address.split(":")
    raw = bytes.fromhex(host)
    # /proc/net lists each 32-bit word in host (little-endian) order
    raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    ip = ipaddress.ip_address(socket.inet_ntop(
        socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw))
    if getattr(ip, "ipv4_mapped", None):
        ip = ip.ipv4_mapped
    return ip, int(port, 16)


def non_loopback_sockets(root: int | None = None) -> list[str]:
    """Sockets of ``root`` (default: this process) and its descendants whose local address, or
    whose peer when connected, is not a loopback address: ``proto pid local -> peer``."""
    inodes = _socket_inodes(_descendants(root or os.getpid()))
    bad = []
    for proto in ("tcp", "tcp6", "udp", "udp6"):
        try:
            with open(f"/proc/net/{proto}") as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[9] not in inodes:
                continue
            (local, lport), (peer, pport) = _address(fields[1]), _address(fields[2])
            connected = not (peer.is_unspecified and pport == 0)
            if not local.is_loopback or (connected and not peer.is_loopback):
                bad.append(f"{proto} pid {inodes[fields[9]]} {local}:{lport} -> {peer}:{pport}")
    return bad
