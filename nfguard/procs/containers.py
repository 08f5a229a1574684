"""Which container a process runs in, and that container's name and image.

A container runtime puts each container's processes in a cgroup named after the
container's id: Docker `docker-<id>.scope` (or `/docker/<id>` with the cgroupfs driver),
Podman `libpod-<id>.scope`, containerd's CRI `cri-containerd-<id>.scope`, CRI-O
`crio-<id>.scope`. The id changes with every run; the name and image a policy speaks of
(the image as the reference it was started from, and as the id of the image that was) are
in the runtime's state on this host, written by its root daemon before the container
starts, so nothing inside the container can claim another's: Docker's
`containers/<id>/config.v2.json`, Podman's `overlay-containers/containers.json`, and for
a Kubernetes pod's container the annotations of its OCI runtime config, which the CRI
runtime sets from the pod (containerd's `io.containerd.runtime.v2.task/<namespace>/<id>/
config.json`, CRI-O's `overlay-containers/<id>/userdata/config.json`). A pod's container
is named `<namespace>/<pod>/<container>`; containerd's annotations carry no image id,
CRI-O's do.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from nfguard.config import ContainersConfig
from nfguard.lru import Memo
from nfguard.policy.model import IMAGE_ID_PREFIX

RETRY = 1.0  # seconds before a container whose state was not found is looked up again
MAX_STATE = 16 << 20  # bytes of one runtime state file read (Podman's lists every container)
MAX_CGROUPS = 4096  # cgroup paths whose container is remembered
_FOREVER = float("inf")

_RUNTIMES = {"docker": "docker", "libpod": "podman", "cri-containerd": "containerd",
             "crio": "cri-o"}
_DIGEST = re.compile(r"[0-9a-f]{64}")
_ID_IN_CGROUP = re.compile(
    r"/(?:(docker|libpod|cri-containerd|crio)-|(docker)/)([0-9a-f]{64})(?:\.scope)?(?=/|$)")


class Container(NamedTuple):
    runtime: str  # "docker" | "podman" | "containerd" | "cri-o"
    id: str
    name: str | None = None
    image: str | None = None  # the reference it was started from, e.g. "python:3.12-slim"
    image_id: str | None = None  # "sha256:<64 hex>": the image itself, whatever tags say now


def container_in(cgroup: str) -> tuple[str, str] | None:
    """(runtime, id) of the outermost container in a cgroup path (the one this host's
    runtime started; one nested in it belongs to a daemon inside), or None."""
    found = _ID_IN_CGROUP.search(cgroup)
    if found is None:
        return None
    return _RUNTIMES[found.group(1) or found.group(2)], found.group(3)


Identity = tuple[str | None, str | None, str | None]  # name, image reference, image id
UNNAMED: Identity = (None, None, None)


def docker_identity(text: str) -> Identity:
    """(name, image, image id) from Docker's config.v2.json of a container."""
    state = json.loads(text)
    if not isinstance(state, dict):
        return UNNAMED
    name, config = state.get("Name"), state.get("Config")
    image = config.get("Image") if isinstance(config, dict) else None
    return (_text(name.lstrip("/")) if isinstance(name, str) else None, _text(image),
            image_id(state.get("Image")))


def podman_identity(text: str, container_id: str) -> Identity | None:
    """(name, image, image id) of one container from Podman's containers.json (its storage
    records, whose metadata libpod fills), or None when it is not listed."""
    records = json.loads(text)
    for record in records if isinstance(records, list) else ():
        if isinstance(record, dict) and record.get("id") == container_id:
            metadata = _json_object(record.get("metadata"))
            names = record.get("names")
            name = metadata.get("name") or (names[0] if isinstance(names, list) and names
                                             else None)
            return _text(name), _text(metadata.get("image-name")), image_id(record.get("image"))
    return None


# The annotations a CRI runtime gives a pod's container: namespace, pod, container,
# image reference, and image id (CRI-O's storage id; containerd writes none).
PodKeys = tuple[str, str, str, str, "str | None"]
CONTAINERD_ANNOTATIONS: PodKeys = (
    "io.kubernetes.cri.sandbox-namespace", "io.kubernetes.cri.sandbox-name",
    "io.kubernetes.cri.container-name", "io.kubernetes.cri.image-name", None)
CRIO_ANNOTATIONS: PodKeys = (
    "io.kubernetes.pod.namespace", "io.kubernetes.pod.name", "io.kubernetes.container.name",
    "io.kubernetes.cri-o.ImageName", "io.kubernetes.cri-o.ImageRef")


def pod_identity(text: str, keys: PodKeys) -> Identity:
    """(namespace/pod/container, image, image id) from a pod container's OCI runtime
    config, its annotations under `keys` (a pod's sandbox has no container name:
    namespace/pod)."""
    spec = json.loads(text)
    annotations = _json_object(spec.get("annotations") if isinstance(spec, dict) else None)
    namespace_key, pod_key, container_key, image_key, id_key = keys
    namespace, pod, container = (_text(annotations.get(key))
                                 for key in (namespace_key, pod_key, container_key))
    name = "/".join(part for part in (namespace, pod, container) if part) if (
        namespace and pod) else None
    return (name, _text(annotations.get(image_key)),
            image_id(annotations.get(id_key)) if id_key else None)


def image_id(value: Any) -> str | None:
    """An image id as "sha256:<64 lower-case hex>" (Docker writes it so, Podman's storage
    bare), or None when it is not one."""
    if not isinstance(value, str):
        return None
    digest = value.removeprefix(IMAGE_ID_PREFIX)
    return IMAGE_ID_PREFIX + digest if _DIGEST.fullmatch(digest) else None


class Containers:
    """cgroup path → Container, names and images read from the runtimes' state once per
    container (a container whose state is missing is looked up again after RETRY)."""

    def __init__(self, settings: ContainersConfig | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings or ContainersConfig()
        self.clock = clock
        # cgroup path -> (container or None, monotonic time after which to look again)
        self._by_cgroup: Memo[str, tuple[Container | None, float]] = Memo(MAX_CGROUPS)

    def of(self, cgroup: str | None) -> Container | None:
        if not cgroup:
            return None
        known = self._by_cgroup.get(cgroup)
        if known is not None and (known[1] == _FOREVER or self.clock() < known[1]):
            return known[0]
        found = container_in(cgroup)
        if found is None:
            return self._by_cgroup.put(cgroup, (None, _FOREVER))[0]
        now = self.clock()
        runtime, container_id = found
        identity = self._identity(runtime, container_id)
        container = Container(runtime, container_id, *(identity or UNNAMED))
        return self._by_cgroup.put(
            cgroup, (container, _FOREVER if identity is not None else now + RETRY))[0]

    def _identity(self, runtime: str, container_id: str) -> Identity | None:
        settings = self.settings
        try:
            if runtime == "docker":
                return docker_identity(_read(os.path.join(
                    settings.docker_root, "containers", container_id, "config.v2.json")))
            if runtime == "podman":
                return podman_identity(_read(os.path.join(
                    settings.podman_root, "overlay-containers", "containers.json")),
                    container_id)
            if runtime == "containerd":
                return pod_identity(_read(_containerd_bundle(settings.containerd_state,
                                                             container_id)),
                                    CONTAINERD_ANNOTATIONS)
            return pod_identity(_read(os.path.join(  # cri-o
                settings.crio_runroot, "overlay-containers", container_id, "userdata",
                "config.json")), CRIO_ANNOTATIONS)
        except (OSError, ValueError):
            return None  # not written yet, gone, or not what it should be


def _containerd_bundle(state: str, container_id: str) -> str:
    """The OCI runtime config of a containerd task: in the bundle of its containerd
    namespace (the CRI plugin's is k8s.io, looked at first)."""
    tasks = os.path.join(state, "io.containerd.runtime.v2.task")
    for namespace in sorted(os.listdir(tasks), key=lambda name: (name != "k8s.io", name)):
        path = os.path.join(tasks, namespace, container_id, "config.json")
        if os.path.exists(path):
            return path
    raise FileNotFoundError(f"no containerd task {container_id} under {tasks}")


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as file:
        return file.read(MAX_STATE)


def _json_object(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return {}
    return value if isinstance(value, dict) else {}


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
