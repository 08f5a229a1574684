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

# The DNS rebinding guard ([names] private, issue 26): a public name's rule, a CIDR rule
# naming one internal network, and an opted-in rule for the host's internal names
# (test_engine; explain and suggest too).
PRIVATE_NAMES = """\
[[client]]
name = "lenient"
match = { user = "lenient" }
policies = ["web"]

[[client]]
name = "everyone"
policies = ["web", "deny-rest"]

[[policy]]
name = "web"

[[policy.rule]]
name = "api"
action = "allow"
to = ["api.example.com"]
ports = [80, 443, 5000]

[[policy.rule]]
name = "db-net"
action = "allow"
to = ["10.1.2.0/24"]
ports = [5000]

[[policy.rule]]
name = "corp"
action = "allow"
to = ["**.corp.example"]
ports = [80, 443, 5000]
private = true

[[policy]]
name = "deny-rest"

[[policy.rule]]
name = "everything"
action = "deny"
"""

# `nfguard exec` under the service (issue 25): the host's policy, and a command's own.
EXEC_HOST = """\
[[client]]
name = "everyone"
policies = ["host"]

[[policy]]
name = "host"

[[policy.rule]]
name = "web"
action = "allow"
to = ["198.51.100.0/24", "pkg.example.org", "api.example.com"]
ports = [443]

[[policy.rule]]
name = "no-vault"
action = "deny"
to = ["203.0.113.0/24", "vault.example"]
"""

EXEC_COMMAND = """\
[[client]]
name = "build"
policies = ["build"]

[[policy]]
name = "build"

[[policy.rule]]
name = "packages"
action = "allow"
to = ["pkg.example.org"]
ports = [443]

[[policy.rule]]
name = "vault"
action = "allow"
to = ["203.0.113.7", "vault.example"]
"""
