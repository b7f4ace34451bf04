"""The documentation matches the code: every setting is in .env.example and in the README."""

from __future__ import annotations

import re
from pathlib import Path

from reranker_serve.config import Settings, variable_names

ROOT = Path(__file__).resolve().parent.parent


def variables() -> set[str]:
    return variable_names()


def test_env_example_lists_every_setting_and_loads():
    text = (ROOT / ".env.example").read_text()
    listed = set(re.findall(r"^(RERANKER_[A-Z0-9_]+)=", text, re.M))
    assert listed == variables()
    values = dict(line.split("=", 1) for line in text.splitlines() if line.startswith("RERANKER_"))
    settings = Settings(_env_file=None, **{k.removeprefix("RERANKER_").lower(): v for k, v in values.items() if v})
    assert settings.host == "127.0.0.1"  # not exposed by default


def test_readme_table_lists_every_setting():
    readme = (ROOT / "README.md").read_text()
    listed = set(re.findall(r"^\| `(RERANKER_[A-Z0-9_]+)` \|", readme, re.M))
    assert listed == variables()


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    command = "./setup.sh --dev && .venv/bin/python -m pytest"
    assert command in readme
    assert command in (ROOT / ".ci" / "run").read_text()
