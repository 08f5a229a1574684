"""What the installed package carries: its version (from the distribution's metadata) and
the default config and policies (nfguard/data), so that an installed nfguard (`pip
install`, the Debian package) sets a host up without the source checkout. The data is read
through importlib.resources, wherever the package lives (a wheel, a zip, a venv)."""

from __future__ import annotations

import re
from importlib import metadata, resources
from importlib.resources.abc import Traversable
from pathlib import Path

from nfguard.config import load_config

DATA = "data"
CONFIG = "nfguard.toml"
RULES = "rules"
BASE_POLICY = "base.toml"  # what a new host starts with; the rest are examples
# The shipped config's one line that names where policies are: rewritten for a config
# written elsewhere than /etc/nfguard, so that its rules sit beside it.
_POLICY_DIR_LINE = re.compile(r'^policy_dir = "[^"]*"', re.M)
NOT_INSTALLED = "unknown (no package metadata: nfguard is not installed)"


def data() -> Traversable:
    return resources.files("nfguard").joinpath(DATA)


def version() -> str:
    """The installed distribution's version (what pip or the Debian package installed)."""
    try:
        return metadata.version("nfguard")
    except metadata.PackageNotFoundError:
        return NOT_INSTALLED


def default_config(policy_dir: str) -> str:
    """The shipped config with its policies read from `policy_dir`."""
    text = data().joinpath(CONFIG).read_text(encoding="utf-8")
    rewritten, count = _POLICY_DIR_LINE.subn(f"policy_dir = {_toml_string(policy_dir)}", text,
                                             count=1)
    if count != 1:
        raise RuntimeError(f"the shipped {CONFIG} has no policy_dir line")
    return rewritten


def policies() -> dict[str, str]:
    """The shipped policy files by name: base.toml and the examples for server tiers."""
    return {entry.name: entry.read_text(encoding="utf-8")
            for entry in sorted(data().joinpath(RULES).iterdir(), key=lambda e: e.name)
            if entry.name.endswith(".toml")}


def install_defaults(config_path: str | Path) -> list[Path]:
    """Put the default config at `config_path` (its rules beside it) when there is none, and
    base.toml in the config's policy_dir when that holds no policy; never overwrite. Returns
    what was written."""
    config = Path(config_path)
    written: list[Path] = []
    if not config.exists():
        _write(config, default_config(str(config.parent.absolute() / RULES)))
        written.append(config)
    policy_dir = Path(load_config(config).engine.policy_dir)
    if not policy_dir.is_dir() or not any(policy_dir.glob("*.toml")):
        target = policy_dir / BASE_POLICY
        _write(target, policies()[BASE_POLICY])
        written.append(target)
    return written


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    temporary.chmod(0o644)
    temporary.replace(path)


def _toml_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
