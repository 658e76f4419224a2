"""Network namespaces for the lab test: one per node, each with its own veth link to the root
namespace (where the broker runs) and its own addresses in 198.18.0.0/15, the range set aside
for network tests (RFC 2544): no real host is there."""

from __future__ import annotations

import os
import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from tests.security import pki


def _ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)


def why_no_namespaces() -> str | None:
    """Why this machine cannot make network namespaces, or None if it can."""
    if os.geteuid() != 0:
        return "making network namespaces needs root"
    probe = f"grid-probe-{secrets.token_hex(3)}"
    made = _ip("netns", "add", probe)
    if made.returncode != 0:
        return f"ip netns add failed: {made.stderr.strip() or made.returncode}"
    _ip("netns", "del", probe)
    return None


@dataclass
class Link:
    """One node's namespace and its link: host side `host_if` (host_ip), node side eth0 (node_ip)."""

    ns: str
    host_if: str
    host_ip: str
    node_ip: str

    def exec_prefix(self) -> tuple[str, ...]:
        return ("ip", "netns", "exec", self.ns)

    def cut(self) -> None:
        """Pull the cable: the host side of the link goes down."""
        _check(_ip("link", "set", self.host_if, "down"))

    def mend(self) -> None:
        _check(_ip("link", "set", self.host_if, "up"))


def _check(done: subprocess.CompletedProcess) -> None:
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(done.args)}: {done.stderr.strip()}")


def make_links(count: int) -> list[Link]:
    """`count` namespaces, node i at 198.18.<tag+i>.2 with the root side at .1."""
    tag = secrets.token_hex(2)
    base = 16 + int(tag, 16) % 200  # a third octet range of our own, should two runs overlap
    links = []
    try:
        for i in range(count):
            ns, host_if = f"grid-lab-{tag}-{i}", f"gl{tag}{i}h"
            host_ip, node_ip = f"198.18.{base + i}.1", f"198.18.{base + i}.2"
            links.append(Link(ns, host_if, host_ip, node_ip))
            for args in (("netns", "add", ns), ("link", "add", host_if, "type", "veth", "peer", "name", f"gl{tag}{i}n"),
                         ("link", "set", f"gl{tag}{i}n", "netns", ns),
                         ("addr", "add", f"{host_ip}/24", "dev", host_if), ("link", "set", host_if, "up"),
                         ("-n", ns, "link", "set", f"gl{tag}{i}n", "name", "eth0"),
                         ("-n", ns, "addr", "add", f"{node_ip}/24", "dev", "eth0"),
                         ("-n", ns, "link", "set", "eth0", "up"), ("-n", ns, "link", "set", "lo", "up")):
                _check(_ip(*args))
    except Exception:
        remove_links(links)
        raise
    return links


def remove_links(links: list[Link]) -> None:
    """Delete the namespaces (their veth ends go with them, and so do the host ends)."""
    for link in links:
        _ip("link", "del", link.host_if)
        _ip("netns", "del", link.ns)


def lab_pki(d: Path, ips: list[str]) -> pki.Pki:
    """A CA, a server certificate valid for every address the broker listens on, a client one."""
    d.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = pki._issue("lab CA", ca_key, pki._name("lab CA"), ca_key, ca=True)
    srv_key = ec.generate_private_key(ec.SECP256R1())
    srv = pki._issue(ips[0], srv_key, ca.subject, ca_key, usage=[ExtendedKeyUsageOID.SERVER_AUTH], ips=tuple(ips))
    cli_key = ec.generate_private_key(ec.SECP256R1())
    cli = pki._issue("lab client", cli_key, ca.subject, ca_key, usage=[ExtendedKeyUsageOID.CLIENT_AUTH])
    return pki.Pki(ca=pki._write_cert(ca, d / "ca.pem"),
                   server_cert=pki._write_cert(srv, d / "server.pem"), server_key=pki._write_key(srv_key, d / "server.key"),
                   client_cert=pki._write_cert(cli, d / "client.pem"), client_key=pki._write_key(cli_key, d / "client.key"))
