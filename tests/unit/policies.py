"""Policies shared by the unit tests of several modules (parse once, use anywhere)."""

from __future__ import annotations

# Which names a client may resolve (issue 24): the query decision (policy/test_resolve.py),
# and the pipeline and explain once queries are wired to them.
QUERIES = """\
[[client]]
name = "app"
match = { user = "app" }
policies = ["app"]

[[client]]
name = "strict"
match = { user = "strict" }
policies = ["app", "deny-all"]

[[client]]
name = "ops"
match = { user = "ops" }
policies = ["https-anywhere"]

[[client]]
name = "legacy"
match = { user = "legacy" }
policies = ["app"]
queries = "any"

[[client]]
name = "judged"
match = { user = "judged" }
policies = ["app"]
queries = "policy"

[[policy]]
name = "app"

[[policy.rule]]
name = "dns"
action = "allow"
to = ["@resolvers"]
ports = [53]

[[policy.rule]]
name = "no-tunnel"
action = "deny"
to = ["**.attacker.example"]
ports = [443]

[[policy.rule]]
name = "api"
action = "allow"
to = ["api.example.com", "*.attacker.example", "10.20.0.0/16", "2001:db8:20::/48"]
ports = [443]
proto = "tcp"

[[policy.rule]]
name = "no-secret"
action = "deny"
resolve = ["secret.svc.example"]

[[policy.rule]]
name = "discovery"
action = "allow"
resolve = ["_ldap._tcp.example.org", "**.svc.example"]

[[policy.rule]]
name = "db"
action = "allow"
to = ["192.0.2.0/24"]
ports = [5432]

[[policy.rule]]
name = "blocked-net"
action = "deny"
to = ["198.51.100.0/24"]

[[policy]]
name = "deny-all"

[[policy.rule]]
name = "rest"
action = "deny"

[[policy]]
name = "https-anywhere"

[[policy.rule]]
name = "web"
action = "allow"
ports = [443]
proto = "tcp"
"""
