"""End-to-end fixtures: a fresh two-namespace lab per test, always torn down."""

from __future__ import annotations

import contextlib
import datetime
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from nfguard.procs.cgroups import find_cgroup2_root
from tests.e2e.gateway_lab import GatewayLab
from tests.e2e.lab import ALLOWED_V4, OTHER_V4, Lab

LabT = TypeVar("LabT", bound=Lab)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/e2e" in str(item.path):
            item.add_marker(pytest.mark.root)


# Names the lab's DNS server and HTTPS certificate serve (see test_names.DNS_RECORDS).
NAMES = ("allowed.test", "denied.test", "alias.test")


def make_certs(directory: Path) -> tuple[Path, Path, Path]:
    """A test CA and a server certificate for every test name: (ca, cert, key) PEM paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "nfguard test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(hours=1))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, NAMES[0])]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in NAMES]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


@pytest.fixture
def named(lab: Lab, tmp_path: Path) -> Lab:
    """The lab with DNS, HTTPS (443) and HTTP (80) servers, and the test CA in lab.ca."""
    for tool in ("dnsmasq", "dig"):
        if subprocess.run(["which", tool], capture_output=True).returncode != 0:
            pytest.skip(f"{tool} is not installed (./bootstrap.sh test installs it)")
    ca, cert, key = make_certs(tmp_path)
    lab.ca = ca  # type: ignore[attr-defined]
    lab.serve_https(cert, key)
    lab.serve_http(80)
    return lab


@pytest.fixture
def dns_log(lab: Lab) -> Path:
    """The lab's DNS server (dnsmasq) logging every query it receives to the returned file;
    it answers allowed.test, *.allowed.test and every name under attacker.test."""
    if subprocess.run(["which", "dnsmasq"], capture_output=True).returncode != 0:
        pytest.skip("dnsmasq is not installed (./bootstrap.sh test installs it)")
    log = lab.workdir / "dnsmasq-queries.log"
    lab.serve_dns("--log-queries", f"--log-facility={log}",
                  f"--address=/allowed.test/{ALLOWED_V4}", f"--address=/attacker.test/{OTHER_V4}")
    return log


def needs(*tools: str) -> None:
    """Skip unless root (network namespaces, the kernel queue) and `tools` are there."""
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces and the kernel queue")
    for tool in ("ip", "nft", "curl", *tools):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (./bootstrap.sh test installs it)")


@contextlib.contextmanager
def started(lab: LabT) -> Iterator[LabT]:
    """The lab, started; closed on the way out, and nothing of it left behind."""
    try:
        yield lab.start()  # within the try: a lab that starts half way is removed too
    finally:
        lab.close()
        assert not lab.namespaces_left(), f"namespaces left behind: {lab.namespaces_left()}"


@pytest.fixture
def lab(tmp_path) -> Iterator[Lab]:  # type: ignore[no-untyped-def]
    needs()
    with started(Lab(tmp_path)) as made:
        yield made


@pytest.fixture
def gateway(tmp_path) -> Iterator[GatewayLab]:  # type: ignore[no-untyped-def]
    """Four namespaces: two LAN clients, the gateway (nfguard's host) and the server."""
    needs("dnsmasq", "dig")
    with started(GatewayLab(tmp_path)) as made:
        yield made


@contextlib.contextmanager
def made_cgroup(name: str) -> Iterator[Path]:
    """A cgroup of that name under the cgroup v2 root; its processes killed and it
    removed on the way out."""
    root = find_cgroup2_root()
    if root is None:
        pytest.skip("no cgroup v2 mount")
    path = Path(root) / name
    path.mkdir()
    try:
        yield path
    finally:
        kill = path / "cgroup.kill"
        if kill.exists():
            kill.write_text("1")
        for _ in range(100):
            try:
                path.rmdir()
                break
            except OSError:
                time.sleep(0.05)
    assert not path.exists()


@pytest.fixture
def test_cgroup() -> Iterator[Path]:
    with made_cgroup(f"nfguard-test-{uuid.uuid4().hex[:8]}.service") as path:
        yield path


@pytest.fixture
def docker_scope() -> Iterator[Path]:
    """A cgroup named as Docker names a container's (docker-<64 hex id>.scope)."""
    with made_cgroup(f"docker-{uuid.uuid4().hex}{uuid.uuid4().hex}.scope") as path:
        yield path


@pytest.fixture(params=["containerd", "cri-o"])
def pod_scope(request: pytest.FixtureRequest) -> Iterator[tuple[str, Path]]:
    """A cgroup named as a CRI runtime names a Kubernetes pod's container's
    (cri-containerd-<id>.scope, crio-<id>.scope), and that runtime."""
    prefix = {"containerd": "cri-containerd", "cri-o": "crio"}[request.param]
    with made_cgroup(f"{prefix}-{uuid.uuid4().hex}{uuid.uuid4().hex}.scope") as path:
        yield request.param, path


@pytest.fixture(scope="session", autouse=True)
def nothing_left_behind(tmp_path_factory) -> Iterator[None]:  # type: ignore[no-untyped-def]
    """After the whole e2e run: no lab namespace and no engine of this session remains."""
    yield
    if os.geteuid() != 0:
        return
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    prefix = f"nfg{os.getpid() % 100000}x"
    ours = [line for line in namespaces.splitlines() if line.startswith(prefix)]
    assert not ours, f"namespaces left behind: {ours}"
    base = str(tmp_path_factory.getbasetemp())
    engines = subprocess.run(["pgrep", "-f", f"nfguard run --config {base}/"],
                             capture_output=True, text=True).stdout.split()
    assert not engines, f"engines left running: {engines}"
