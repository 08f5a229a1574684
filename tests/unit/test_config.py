"""The daemon config: DESIGN.md's defaults, and every error named by file and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from nfguard.config import (
    DEFAULT_FORWARD_FROM,
    DEFAULT_PATH,
    AuditConfig,
    Config,
    ContainersConfig,
    ControlConfig,
    EngineConfig,
    MetricsConfig,
    control_socket,
    load_config,
    parse_config,
)
from nfguard.policy.load import PolicyError


def problems(text: str, path: str = "/etc/nfguard/nfguard.toml") -> list[str]:
    with pytest.raises(PolicyError) as info:
        parse_config(text, path)
    return [str(p) for p in info.value.problems]


def test_defaults_are_design_md_defaults() -> None:
    config = Config()
    assert DEFAULT_PATH == "/etc/nfguard/nfguard.toml"
    assert config.path == DEFAULT_PATH
    assert config.engine == EngineConfig(
        mode="enforce", default="deny", fail="closed", queue=0,
        policy_dir="/etc/nfguard/rules", filter_loopback=False,
    )
    assert (config.engine.mode, config.engine.default, config.engine.fail,
            config.engine.queue, config.engine.policy_dir) == (
        "enforce", "deny", "closed", 0, "/etc/nfguard/rules")
    assert (config.audit.path, config.audit.format) == ("/var/log/nfguard/audit.jsonl", "json")
    assert config.metrics.listen == "127.0.0.1:9808"


def test_empty_file_gives_defaults() -> None:
    config = parse_config("", "/etc/nfguard/nfguard.toml")
    assert config == Config()


def test_design_md_example_parses_to_defaults() -> None:
    text = """\
[engine]
mode = "enforce"      # "enforce" | "audit"
default = "deny"      # decision when no rule matches
fail = "closed"       # "closed" | "open"
queue = 0             # NFQUEUE number
policy_dir = "/etc/nfguard/rules"   # every *.toml in it, in file-name order

[audit]
path = "/var/log/nfguard/audit.jsonl"   # "-" for stdout
format = "json"                          # "json" | "text"

[metrics]
listen = "127.0.0.1:9808"   # Prometheus; "" turns it off
"""
    assert parse_config(text, DEFAULT_PATH) == Config()


def test_every_value_set(tmp_path: Path) -> None:
    path = tmp_path / "nfguard.toml"
    path.write_text("""\
[engine]
mode = "audit"
default = "allow"
fail = "open"
queue = 65535
policy_dir = "/srv/rules"
filter_loopback = true
queue_maxlen = 128

[audit]
path = "-"
format = "text"

[metrics]
listen = "[::1]:9100"
tls_cert = "/etc/nfguard/tls/cert.pem"
tls_key = "tls/key.pem"

[control]
socket = "/run/other/nfguard.sock"
""")
    config = load_config(path)
    assert config == Config(
        path=str(path),
        engine=EngineConfig("audit", "allow", "open", 65535, "/srv/rules", True, queue_maxlen=128),
        audit=AuditConfig("-", "text"),
        metrics=MetricsConfig("[::1]:9100", "/etc/nfguard/tls/cert.pem",
                              str(tmp_path / "tls" / "key.pem")),
        control=ControlConfig("/run/other/nfguard.sock"),
    )


def test_relative_policy_dir_is_resolved_against_the_config_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    (tmp_path / "etc").mkdir()
    path = tmp_path / "etc" / "nfguard.toml"
    path.write_text('[engine]\npolicy_dir = "rules.d"\n')
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert load_config(path).engine.policy_dir == str(tmp_path / "etc" / "rules.d")
    # Also when the config itself was named by a relative path.
    assert load_config("../etc/nfguard.toml").engine.policy_dir == \
        str(tmp_path / "etc" / "rules.d")
    # Absolute directories are kept as written.
    path.write_text('[engine]\npolicy_dir = "/opt/rules"\n')
    assert load_config(path).engine.policy_dir == "/opt/rules"


def test_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as info:
        load_config(tmp_path / "none.toml")
    assert str(info.value).startswith(f"{tmp_path / 'none.toml'}:0: cannot read config: ")


def test_toml_syntax_error() -> None:
    assert problems('[engine]\nmode = enforce\n', "c.toml") == [
        "c.toml:2: invalid TOML: Invalid value",
    ]


def test_unknown_section_and_key() -> None:
    assert problems('[engine]\nmode = "audit"\nspeed = 3\n\n[logging]\nlevel = 1\n', "c.toml") \
        == [
            "c.toml:3: unknown key 'speed' in [engine] (allowed: mode, default, fail, queue, "
            "policy_dir, filter_loopback, workers, queue_maxlen, new_flows_per_user, forward_from)",
            "c.toml:5: unknown section 'logging' "
            "(allowed: engine, audit, metrics, names, control, containers)",
        ]


def test_top_level_key_is_an_unknown_section() -> None:
    assert problems('mode = "audit"\n', "c.toml") == [
        "c.toml:1: unknown section 'mode' (allowed: engine, audit, metrics, names, control, "
        "containers)",
    ]


@pytest.mark.parametrize(("line", "message"), [
    ('mode = "learn"', "engine.mode must be one of enforce | audit, not 'learn'"),
    ('default = "reject"', "engine.default must be one of allow | deny, not 'reject'"),
    ('fail = "half"', "engine.fail must be one of closed | open, not 'half'"),
    ("queue = 65536", "engine.queue must be 0-65535"),
    ("queue = -1", "engine.queue must be 0-65535"),
    ('queue = "0"', "engine.queue must be a int"),
    ("queue = true", "engine.queue must be a int"),
    ("queue = 1.0", "engine.queue must be a int"),
    ("mode = 1", "engine.mode must be a str"),
    ("policy_dir = []", "engine.policy_dir must be a str"),
    ('filter_loopback = "yes"', "engine.filter_loopback must be a bool"),
    ("filter_loopback = 1", "engine.filter_loopback must be a bool"),
    ('forward_from = "docker0"', "engine.forward_from must be a list"),
    ('forward_from = ["docker0", "my bridge", "*", "br-*x", "abcdefghijklmnop", 7]',
     'engine.forward_from takes interface names, or a prefix and * ("docker0", "br-*"), '
     "not 'my bridge', '*', 'br-*x', 'abcdefghijklmnop', 7"),
])
def test_engine_errors_with_file_and_line(line: str, message: str) -> None:
    text = f"# nfguard\n\n[engine]\n# the engine\n{line}\nqueue = 3\n"
    if line.startswith("queue"):
        text = text.replace("queue = 3\n", "")
    assert problems(text, "/x/c.toml") == [f"/x/c.toml:5: {message}"]


def test_audit_and_metrics_errors() -> None:
    text = '[audit]\nformat = "xml"\npath = 3\n\n[metrics]\nlisten = 9808\n'
    assert problems(text, "c.toml") == [
        "c.toml:2: audit.format must be one of json | text, not 'xml'",
        "c.toml:3: audit.path must be a str",
        "c.toml:6: metrics.listen must be a str",
    ]


def test_section_that_is_not_a_table() -> None:
    assert problems('engine = "enforce"\n', "c.toml") == [
        "c.toml:1: unknown section 'engine' (allowed: engine, audit, metrics, names, control, "
        "containers)",
    ]


def test_all_errors_reported_together() -> None:
    text = '[engine]\nmode = "x"\nfail = "y"\nqueue = 99999\n[audit]\nformat = "z"\nwho = 1\n'
    assert [p.split(": ")[0] for p in problems(text, "c.toml")] == [
        "c.toml:2", "c.toml:3", "c.toml:4", "c.toml:6", "c.toml:7",
    ]


def test_workers_bounds() -> None:
    assert parse_config("[engine]\nworkers = 2\n", "c.toml").engine.workers == 2
    for bad, message in (("0", "engine.workers must be >= 1"),
                         ("65", "engine.workers must be 1-64")):
        with pytest.raises(PolicyError) as err:
            parse_config(f"[engine]\nworkers = {bad}\n", "c.toml")
        assert f"c.toml:2: {message}" in str(err.value)
def test_service_defaults() -> None:
    config = Config()
    assert config.control.socket == "/run/nfguard/nfguard.sock"
    assert config.engine.queue_maxlen == 4096
    assert (config.metrics.tls_cert, config.metrics.tls_key) == ("", "")
    assert parse_config('[control]\nsocket = ""\n', "c.toml").control.socket == ""


def test_service_key_errors() -> None:
    assert problems('[metrics]\nlisten = "127.0.0.1:9808"\ntls_cert = "c.pem"\n', "c.toml") \
        == ["c.toml:3: metrics.tls_cert and metrics.tls_key go together: set both (HTTPS) or "
            "neither"]
    assert problems('[metrics]\n\ntls_key = "k.pem"\n', "c.toml") == [
        "c.toml:3: metrics.tls_cert and metrics.tls_key go together: set both (HTTPS) or "
        "neither"]
    assert problems('[control]\nsocket = "nfguard.sock"\n', "c.toml") == [
        "c.toml:2: control.socket must be an absolute path (or \"\" for off), "
        "not 'nfguard.sock'"]
    assert problems('[engine]\nqueue_maxlen = 0\n', "c.toml") == [
        "c.toml:2: engine.queue_maxlen must be >= 1, not 0"]


def test_new_flows_per_user_is_a_rate_and_0_turns_the_meter_off() -> None:
    assert Config().engine.new_flows_per_user == 2000
    assert parse_config("[engine]\nnew_flows_per_user = 0\n", "c.toml").engine \
        .new_flows_per_user == 0
    assert problems("[engine]\nnew_flows_per_user = -1\n", "c.toml") == [
        "c.toml:2: engine.new_flows_per_user must be >= 0, not -1"]


def test_control_socket_is_found_even_in_a_broken_config(tmp_path: Path) -> None:
    """`nfguard reload` must reach the daemon to be told what is wrong with the file."""
    path = tmp_path / "nfguard.toml"
    path.write_text('[engine]\nmode = "loud"\n[control]\nsocket = "/run/x/n.sock"\n')
    assert control_socket(path) == "/run/x/n.sock"
    path.write_text('[engine\n')
    assert control_socket(path) == "/run/nfguard/nfguard.sock"
    assert control_socket(tmp_path / "missing.toml") == "/run/nfguard/nfguard.sock"
    path.write_text('[control]\nsocket = "/run/y/n.sock"\n')
    assert control_socket(path) == "/run/y/n.sock"


def test_names_queries_are_judged_by_policy_unless_any() -> None:
    assert parse_config("", "c.toml").names.queries == "policy"
    assert parse_config('[names]\nqueries = "any"\n', "c.toml").names.queries == "any"
    assert problems('[names]\nverify = true\nqueries = "none"\n') == [
        "/etc/nfguard/nfguard.toml:3: names.queries must be one of policy | any, not 'none'"]
    assert problems("[names]\nqueries = true\n") == [
        "/etc/nfguard/nfguard.toml:2: names.queries must be a str"]


def test_names_private_is_allow_on_a_host_unless_deny() -> None:
    assert parse_config("", "c.toml").names.private == "allow"
    assert parse_config('[names]\nprivate = "deny"\n', "c.toml").names.private == "deny"
    assert problems('[names]\nprivate = "block"\n') == [
        "/etc/nfguard/nfguard.toml:2: names.private must be one of allow | deny, not 'block'"]


def test_names_resolvers_are_the_systems_or_addresses_and_networks() -> None:
    config = parse_config('[names]\nresolvers = ["127.0.0.53", "10.1.2.3/8", "::1"]\n', "c.toml")
    assert config.names.resolvers == ("127.0.0.53/32", "10.0.0.0/8", "::1/128")
    assert parse_config("", "c.toml").names.resolvers == "system", "by default: the host's"
    assert parse_config('[names]\nresolvers = "system"\n', "c.toml").names.resolvers == "system"
    assert parse_config('[names]\nresolvers = []\n', "c.toml").names.resolvers == ()
    assert problems('[names]\nverify = true\nresolvers = ["dns.example", 53]\n') == [
        '/etc/nfguard/nfguard.toml:3: names.resolvers takes addresses and networks '
        '("10.0.0.53", "127.0.0.0/8"), not \'dns.example\', 53']
    assert problems('[names]\nresolvers = "127.0.0.1"\n') == [
        '/etc/nfguard/nfguard.toml:2: names.resolvers must be "system" or a list of addresses '
        "and networks, not '127.0.0.1'"]


def test_forward_from_names_interfaces_and_prefixes() -> None:
    config = parse_config('[engine]\nforward_from = ["docker0", "br-*", "docker0", '
                          '"abcdefghijklmno", "abcdefghijklmn*"]\n', "c.toml")
    assert config.engine.forward_from == ("docker0", "br-*", "abcdefghijklmno",
                                          "abcdefghijklmn*")
    assert parse_config("", "c.toml").engine.forward_from == DEFAULT_FORWARD_FROM
    assert "docker0" in DEFAULT_FORWARD_FROM and "br-*" in DEFAULT_FORWARD_FROM
    assert parse_config("[engine]\nforward_from = []\n", "c.toml").engine.forward_from == ()


def test_containers_state_roots_are_absolute_and_shipped_as_the_defaults() -> None:
    config = parse_config('[containers]\ndocker_root = "/srv/docker"\n', "c.toml")
    assert config.containers == ContainersConfig(docker_root="/srv/docker")
    assert problems('[containers]\npodman_root = "storage"\n') == [
        "/etc/nfguard/nfguard.toml:2: containers.podman_root must be an absolute path, "
        "not 'storage'"]
    assert problems('[containers]\ncrio_runroot = "run"\ncontainerd_state = "/run/k3s/c"\n') \
        == ["/etc/nfguard/nfguard.toml:2: containers.crio_runroot must be an absolute path, "
            "not 'run'"]
    shipped = Path(__file__).resolve().parents[2] / "etc/nfguard/nfguard.toml"
    assert parse_config(shipped.read_text(), str(shipped)).containers == ContainersConfig()
