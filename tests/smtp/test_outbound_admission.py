"""Admission on the outbound listener (engine/smtp/outbound.py): who may connect, who may log in."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from engine.graph.build.compiler import load_graph
from engine.graph.filter_graph import FilterGraph
from engine.policy.users import hash_password
from engine.smtp.outbound import REPLY_NOT_ADMITTED, AuthIdentity, OutboundHandler, auth_possible
from tests.support.policies import write_policy

GATEWAY = "hostname: mx.example.com\nlisteners:\n  outbound: {port: 2587}\n"
TLS = "tls: {cert: c.pem, key: 'env:TLS_KEY'}\n"
ACME = "name: acme\ndomains: [acme.example]\nroutes: [{host: a.example}]\noutbound: {networks: [198.51.100.0/24]}\n"
BETA = "name: beta\ndomains: [beta.example]\nroutes: [{host: b.example}]\noutbound: {auth: {users: ../beta-users}}\n"
GAMMA = "name: gamma\ndomains: [gamma.example]\nroutes: [{host: g.example}]\noutbound: {auth: {users: ../g-users}}\n"


def graph_of(root: Path, files: dict[str, str]) -> FilterGraph:
    write_policy(root, files)
    result = load_graph(root)
    assert result.graph is not None, result.problems
    return result.graph


def handler(graph: FilterGraph, root: Path) -> OutboundHandler:
    store: Any = object()  # admission never touches the store
    return OutboundHandler(policy_dir=lambda: root, current_graph=lambda: graph, store=store, relay=None,
                           log_format=lambda: "text")


def test_strangers_are_refused_at_connect_unless_auth_is_possible(tmp_path: Path) -> None:
    without_auth = graph_of(tmp_path / "a", {"gateway.yaml": GATEWAY + TLS, "tenants/acme.yaml": ACME})
    assert not auth_possible(without_auth.gateway, without_auth)
    assert handler(without_auth, tmp_path).admitted("198.51.100.7") is None
    assert handler(without_auth, tmp_path).admitted("192.0.2.1") == REPLY_NOT_ADMITTED
    assert handler(without_auth, tmp_path).admitted("::ffff:198.51.100.7") is None  # IPv4-mapped
    with_auth = graph_of(tmp_path / "c", {"gateway.yaml": GATEWAY + TLS, "tenants/beta.yaml": BETA})
    assert auth_possible(with_auth.gateway, with_auth)
    assert handler(with_auth, tmp_path).admitted("192.0.2.1") is None  # it may log in (530 at MAIL before)


def test_a_user_authenticates_with_its_password_as_its_own_tenant_only(tmp_path: Path) -> None:
    root = tmp_path / "policy"
    graph = graph_of(root, {"gateway.yaml": GATEWAY + TLS, "tenants/beta.yaml": BETA, "tenants/gamma.yaml": GAMMA})
    users = tmp_path / "beta-users"
    users.write_text(f"alice:{hash_password('pw-a')}\nshared:{hash_password('pw-s')}\nbob:plaintext\n")
    (tmp_path / "g-users").write_text(f"carol:{hash_password('pw-c')}\nshared:{hash_password('pw-s')}\n")
    front = handler(graph, root)

    def login(user: str, password: str) -> AuthIdentity | None:
        return asyncio.run(front.authenticate(user.encode(), password.encode()))

    assert login("alice", "pw-a") == AuthIdentity("alice", "beta")
    assert login("carol", "pw-c") == AuthIdentity("carol", "gamma")
    assert login("alice", "pw-c") is None and login("nobody", "pw-a") is None
    assert login("bob", "plaintext") is None  # a plaintext line is never a password
    assert login("shared", "pw-s") is None  # listed by two tenants: belongs to neither
    # an edited users file takes effect at the next AUTH, without a reload
    users.write_text(f"alice:{hash_password('new')}\n")
    stat = users.stat()
    os.utime(users, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert login("alice", "pw-a") is None and login("alice", "new") == AuthIdentity("alice", "beta")
