"""Run docker-compose.yml with podman on a machine without Docker and without a registry.

Everything podman keeps (configuration, image storage, volumes, networks, run state) lives under
one folder, ``$RECSTACK_PODMAN_HOME`` (default ``/var/tmp/recstack-podman``); nothing is written to
the system's /etc/containers. Images built there stay between runs, so a second run is fast.

    python tests/compose/harness.py images            # build the stand-in images (cached)
    python tests/compose/harness.py env               # `export ...` lines for podman by hand
    python tests/compose/harness.py compose ARGS...   # podman-compose on this configuration
    python tests/compose/harness.py clean PROJECT     # remove what is left of a compose project

``compose`` is what the pytest-docker fixtures call instead of ``docker compose``. Its ``up``
enforces the compose file's ``depends_on`` conditions itself (``service_healthy``,
``service_completed_successfully``): podman-compose skips health conditions on podman < 4.6 (Debian
bookworm has 4.3), and podman runs health checks from systemd timers, which this machine lacks, so
the harness runs each check (``podman healthcheck run``) while it waits.

Stand-ins built from Debian packages under the compose file's image names (images/*/Containerfile):
``python:3.11-slim`` (a debootstrap rootfs + this host's CA bundle), ``redis:7``, ``postgres:16``,
``nginx:1.27``, ``prom/prometheus:v2.55.1``. Grafana has no Debian package; it is in the compose
profile ``dashboards``, which the harness never enables.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

HARNESS_DIR = Path(__file__).resolve().parent
REPO = HARNESS_DIR.parents[1]
COMPOSE_FILE = REPO / "docker-compose.yml"
IMAGES_DIR = HARNESS_DIR / "images"

DEFAULT_HOME = Path("/var/tmp/recstack-podman")
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = os.environ.get("RECSTACK_DEBIAN_MIRROR", "http://deb.debian.org/debian")
BASE_IMAGE = "localhost/recstack-harness/debian:bookworm"
BASE_PACKAGES = ["python3", "python-is-python3", "python3-venv", "python3-pip", "ca-certificates"]
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")

# Stand-in image folder -> the names docker-compose.yml (and the Dockerfile's FROM) use.
STAND_INS: dict[str, list[str]] = {
    "python": ["docker.io/library/python:3.11-slim"],
    "redis": ["docker.io/library/redis:7"],
    "postgres": ["docker.io/library/postgres:16"],
    "nginx": ["docker.io/library/nginx:1.27"],
    "prometheus": ["docker.io/prom/prometheus:v2.55.1"],
}

PROJECT_LABEL = "io.podman.compose.project"
SERVICE_LABEL = "com.docker.compose.service"


class HarnessError(RuntimeError):
    """A step of the harness failed; the message says which and why."""


def log(message: str) -> None:
    print(f"[compose-harness {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---- podman configuration, in the harness's own folder -----------------------------------------

def podman_home() -> Path:
    return Path(os.environ.get("RECSTACK_PODMAN_HOME", str(DEFAULT_HOME)))


def _toml_list(values: list[str]) -> str:
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


def write_config(home: Path) -> dict[str, str]:
    """Write containers.conf / storage.conf / registries.conf under ``home/conf``; return the
    environment variables that make podman (and podman-compose's podman calls) use them."""
    conf = home / "conf"
    for sub in ("conf", "storage", "run", "tmp", "networks"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    # Podman asks for 1,048,576 open files by default; above the host's hard limit every container
    # fails ("error setting rlimit type 7"). Stay within the hard limits.
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nproc = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    nofile = 65536 if nofile == resource.RLIM_INFINITY else min(nofile, 65536)
    nproc = 32768 if nproc == resource.RLIM_INFINITY else min(nproc, 32768)
    # `init: true` in compose: podman bind-mounts this binary as the container's PID 1.
    init = shutil.which("catatonit") or shutil.which("tini") or "/usr/bin/catatonit"
    (conf / "containers.conf").write_text(f"""\
# Written by tests/compose/harness.py; used through CONTAINERS_CONF only.
[containers]
default_ulimits = {_toml_list([f"nofile={nofile}:{nofile}", f"nproc={nproc}:{nproc}"])}
init_path = "{init}"
log_driver = "k8s-file"

[engine]
# crun fails here ("cgroups in hybrid mode not supported"); no systemd, so cgroupfs and file events.
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{home}/run/events.log"
tmp_dir = "{home}/run/libpod"
static_dir = "{home}/storage/libpod"
volume_path = "{home}/storage/volumes"

[network]
network_backend = "netavark"
network_config_dir = "{home}/networks"
""")
    (conf / "storage.conf").write_text(f"""\
[storage]
driver = "overlay"
graphroot = "{home}/storage"
runroot = "{home}/run/storage"
""")
    # Short names (redis:7) resolve to docker.io, as with Docker; the images are all local.
    (conf / "registries.conf").write_text(
        'unqualified-search-registries = ["docker.io"]\nshort-name-mode = "permissive"\n'
    )
    return {
        "CONTAINERS_CONF": str(conf / "containers.conf"),
        "CONTAINERS_STORAGE_CONF": str(conf / "storage.conf"),
        "CONTAINERS_REGISTRIES_CONF": str(conf / "registries.conf"),
        "TMPDIR": str(home / "tmp"),
    }


@dataclass
class Podman:
    """podman (and podman-compose) on the harness's configuration."""

    home: Path = field(default_factory=podman_home)

    def __post_init__(self) -> None:
        if shutil.which("podman") is None:
            raise HarnessError(
                "podman is not installed (apt-get install -y podman debootstrap catatonit)")
        self.config_env = write_config(self.home)

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, **self.config_env}

    def run(self, *args: str, timeout: float = 120, check: bool = True,
            capture: bool = True, input_bytes: bytes | None = None) -> subprocess.CompletedProcess:
        cmd = ["podman", *args]
        try:
            result = subprocess.run(cmd, env=self.env, timeout=timeout, input=input_bytes,
                                    capture_output=capture, check=False)
        except subprocess.TimeoutExpired as exc:
            raise HarnessError(f"`{' '.join(cmd)}` did not finish within {timeout:.0f}s") from exc
        if check and result.returncode != 0:
            detail = (result.stderr or b"").decode(errors="replace")[-3000:] if capture else ""
            raise HarnessError(f"`{' '.join(cmd)}` exited with {result.returncode}: {detail}")
        return result

    def out(self, *args: str, timeout: float = 60) -> str:
        return self.run(*args, timeout=timeout).stdout.decode()

    def version(self) -> tuple[int, ...]:
        text = self.out("version", "--format", "{{.Client.Version}}").strip()
        return tuple(int(p) for p in text.split("-")[0].split(".")[:3])

    def image_id(self, name: str) -> str | None:
        result = self.run("image", "inspect", "--format", "{{.Id}}", name, check=False)
        return result.stdout.decode().strip() or None if result.returncode == 0 else None

    def image_exists(self, name: str) -> bool:
        return self.run("image", "exists", name, check=False).returncode == 0


# ---- images -------------------------------------------------------------------------------------

def build_base(podman: Podman) -> None:
    """The Debian bookworm root filesystem as ``BASE_IMAGE`` (debootstrap, once; then cached)."""
    if podman.image_exists(BASE_IMAGE):
        return
    if shutil.which("debootstrap") is None:
        raise HarnessError("debootstrap is not installed (apt-get install -y debootstrap)")
    rootfs = podman.home / "rootfs" / DEBIAN_SUITE
    if not (rootfs / "usr/bin/python3").exists() or (rootfs / "debootstrap").exists():
        shutil.rmtree(rootfs, ignore_errors=True)
        rootfs.parent.mkdir(parents=True, exist_ok=True)
        log(f"debootstrap {DEBIAN_SUITE} from {DEBIAN_MIRROR} (about a minute)")
        cmd = ["debootstrap", "--variant=minbase", "--include=" + ",".join(BASE_PACKAGES),
               DEBIAN_SUITE, str(rootfs), DEBIAN_MIRROR]
        result = subprocess.run(cmd, capture_output=True, timeout=900, check=False)
        if result.returncode != 0:
            raise HarnessError("debootstrap failed:\n" + result.stdout.decode()[-3000:]
                               + result.stderr.decode()[-2000:])
    for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for path in (rootfs / junk).glob("*"):
            if path.is_file():
                path.unlink()
    log(f"importing the rootfs as {BASE_IMAGE}")
    tar = subprocess.run(["tar", "-C", str(rootfs), "--numeric-owner", "-c", "."],
                         capture_output=True, check=True, timeout=300)
    podman.run("import", "--change", 'CMD ["bash"]', "-", BASE_IMAGE, input_bytes=tar.stdout,
               timeout=600)


def build_stand_ins(podman: Podman) -> dict[str, float]:
    """Build (or reuse from the layer cache) every stand-in image; seconds per image."""
    timings: dict[str, float] = {}
    start = time.monotonic()
    build_base(podman)
    timings["debian-base"] = time.monotonic() - start
    for name, tags in STAND_INS.items():
        start = time.monotonic()
        context = IMAGES_DIR / name
        with tempfile.TemporaryDirectory(dir=podman.home / "tmp") as tmp:
            build_dir = Path(tmp) / name
            shutil.copytree(context, build_dir)
            if name == "python":
                # The proxy's CA, for pip inside the project's build (harness image only).
                shutil.copy(HOST_CA, build_dir / "host-ca.crt")
            args = ["build", "--layers", "--pull=never", "--network=host"]
            for tag in tags:
                args += ["-t", tag]
            result = podman.run(*args, str(build_dir), timeout=900, check=False)
            if result.returncode != 0:
                output = result.stdout.decode()[-3000:] + result.stderr.decode()[-3000:]
                raise HarnessError(f"building the {name} stand-in failed:\n{output}")
        timings[name] = time.monotonic() - start
        log(f"image {tags[0]} ready in {timings[name]:.1f}s")
    return timings


# ---- compose ------------------------------------------------------------------------------------

def podman_compose_bin() -> str:
    local = Path(sys.executable).parent / "podman-compose"
    found = str(local) if local.exists() else shutil.which("podman-compose")
    if found is None:
        raise HarnessError(
            "podman-compose is not installed (pip install -c constraints.txt '.[dev]')")
    return found


@dataclass
class Compose:
    """podman-compose with global arguments (-f, -p, --env-file) on the harness's podman."""

    podman: Podman
    global_args: list[str]

    def run(self, *args: str, timeout: float = 900, check: bool = True) -> int:
        # Pods are off: Docker has none, and a pod fixes its published ports at creation, which
        # conflicts with starting services one at a time and with --scale.
        cmd = [podman_compose_bin(), "--in-pod", "false", *self.global_args, *args]
        log("$ " + " ".join(cmd[1:]))
        try:
            result = subprocess.run(cmd, env=self.podman.env, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise HarnessError(
                f"podman-compose {' '.join(args)} did not finish in {timeout:.0f}s") from exc
        if check and result.returncode != 0:
            raise HarnessError(f"podman-compose {' '.join(args)} exited with {result.returncode}")
        return result.returncode

    def config(self) -> dict[str, Any]:
        cmd = [podman_compose_bin(), *self.global_args, "config"]
        result = subprocess.run(cmd, env=self.podman.env, capture_output=True, timeout=120,
                                check=False)
        if result.returncode != 0:
            raise HarnessError("podman-compose config failed: " + result.stderr.decode()[-3000:])
        return yaml.safe_load(result.stdout)

    @property
    def project(self) -> str:
        args = self.global_args
        for i, arg in enumerate(args):
            if arg in ("-p", "--project-name"):
                return args[i + 1]
        if "COMPOSE_PROJECT_NAME" in os.environ:
            return os.environ["COMPOSE_PROJECT_NAME"]
        env_file = Path(".env")
        if "--env-file" in args:
            env_file = Path(args[args.index("--env-file") + 1])
        if env_file.exists():
            for line in env_file.read_text().splitlines():
                key, _, value = line.partition("=")
                if key.strip() == "COMPOSE_PROJECT_NAME":
                    return value.strip()
        return Path.cwd().name

    def containers(self, service: str | None = None,
                   all_states: bool = True) -> list[dict[str, Any]]:
        args = ["ps", "--format", "json", "--filter", f"label={PROJECT_LABEL}={self.project}"]
        if all_states:
            args.insert(1, "-a")
        if service:
            args += ["--filter", f"label={SERVICE_LABEL}={service}"]
        return json.loads(self.podman.out(*args) or "[]")


def _depends_on(service: dict[str, Any]) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: "service_started" for name in deps}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def _order(services: dict[str, dict[str, Any]], wanted: list[str], with_deps: bool) -> list[str]:
    """Services to start, dependencies first."""
    order: list[str] = []

    def visit(name: str, trail: tuple[str, ...]) -> None:
        if name in order:
            return
        if name in trail:
            raise HarnessError(f"dependency cycle: {' -> '.join(trail + (name,))}")
        if with_deps:
            for dep in _depends_on(services[name]):
                visit(dep, trail + (name,))
        order.append(name)

    for name in wanted:
        visit(name, ())
    return order


def _seconds(value: Any, default: float) -> float:
    if value is None:
        return default
    if isinstance(value, (int, float)):
        return float(value) / 1e9 if value > 1e6 else float(value)
    text, total = str(value), 0.0
    for unit, factor in (("h", 3600), ("m", 60), ("s", 1)):
        if unit in text:
            head, text = text.split(unit, 1)
            total += float(head or 0) * factor
    return total or default


def health_budget(service: dict[str, Any]) -> float:
    """How long Docker would wait before calling the service unhealthy, doubled (slow machine)."""
    check = service.get("healthcheck") or {}
    budget = (_seconds(check.get("start_period"), 0)
              + _seconds(check.get("interval"), 30) * int(check.get("retries", 3)))
    return max(60.0, 2 * budget)


def print_logs(compose: Compose, service: str, tail: int = 80) -> None:
    for ctr in compose.containers(service):
        name = ctr["Names"][0] if isinstance(ctr.get("Names"), list) else ctr.get("Names")
        result = compose.podman.run("logs", "--tail", str(tail), name, check=False, timeout=30)
        text = (result.stdout + result.stderr).decode(errors="replace")
        print(f"----- logs of {name} ({ctr.get('State')}, exit {ctr.get('ExitCode')}) -----\n"
              f"{text}----- end of {name} -----", file=sys.stderr, flush=True)


def wait_for(compose: Compose, service: str, condition: str, spec: dict[str, Any],
             timeout: float | None = None) -> None:
    """Block until every container of ``service`` meets a depends_on ``condition``; on timeout or
    failure raise with the service's logs printed."""
    if timeout is None:
        timeout = (float(os.environ.get("RECSTACK_COMPOSE_ONESHOT_TIMEOUT_S", "1200"))
                   if condition == "service_completed_successfully" else health_budget(spec))
    deadline = time.monotonic() + timeout
    has_check = bool((spec.get("healthcheck") or {}).get("test")) and not (
        spec.get("healthcheck") or {}).get("disable")
    log(f"waiting for {service}: {condition} (up to {timeout:.0f}s)")
    while True:
        ctrs = compose.containers(service)
        if not ctrs:
            raise HarnessError(f"{service} has no container")
        done = True
        for ctr in ctrs:
            state, name = ctr.get("State"), ctr["Names"][0]
            if condition == "service_completed_successfully":
                if state in ("exited", "stopped"):
                    code = int(ctr.get("ExitCode", 0))
                    if code != 0:
                        print_logs(compose, service, tail=200)
                        raise HarnessError(f"{service} ({name}) exited with {code}")
                else:
                    done = False
            elif state != "running":
                if state in ("exited", "stopped") and spec.get("restart") in (None, "no"):
                    print_logs(compose, service)
                    raise HarnessError(f"{service} ({name}) is {state}, exit {ctr.get('ExitCode')}")
                done = False
            elif condition == "service_healthy" and has_check:
                # What podman's systemd timer would do: run the check, which records the status.
                result = compose.podman.run("healthcheck", "run", name, check=False, timeout=60)
                done = done and result.returncode == 0
        if done:
            log(f"{service}: {condition}")
            return
        if time.monotonic() > deadline:
            print_logs(compose, service)
            raise HarnessError(f"{service} not {condition} after {timeout:.0f}s (logs above)")
        time.sleep(2)


def staged_up(compose: Compose, up_args: list[str],
              timings: dict[str, float] | None = None) -> None:
    """``compose up`` that honours depends_on conditions on any podman: start the services in
    dependency order, one ``up -d --no-deps`` each, after waiting for their dependencies."""
    services = compose.config()["services"]
    active = {n: s for n, s in services.items() if not s.get("profiles")}
    flags_with_value = {"--scale", "--timeout", "-t", "--wait-timeout"}
    passthrough, wanted, build, wait, no_deps = [], [], False, False, False
    args = iter(up_args)
    for arg in args:
        if arg == "--build":
            build = True
        elif arg == "--wait":
            wait = True
        elif arg == "--no-deps":
            no_deps = True
        elif arg in ("-d", "--detach"):
            pass
        elif arg in flags_with_value:
            passthrough += [arg, next(args)]
        elif arg.startswith("-"):
            passthrough.append(arg)
        else:
            wanted.append(arg)
    order = _order(services, wanted or list(active), with_deps=not no_deps)
    timings = {} if timings is None else timings
    start = time.monotonic()
    if build:
        # One build per image: mlflow, bootstrap and api share the project image, and
        # podman-compose would build it once per service, in parallel.
        by_image: dict[str, str] = {}
        for name in order:
            if "build" in services[name]:
                by_image.setdefault(services[name].get("image", name), name)
        before = {image: compose.podman.image_id(image) for image in by_image}
        compose.run("build", *by_image.values(), timeout=3600)
        # A source change leaves the previous ~1.5 GB project image untagged: remove it (not a
        # blanket `image prune`, which would also drop the build stage's dependency cache).
        for image, old_id in before.items():
            if old_id and old_id != compose.podman.image_id(image):
                compose.podman.run("rmi", old_id, check=False, timeout=300)
        timings["compose_build"] = round(time.monotonic() - start, 1)
    start = time.monotonic()
    for name in order:
        if not no_deps:
            for dep, condition in _depends_on(services[name]).items():
                wait_for(compose, dep, condition, services[dep])
                timings.setdefault(f"ready.{dep}", round(time.monotonic() - start, 1))
        try:
            compose.run("up", "-d", "--no-deps", *passthrough, name, timeout=600)
        except HarnessError:
            print_logs(compose, name)
            raise
    if wait:
        for name in order:
            spec = services[name]
            if spec.get("restart", "no") == "no" and not spec.get("healthcheck"):
                continue  # one-shot: already waited for where something depends on it
            wait_for(compose, name, "service_healthy", spec)
            timings.setdefault(f"ready.{name}", round(time.monotonic() - start, 1))


def compose_main(argv: list[str]) -> int:
    """``docker compose``-like entry point: global args, a subcommand, its args."""
    podman = Podman()
    subcommands = {"up", "down", "build", "ps", "logs", "port", "config", "stop", "start",
                   "restart", "exec", "run", "rm", "kill", "pull", "images", "version"}
    split = next((i for i, a in enumerate(argv) if a in subcommands), None)
    if split is None:
        raise HarnessError(f"no compose subcommand in {argv}")
    compose = Compose(podman, argv[:split])
    sub, rest = argv[split], argv[split + 1:]
    if sub == "up":
        start = time.monotonic()
        timings: dict[str, float] = {}
        if "--build" in rest or not all(podman.image_exists(t) for ts in STAND_INS.values()
                                        for t in [BASE_IMAGE, *ts]):
            timings = {f"image.{k}": round(v, 1) for k, v in build_stand_ins(podman).items()}
        staged_up(compose, rest, timings)
        timings["total"] = round(time.monotonic() - start, 1)
        (podman.home / "last-up-timings.json").write_text(json.dumps(timings, indent=1))
        log("timings (s): " + json.dumps(timings))
        return 0
    if sub == "down":
        code = compose.run("down", *rest, check=False, timeout=300)
        clean(podman, compose.project, volumes="-v" in rest or "--volumes" in rest)
        return code
    cmd = [podman_compose_bin(), "--in-pod", "false", *argv]
    return subprocess.run(cmd, env=podman.env, check=False).returncode


def clean(podman: Podman, project: str, volumes: bool = True) -> None:
    """Remove whatever of ``project`` is left: containers, pods, networks and (with ``volumes``)
    volumes, all found by the compose project label."""
    label = f"label={PROJECT_LABEL}={project}"
    ids = podman.out("ps", "-aq", "--filter", label).split()
    if ids:
        podman.run("rm", "-f", "-t", "5", *ids, check=False, timeout=120)
    pods = podman.out("pod", "ps", "-q", "--filter", f"name=pod_{project}").split()
    if pods:
        podman.run("pod", "rm", "-f", *pods, check=False)
    for net in podman.out("network", "ls", "-q", "--filter", label).split():
        podman.run("network", "rm", "-f", net, check=False)
    if volumes:
        for vol in podman.out("volume", "ls", "-q", "--filter", label).split():
            podman.run("volume", "rm", "-f", vol, check=False)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="harness.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["images", "env", "compose", "clean"])
    args, _ = parser.parse_known_args(argv[:1])
    try:
        if args.command == "compose":
            return compose_main(argv[1:])
        podman = Podman()
        if args.command == "env":
            for key, value in podman.config_env.items():
                print(f"export {key}={value}")
        elif args.command == "images":
            timings = build_stand_ins(podman)
            log("stand-in images: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))
        elif args.command == "clean":
            if len(argv) < 2:
                parser.error("clean needs a compose project name")
            clean(podman, argv[1])
        return 0
    except HarnessError as exc:
        log(f"error: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
