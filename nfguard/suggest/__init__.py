"""`nfguard suggest`: a policy that allows what audit events show, or what a policy denies
of it. Pure functions over parsed events; the CLI in `nfguard.cli` only reads files and
prints. Output is deterministic: the same events in any order give the same text.

- events: audit lines read back as flows and DNS queries (who, where, which name);
- build: the suggested policy, one client per sender, built and rendered as TOML;
- names: many sibling names collapsed into one wildcard, never past the registrable domain;
- check: what an existing policy would deny or refuse of the events (`--policy`);
- seen, text: counts and first/last seen; strings made safe for TOML.
"""
