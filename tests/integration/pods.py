"""Real containers for the pod tests: the tunmesh image built with podman, run as sidecars in "pods".

A pod is a network namespace made by :class:`tests.netns.Underlay` (198.18.0.<i> on a bridge); every container
of that pod runs with ``--network ns:/run/netns/<name>``, so they share the namespace exactly like the
containers of a Kubernetes pod share the pause container's. Podman's own networks are never used.

The images are built by ``contrib/container/build.sh`` (the base image is made with debootstrap when missing,
no image registry) and stay cached between runs. Container names carry the test process's pid
(``tmt-ctr<pid>-...``), so :func:`cleanup_stale_containers` removes what a crashed run left without touching a
concurrent one.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from tests.netns import REPO_ROOT, Namespace, NetnsError, netns_unavailable_reason

IMAGE = os.environ.get("TUNMESH_IMAGE", "localhost/tunmesh:dev")
APP_IMAGE = "localhost/tunmesh-testapp:dev"
RUNTIME = os.environ.get("PODMAN_RUNTIME", "runc")
#: Host quirks some machines need (docs/container.md): runc (crun refuses a hybrid cgroup layout) and rlimits at
#: or below the current hard limits (podman cannot raise them without CAP_SYS_RESOURCE).
RUN_FLAGS = ("--runtime", RUNTIME, "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096")
#: Least privilege for the sidecar, as documented in the Dockerfile and docs/container.md.
SIDECAR_PRIVILEGES = (
    "--cap-drop", "ALL", "--cap-add", "NET_ADMIN", "--cap-add", "SETUID", "--cap-add", "SETGID",
    "--device", "/dev/net/tun", "--read-only",
)
IMAGE_UID = 10001
BUILD_TIMEOUT = 1800.0
_NAME_PID = re.compile(r"^tmt-ctr(\d+)-")


def container_unavailable_reason() -> str | None:
    """Why real containers cannot run here, or ``None`` when they can."""
    reason = netns_unavailable_reason()
    if reason is not None:
        return reason
    for tool in ("podman", RUNTIME):
        if shutil.which(tool) is None:
            return f"needs {tool} (Debian: apt-get install {tool}; contrib/dev/test.sh installs it as root)"
    r = subprocess.run(["podman", "info", "--format", "{{.Host.OCIRuntime.Name}}"], capture_output=True,
                       text=True, timeout=60)
    if r.returncode != 0:
        return f"`podman info` failed: {r.stderr.strip()[-500:]}"
    base = base_image_name()
    if shutil.which("debootstrap") is None and podman(["image", "exists", base], check=False).returncode != 0:
        return f"needs debootstrap to make the base image {base} (Debian: apt-get install debootstrap)"
    return None


def base_image_name() -> str:
    """The Dockerfile's first ``FROM`` image (made by build.sh when podman does not have it)."""
    for line in (REPO_ROOT / "Dockerfile").read_text().splitlines():
        words = line.split()
        if words and words[0].upper() == "FROM":
            return words[1]
    raise NetnsError("no FROM line in the Dockerfile")


def podman(argv: Sequence[str], check: bool = True, timeout: float = 120, **kw: Any) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(["podman", *argv], capture_output=True, text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise NetnsError(f"podman {' '.join(argv)} failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
    return r


@attrs.frozen
class BuiltImages:
    image: str
    app_image: str
    size_bytes: int
    seconds: float


def build_images() -> BuiltImages:
    """Run ``contrib/container/build.sh`` (cached after the first run), then the app image; raise with the
    build output when either fails."""
    start = time.monotonic()
    r = subprocess.run(["bash", str(REPO_ROOT / "contrib/container/build.sh")], capture_output=True, text=True,
                       timeout=BUILD_TIMEOUT, env={**os.environ, "TUNMESH_IMAGE": IMAGE})
    if r.returncode != 0:
        raise NetnsError(f"contrib/container/build.sh failed ({r.returncode}):\n{(r.stdout + r.stderr)[-4000:]}")
    app = subprocess.run(
        ["podman", "build", "--pull=never", "--network", "host", *RUN_FLAGS, "-t", APP_IMAGE,
         "-f", str(REPO_ROOT / "tests/integration/app.Containerfile"), str(REPO_ROOT / "tests/integration")],
        capture_output=True, text=True, timeout=BUILD_TIMEOUT,
    )
    if app.returncode != 0:
        raise NetnsError(f"building {APP_IMAGE} failed ({app.returncode}):\n{(app.stdout + app.stderr)[-4000:]}")
    size = int(podman(["image", "inspect", "--format", "{{.Size}}", IMAGE]).stdout.strip())
    return BuiltImages(IMAGE, APP_IMAGE, size, time.monotonic() - start)


def cleanup_stale_containers() -> list[str]:
    """Remove ``tmt-ctr<pid>-`` containers whose creating process is gone; returns their names."""
    names = podman(["ps", "-a", "--format", "{{.Names}}"], check=False).stdout.split()
    removed = []
    for name in names:
        m = _NAME_PID.match(name)
        if m is None or int(m.group(1)) == os.getpid():
            continue
        try:
            os.kill(int(m.group(1)), 0)
            continue
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        podman(["rm", "-f", "-t", "0", name], check=False)
        removed.append(name)
    return removed


class Pod:
    """One pod: a namespace, a tunmesh sidecar container and an app container sharing it.

    The sidecar's config directory (config, certificate, key, secret) is mounted read-only at /etc/tunmesh;
    the files are root-owned, group ``IMAGE_UID``, mode 0640: root reads them before the privilege drop without
    CAP_DAC_OVERRIDE, the node after it through its group.
    """

    def __init__(self, index: int, ns: Namespace, config_dir: Path) -> None:
        self.index = index
        self.ns = ns
        self.config_dir = config_dir
        prefix = f"tmt-ctr{os.getpid()}-"
        self.sidecar = f"{prefix}tunmesh-{index}"
        self.app = f"{prefix}app-{index}"
        self.network = f"ns:/run/netns/{ns.name}"

    def start_sidecar(self) -> None:
        podman(["run", *RUN_FLAGS, "-d", "--name", self.sidecar, "--network", self.network, *SIDECAR_PRIVILEGES,
                # No systemd here to time the HEALTHCHECK: the test runs it with `podman healthcheck run`.
                "--health-interval", "disable",
                "-v", f"{self.config_dir}:/etc/tunmesh:ro", IMAGE])

    def stop_sidecar(self, timeout: int = 10) -> None:
        podman(["stop", "-t", str(timeout), self.sidecar], timeout=timeout + 30)

    def restart_sidecar(self) -> None:
        podman(["start", self.sidecar])

    def start_app(self) -> None:
        # ping carries the file capability cap_net_raw, which podman 4 no longer grants by default.
        podman(["run", *RUN_FLAGS, "-d", "--name", self.app, "--network", self.network, "--cap-add", "NET_RAW",
                APP_IMAGE])

    def exec_app(self, argv: Sequence[str], check: bool = True, timeout: float = 60, **kw: Any) -> subprocess.CompletedProcess[str]:
        return podman(["exec", self.app, *argv], check=check, timeout=timeout, **kw)

    def popen_app(self, argv: Sequence[str]) -> subprocess.Popen[str]:
        return subprocess.Popen(["podman", "exec", "-i", self.app, *argv], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def sidecar_logs(self, lines: int = 40) -> str:
        r = podman(["logs", "--tail", str(lines), self.sidecar], check=False)
        return f"--- {self.sidecar}\n{r.stdout}{r.stderr}"

    def sidecar_state(self, field: str) -> str:
        return podman(["inspect", "--format", "{{" + field + "}}", self.sidecar]).stdout.strip()

    def remove(self) -> None:
        for name in (self.app, self.sidecar):
            podman(["rm", "-f", "-t", "0", name], check=False, timeout=60)


def process_ids(pid: int) -> dict[str, list[int]]:
    """Real/effective/saved/fs uid and gid and the effective capability mask of a host process."""
    fields: dict[str, list[int]] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("Uid", "Gid"):
                fields[key] = [int(v) for v in value.split()]
            elif key == "CapEff":
                fields[key] = [int(value.strip(), 16)]
    return fields


__all__ = [
    "APP_IMAGE",
    "IMAGE",
    "IMAGE_UID",
    "BuiltImages",
    "Pod",
    "build_images",
    "cleanup_stale_containers",
    "container_unavailable_reason",
    "podman",
    "process_ids",
]
