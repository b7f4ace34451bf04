"""README examples are a specification: every `curl` in README.md and in docs/*.md runs verbatim
against a server started the README's way, and its reply has the shape the page shows.

The server of each example gets the `RERANKER_*` variables its code block sets (none: the
defaults, i.e. `BAAI/bge-reranker-v2-m3` alone). No hub is reachable, so the hub ids the README
names are served from a Hugging Face cache built here, holding tiny models under those ids; the
server reads it in offline mode exactly as it would read a cache filled by a download.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from reranker_serve.app import create_app
from reranker_serve.config import Settings
from conftest import RunningServer, build_hub_cache, build_tiny_model
from llm_models import build_qwen3
from vision_models import build_qwen3_vl

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
# The front door and the reference it links to: their examples are one specification.
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]

# Every hub id a README example serves, and the tiny stand-in of its family.
HUB_MODELS: dict[str, Callable[[Path], Path]] = {
    "BAAI/bge-reranker-v2-m3": build_tiny_model,
    "BAAI/bge-reranker-base": build_tiny_model,
    "Qwen/Qwen3-Reranker-0.6B": build_qwen3,
    "Qwen/Qwen3-VL-Reranker-2B": build_qwen3_vl,
}


@dataclass
class Example:
    command: str  # the curl command as written
    env: dict[str, str]  # RERANKER_* set earlier in its code block
    reply: Any = None  # the reply the page shows after it, if any
    line: int = 0
    page: str = "README.md"

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


@dataclass
class _Block:
    lines: list[tuple[int, str]] = field(default_factory=list)


def _bash_blocks(text: str) -> Iterator[_Block]:
    block: _Block | None = None
    for number, line in enumerate(text.splitlines(), 1):
        if block is None and line.strip() == "```bash":
            block = _Block()
        elif block is not None and line.strip() == "```":
            yield block
            block = None
        elif block is not None:
            block.lines.append((number, line))


def _statement(lines: list[tuple[int, str]], start: int) -> tuple[str, int]:
    """The shell statement starting at lines[start] (continued by `\\` or an open quote)."""
    text = ""
    i = start
    while i < len(lines):
        text += lines[i][1].rstrip() + "\n"
        i += 1
        if text.rstrip().endswith("\\"):
            continue
        try:
            shlex.split(text, comments=True)
        except ValueError:  # an open quote: the statement goes on
            continue
        break
    return text.strip(), i


def examples(page: Path = README) -> list[Example]:
    found = []
    for block in _bash_blocks(page.read_text()):
        env: dict[str, str] = {}
        lines, i = block.lines, 0
        while i < len(lines):
            number, line = lines[i]
            statement, i = _statement(lines, i)
            words = shlex.split(statement, comments=True) if not line.lstrip().startswith("#") else []
            if words[:1] == ["export"]:
                words = words[1:]
            for word in words:  # NAME=value words before a command, or standing alone
                name, sep, value = word.partition("=")
                if not (sep and name.startswith("RERANKER_")):
                    break
                env[name] = value
            if words[:1] != ["curl"] or "localhost:8000" not in statement:
                continue  # a curl elsewhere (docs/evaluation.md downloads a collection) is no example
            shown = []
            while i < len(lines) and lines[i][1].lstrip().startswith("#"):
                shown.append(lines[i][1].lstrip()[1:].strip())
                i += 1
            reply = json.loads(" ".join(shown)) if shown and shown[0][:1] in "[{" else None
            found.append(Example(statement, dict(env), reply, number, str(page.relative_to(ROOT))))
    return found


EXAMPLES = [example for page in PAGES for example in examples(page)]


def test_the_readme_has_an_example_for_every_dialect():
    readme = examples(README)
    routes = " ".join(e.command for e in readme)
    for route in ("/rerank", "/v1/rerank", "/v2/rerank", "/api/v1/rerank", "/v1/ranking", "/v1/reranking",
                  "/infinity/rerank"):
        assert f"localhost:8000{route} " in routes, route
    assert sum(e.reply is not None for e in readme) >= 5
    # the reference pages run their examples too (docs/models.md: several models, multimodal)
    assert "localhost:8000/v1/models" in " ".join(e.command for e in EXAMPLES)


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_hub_cache(tmp_path_factory.mktemp("hub-cache"), HUB_MODELS)


@pytest.fixture(scope="module")
def readme_server(hub_cache: Path) -> Iterator[Callable[[dict[str, str]], RunningServer]]:
    servers: dict[str, RunningServer] = {}

    def start(env: dict[str, str]) -> RunningServer:
        key = json.dumps(env, sort_keys=True)
        if key not in servers:
            settings = {name.removeprefix("RERANKER_").lower(): value for name, value in env.items()}
            settings.update(model_cache_dir=hub_cache, use_offline_mode=True, device="cpu", dtype="float32")
            servers[key] = RunningServer(create_app(Settings(_env_file=None, **settings)))
        return servers[key]

    yield start
    for server in servers.values():
        server.stop()


# Values a reply must repeat exactly; every other value only has to be of the shown type.
_EXACT = {"model", "version", "object", "is_experimental"}


def _same_shape(got: Any, shown: Any, where: str = "reply") -> None:
    if isinstance(shown, dict):
        assert isinstance(got, dict), f"{where}: {got!r} is not an object"
        assert set(got) == set(shown), f"{where}: keys {sorted(got)} != README's {sorted(shown)}"
        for key in shown:
            if key in _EXACT:
                assert got[key] == shown[key], f"{where}.{key}: {got[key]!r} != README's {shown[key]!r}"
            _same_shape(got[key], shown[key], f"{where}.{key}")
    elif isinstance(shown, list):
        assert isinstance(got, list) and len(got) == len(shown), f"{where}: {got!r} vs README's {shown!r}"
        for i, (g, s) in enumerate(zip(got, shown)):
            _same_shape(g, s, f"{where}[{i}]")
    elif isinstance(shown, bool) or shown is None:
        assert got is shown or type(got) is type(shown), f"{where}: {got!r} vs README's {shown!r}"
    elif isinstance(shown, (int, float)):
        assert isinstance(got, (int, float)) and not isinstance(got, bool), f"{where}: {got!r} is not a number"
    else:
        assert isinstance(got, type(shown)), f"{where}: {got!r} vs README's {shown!r}"


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
@pytest.mark.parametrize("example", EXAMPLES, ids=[e.id for e in EXAMPLES])
def test_readme_example_works_verbatim(example: Example, readme_server):
    server = readme_server(example.env)
    command = example.command.replace("localhost:8000", f"127.0.0.1:{server.port}")
    assert command != example.command, "an example that does not talk to the server"
    # The command as written; -w only appends the status after the body.
    done = subprocess.run(["bash", "-c", command + " -w '\\n%{http_code}'"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    body, _, status = done.stdout.rpartition("\n")
    assert status == "200", f"{example.id}: HTTP {status}: {body}"
    reply = json.loads(body)
    if example.reply is not None:
        _same_shape(reply, example.reply)
    assert not re.search(r'"(error|detail|message)"\s*:', body), body
