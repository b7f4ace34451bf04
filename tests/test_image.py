"""The container image, built and served: deploy/docker/Dockerfile as a user builds it.

The image is built from the repository with BuildKit, run with a tiny model mounted read-only
(root file system read-only too, as Kubernetes' readOnlyRootFilesystem runs it), and checked
from outside, as an orchestrator sees it: /ready, one request per dialect with scores against
an fp32 reference, a non-root user, the HEALTHCHECK turning healthy, `docker stop` ending with 0;
and a model folder readable by root alone failing with a message that names the fix.

What a build machine needs (bash .ci/run installs and starts it): a Docker daemon (`apt-get
install docker.io`; `dockerd --bridge=none --iptables=false` where no bridge network may be
made: builds and containers then use the host's network) and a BuildKit client (Docker 23+ with
buildx, or Debian's 20.10 with DOCKER_BUILDKIT=1). Where python:3.11-slim cannot be pulled, a
stand-in base is made from Debian packages (deploy/docker/debian-base.sh: root and debootstrap),
kept in the daemon's image store under a digest of its inputs. pip inside the build gets the
host's pip settings (index, extra indexes, trusted hosts, CA bundle, proxies, timeout) as build
arguments and a BuildKit secret, and the torch wheel pip already has on disk through a loopback
index (the default would be download.pytorch.org's CPU index).

Slow (a cold build is ~1-3 minutes, a warm one seconds): `-m "not image"` leaves it out.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from conftest import DOCS, QUERY
from procs import ROOT, free_port

pytestmark = pytest.mark.image

DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
BASE_SCRIPT = ROOT / "deploy" / "docker" / "debian-base.sh"
OFFICIAL_BASE = "python:3.11-slim"
TAG = "reranker-serve:test"
DOCKERD_LOG = Path(os.environ.get("TMPDIR", "/tmp")) / "reranker-ci-dockerd.log"  # where .ci/run logs dockerd
UID = "10001"
TORCH_INDEX_PORT = 28931

# One request per dialect, as each vendor's client sends it.
DIALECTS = {
    "native": ("/rerank", {"query": QUERY, "documents": DOCS}),
    "tei": ("/rerank", {"query": QUERY, "texts": DOCS}),
    "cohere-v1": ("/v1/rerank", {"model": "rerank-english-v3.0", "query": QUERY, "documents": DOCS}),
    "cohere-v2": ("/v2/rerank", {"model": "rerank-v3.5", "query": QUERY, "documents": DOCS}),
    "jina": ("/api/v1/rerank", {"model": "jina-reranker-v2-base-multilingual", "query": QUERY, "documents": DOCS}),
}


def _say(config: pytest.Config, line: str) -> None:
    """A line on the terminal even while output is captured: the image's size and build time."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None:
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line(f"[image] {line}")


# -- the docker client and daemon -------------------------------------------------------------------
class Docker:
    def __init__(self, path: str, env: dict[str, str]) -> None:
        self.path, self.env = path, env

    def __call__(self, *args: str, timeout: float = 120, check: bool = True,
                 input: bytes | None = None) -> subprocess.CompletedProcess:
        done = subprocess.run([self.path, *args], env=self.env, capture_output=True, timeout=timeout, input=input)
        if check and done.returncode != 0:
            raise AssertionError(f"docker {' '.join(args[:3])} ... failed ({done.returncode}):\n"
                                 + done.stdout.decode(errors="replace")[-3000:]
                                 + done.stderr.decode(errors="replace")[-3000:])
        return done

    def text(self, *args: str, **kw: object) -> str:
        return self(*args, **kw).stdout.decode().strip()


def _buildkit_client() -> tuple[Docker | None, str]:
    """A docker client that builds with BuildKit (the Dockerfile's RUN --mount needs it)."""
    candidates = dict.fromkeys(p for p in (shutil.which("docker"), "/usr/bin/docker") if p and Path(p).exists())
    if not candidates:
        return None, "no docker client is installed (apt-get install docker.io; bash .ci/run does)"
    seen = []
    for path in candidates:
        env = dict(os.environ, DOCKER_BUILDKIT="1")
        version = subprocess.run([path, "version", "--format", "{{.Client.Version}}"], env=env, capture_output=True,
                                 text=True, timeout=30).stdout.strip()
        buildx = subprocess.run([path, "buildx", "version"], env=env, capture_output=True, timeout=30).returncode == 0
        major = int(m.group(1)) if (m := re.match(r"(\d+)\.", version)) else 0
        if buildx or 18 < major < 23:  # 23+ builds with BuildKit only through the buildx plugin
            return Docker(path, env), ""
        seen.append(f"{path} {version or '?'} (no buildx)")
    return None, f"no docker client that builds with BuildKit: {', '.join(seen)}; install docker-buildx or docker.io"


@pytest.fixture(scope="module")
def docker() -> Docker:
    client, why = _buildkit_client()
    if client is None:
        pytest.skip(why)
    info = client("info", "--format", "{{.ServerVersion}}", check=False, timeout=30)
    if info.returncode != 0:
        error = (info.stderr or info.stdout).decode(errors="replace").strip().splitlines()[-1:]
        log = f"; dockerd's log: {DOCKERD_LOG}" if DOCKERD_LOG.exists() else ""
        pytest.skip(f"the Docker daemon does not answer ({' '.join(error)}): start one, e.g. "
                    f"`dockerd --bridge=none --iptables=false` (bash .ci/run does){log}")
    return client


# -- the build's inputs -------------------------------------------------------------------------------
def host_pip_settings() -> dict[str, str]:
    """pip's effective settings on this machine (its configuration files, then PIP_* variables),
    as `pip config list` prints them: key -> value, the later source winning."""
    done = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, timeout=60)
    settings: dict[str, str] = {}
    for line in done.stdout.splitlines():
        m = re.match(r"^(global|install|download|:env:)\.([\w-]+)='(.*)'$", line.strip())
        if m:
            settings[m.group(2).replace("_", "-")] = m.group(3)
    return settings


def pip_build_arguments(settings: dict[str, str], environ: dict[str, str]) -> tuple[list[str], list[str]]:
    """(build arguments, notes): what of the host's pip settings a build can use. Indexes and
    find-links on the local disk are not visible in the build and are left out."""
    args: list[str] = []
    notes: list[str] = []
    remote = [u for u in settings.get("index-url", "").split() if u.startswith(("http://", "https://"))]
    if remote:
        args += ["--build-arg", f"PIP_INDEX_URL={remote[0]}"]
    extra = [u for u in settings.get("extra-index-url", "").split() if u.startswith(("http://", "https://"))]
    if extra:
        args += ["--build-arg", f"PIP_EXTRA_INDEX_URL={' '.join(extra)}"]
    if settings.get("trusted-host"):
        args += ["--build-arg", f"PIP_TRUSTED_HOST={settings['trusted-host']}"]
    timeout = settings.get("default-timeout") or settings.get("timeout")
    if timeout:
        args += ["--build-arg", f"PIP_DEFAULT_TIMEOUT={timeout}"]
    cert = settings.get("cert")
    if cert and Path(cert).is_file():
        args += ["--secret", f"id=pip_cert,src={cert}"]
        notes.append(f"CA bundle {cert}")
    # Proxies: Docker passes these build arguments to RUN without an ARG line (and keeps them out
    # of the image's history); pip's own `proxy` setting becomes one too.
    proxies = {name: environ[name] for name in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy",
                                               "no_proxy") if environ.get(name)}
    if settings.get("proxy"):
        proxies.setdefault("HTTPS_PROXY", settings["proxy"])
    for name, value in proxies.items():
        args += ["--build-arg", f"{name}={value}"]
    if proxies:
        notes.append("proxies " + ", ".join(proxies))
    return args, notes


def test_host_pip_settings_become_build_arguments():
    args, notes = pip_build_arguments(
        {"index-url": "https://mirror.example/simple", "extra-index-url": "file:///opt/pypi https://b.example/simple",
         "trusted-host": "mirror.example", "cert": str(DOCKERFILE), "timeout": "60", "find-links": "/opt/wheels"},
        {"HTTPS_PROXY": "http://proxy:3128"})
    assert args == ["--build-arg", "PIP_INDEX_URL=https://mirror.example/simple",
                    "--build-arg", "PIP_EXTRA_INDEX_URL=https://b.example/simple",
                    "--build-arg", "PIP_TRUSTED_HOST=mirror.example", "--build-arg", "PIP_DEFAULT_TIMEOUT=60",
                    "--secret", f"id=pip_cert,src={DOCKERFILE}", "--build-arg", "HTTPS_PROXY=http://proxy:3128"]
    dockerfile = DOCKERFILE.read_text()
    for name in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST", "PIP_DEFAULT_TIMEOUT"):
        assert re.search(rf"^ARG {name}$", dockerfile, re.MULTILINE)  # no default: unset unless given


def _dockerfile_arg(name: str) -> str:
    (value,) = re.findall(rf"^ARG {name}=(\S+)", DOCKERFILE.read_text(), re.MULTILINE)
    return value


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's name
        pass


@pytest.fixture(scope="module")
def torch_index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str | None]:
    """A loopback package index holding the torch wheel pip finds on this machine's disk and the
    wheels it needs, in the role of download.pytorch.org/whl/cpu; None where no wheel is on disk
    (the build then uses the real index)."""
    version = _dockerfile_arg("TORCH_VERSION")
    wheels = tmp_path_factory.mktemp("torch-wheels")
    local = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-index", "--no-deps",
                            f"torch=={version}", "-d", str(wheels)], capture_output=True, text=True, timeout=600)
    if local.returncode != 0:
        yield None
        return
    # The wheels torch needs, as the CPU index serves them beside it (from the host's indexes).
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:", f"torch=={version}",
                    "-d", str(wheels)], check=True, capture_output=True, text=True, timeout=600)
    index = tmp_path_factory.mktemp("torch-index")
    for wheel in wheels.glob("*.whl"):
        project = re.sub(r"[-_.]+", "-", wheel.name.split("-")[0]).lower()  # PEP 503 normalised name
        (index / project).mkdir(exist_ok=True)
        os.link(wheel, index / project / wheel.name)
    handler = partial(_QuietHandler, directory=str(index))
    try:  # the same port every run: the URL is part of the build's cache key, a new one rebuilds it all
        server = http.server.ThreadingHTTPServer(("127.0.0.1", TORCH_INDEX_PORT), handler)
    except OSError:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def base_image(docker: Docker, pytestconfig: pytest.Config) -> str:
    """python:3.11-slim when it is here or can be pulled; else the Debian-built stand-in."""
    if docker("image", "inspect", OFFICIAL_BASE, check=False).returncode == 0:
        return OFFICIAL_BASE
    pulled = docker("pull", "--quiet", OFFICIAL_BASE, check=False, timeout=600)
    if pulled.returncode == 0:
        return OFFICIAL_BASE
    reason = (pulled.stderr or pulled.stdout).decode(errors="replace").strip().splitlines()[-1:]
    if os.geteuid() != 0 or shutil.which("debootstrap") is None:
        pytest.skip(f"{OFFICIAL_BASE} cannot be pulled ({' '.join(reason)}), and the stand-in base needs root and "
                    "debootstrap (apt-get install debootstrap; bash .ci/run does)")
    started = time.monotonic()
    done = subprocess.run(["bash", str(BASE_SCRIPT)], env=dict(docker.env, DOCKER=docker.path), capture_output=True,
                          text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    tag = done.stdout.strip().splitlines()[-1]
    _say(pytestconfig, f"base: {tag} ({OFFICIAL_BASE} cannot be pulled: {' '.join(reason)}), "
                       f"{time.monotonic() - started:.0f} s (made or reused)")
    return tag


@pytest.fixture(scope="module")
def image(docker: Docker, base_image: str, torch_index: str | None, pytestconfig: pytest.Config) -> str:
    args, notes = pip_build_arguments(host_pip_settings(), dict(os.environ))
    if torch_index:
        args += ["--build-arg", f"TORCH_INDEX_URL={torch_index}"]
        notes.append("torch from the wheel on disk")
    previous = docker("image", "inspect", "--format", "{{.Id}}", TAG, check=False).stdout.decode().strip()
    started = time.monotonic()
    docker("build", "--network", "host", "--progress", "plain", "-f", str(DOCKERFILE), "-t", TAG,
           "--build-arg", f"BASE_IMAGE={base_image}", *args, str(ROOT), timeout=1800)
    seconds = time.monotonic() - started
    current = docker.text("image", "inspect", "--format", "{{.Id}}", TAG)
    if previous and previous != current:  # the last run's image, now untagged: 1.4 GB not to keep
        docker("image", "rm", previous, check=False)
    size = int(docker.text("image", "inspect", "--format", "{{.Size}}", TAG))
    _say(pytestconfig, f"{TAG}: built in {seconds:.0f} s, {size / 1e6:.0f} MB, base {base_image}; "
                       f"pip: {', '.join(notes) or 'defaults'}")
    return TAG


# -- the model the container serves -----------------------------------------------------------------
def _copy_model(src: Path, dest: Path, *, weights_mode: int) -> Path:
    shutil.copytree(src, dest)
    for path in [dest, *dest.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    for weights in dest.glob("*.safetensors"):
        weights.chmod(weights_mode)
    return dest


class Container:
    def __init__(self, docker: Docker, name: str) -> None:
        self.docker, self.name = docker, name

    def inspect(self, template: str) -> str:
        return self.docker.text("inspect", "--format", template, self.name)

    def logs(self) -> str:
        done = self.docker("logs", self.name, check=False)
        return (done.stdout + done.stderr).decode(errors="replace")

    def remove(self) -> None:
        self.docker("rm", "--force", self.name, check=False)


def run_container(docker: Docker, image: str, model: Path, port: int, *extra: str) -> Container:
    name = f"reranker-serve-test-{port}"
    docker("rm", "--force", name, check=False)
    docker("run", "--detach", "--name", name, "--network", "host",
           # As a cluster runs it: root file system read-only, a scratch /tmp, the model read-only.
           "--read-only", "--tmpfs", "/tmp", "--volume", f"{model}:/models/tiny:ro",
           "--env", "RERANKER_MODEL_PATH=/models/tiny", "--env", "RERANKER_USE_OFFLINE_MODE=true",
           "--env", f"RERANKER_PORT={port}", "--env", "RERANKER_DTYPE=float32", "--env", "RERANKER_CACHE_MB=0",
           *extra, image)
    return Container(docker, name)


def _scores(reply: object) -> dict[int, float]:
    results = reply if isinstance(reply, list) else reply["results"]  # type: ignore[index]
    return {r["index"]: r.get("relevance_score", r.get("score")) for r in results}


def test_the_image_serves_every_dialect_as_non_root_and_stops_cleanly(docker, image, tiny_model, reference, tmp_path):
    model = _copy_model(tiny_model, tmp_path / "model", weights_mode=0o644)
    port = free_port()
    # The image's own HEALTHCHECK command, checked once a second instead of every 30 s (Docker
    # before 25 has no --start-interval: the Dockerfile's own timing is kept for them).
    box = run_container(docker, image, model, port, "--health-interval", "1s")
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 300
        while True:
            assert box.inspect("{{.State.Running}}") == "true", box.logs()[-3000:]
            try:
                if httpx.get(f"{base}/ready", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "not ready in 300 s:\n" + box.logs()[-3000:]
            time.sleep(0.5)
        expected = reference.scores(QUERY, DOCS)
        for dialect, (path, body) in DIALECTS.items():
            reply = httpx.post(base + path, json=body, timeout=60)
            assert reply.status_code == 200, (dialect, reply.text)
            got = _scores(reply.json())
            assert sorted(got) == list(range(len(DOCS))), dialect
            for index, score in got.items():
                assert score == pytest.approx(expected[index], abs=1e-5), (dialect, index)

        # Not root: the image's user, and the server (PID 1) itself.
        assert box.inspect("{{.Config.User}}").split(":")[0] == UID
        status = docker.text("exec", box.name, "cat", "/proc/1/status")
        assert re.search(rf"^Uid:\s+{UID}\s", status, re.MULTILINE), status
        assert docker.text("exec", box.name, "id", "-u") == UID

        # The HEALTHCHECK is the Dockerfile's, and it turns healthy.
        check = json.loads(box.inspect("{{json .Config.Healthcheck}}"))
        assert check["Test"][:2] == ["CMD", "python"] and "/health" in check["Test"][-1]
        deadline = time.monotonic() + 60
        while (health := box.inspect("{{.State.Health.Status}}")) != "healthy":
            assert health == "starting" and time.monotonic() < deadline, box.inspect("{{json .State.Health}}")
            time.sleep(0.5)

        # docker stop: SIGTERM to the server itself (PID 1), a drain, exit 0 — not a SIGKILL (137).
        docker("stop", "--time", "60", box.name, timeout=120)
        assert box.inspect("{{.State.ExitCode}}") == "0", box.logs()[-3000:]
        assert "Finished server process" in box.logs()
    finally:
        box.remove()


def test_a_root_only_model_folder_is_named_a_permission_error(docker, image, tiny_model, tmp_path):
    """A model saved or downloaded as root has weights readable by root alone (save_pretrained
    writes 0600): in the non-root container that must read as a permission error with its fix,
    not as a missing file."""
    model = _copy_model(tiny_model, tmp_path / "root-only", weights_mode=0o600)
    box = run_container(docker, image, model, free_port())
    try:
        code = docker.text("wait", box.name, timeout=180)
        logs = box.logs()
        assert code == "2", logs[-3000:]  # bad configuration, found before the server starts
        assert "permission denied" in logs and "model.safetensors (mode 0600, owner uid 0)" in logs, logs[-3000:]
        assert "chmod -R a+rX /models/tiny" in logs and f"uid {UID}" in logs, logs[-3000:]
        assert "No such file or directory" not in logs
    finally:
        box.remove()


def test_the_image_carries_no_build_tools_or_test_suites(docker, image):
    probe = ("import importlib.util, pathlib, sys, torch;"
             "site = pathlib.Path(torch.__file__).parent.parent;"
             "left = [m for m in ('pip', 'setuptools') if importlib.util.find_spec(m)];"
             "left += [str(p) for p in site.rglob('tests') if p.is_dir()];"
             "left += [str(site / 'torch' / d) for d in ('include', 'test') if (site / 'torch' / d).exists()];"
             "print(left)")
    assert docker.text("run", "--rm", "--network", "none", "--entrypoint", "python", image, "-c", probe) == "[]"
