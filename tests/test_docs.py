"""The documentation matches the code: every setting is in .env.example and in the configuration
reference, which is generated from the settings declaration; the README is the front door (short,
linking every reference page), and every link of the README and docs/ leads somewhere."""

from __future__ import annotations

import re
from pathlib import Path

from reranker_serve.config import Settings, variable_names
from reranker_serve.config_reference import BEGIN, END, render

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


def test_the_configuration_reference_is_generated_from_the_declaration_and_current():
    page = (ROOT / "docs" / "configuration.md").read_text()
    generated = BEGIN + page.partition(BEGIN)[2].partition(END)[0] + END
    assert generated == render(), (
        "docs/configuration.md is not what config.py declares: run `python -m reranker_serve.config_reference`")
    listed = re.findall(r"^\| `(RERANKER_[A-Z0-9_]+)` \|", page, re.M)
    assert sorted(listed) == sorted(variables())  # each once
    # and the meaning is the declaration's own: change a description, the page is stale
    field = Settings.model_fields["port"]
    saved = field.description
    try:
        field.description = "a changed meaning"
        assert render() != generated
    finally:
        field.description = saved


def test_the_readme_is_the_front_door():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 300, "the README is the front door: reference text belongs in docs/"
    for page in sorted((ROOT / "docs").glob("*.md")):  # every reference page is reachable from it
        assert f"](docs/{page.name})" in readme, f"README does not link docs/{page.name}"
    assert not re.search(r"^\| `RERANKER_", readme, re.M), "the configuration table lives in docs/configuration.md"


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(text: str) -> set[str]:
    text = re.sub(r"(?ms)^```.*?^```", "", text)  # headings only outside code blocks
    return {_slug(h) for h in re.findall(r"^#{1,6} (.+)$", text, re.M)}


def test_every_link_in_the_readme_and_docs_leads_somewhere():
    broken = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = page.read_text()
        for target in re.findall(r"\]\(([^)\s]+)\)", re.sub(r"(?ms)^```.*?^```", "", text)):
            if re.match(r"[a-z]+:", target):
                continue  # http(s), mailto: outside this repository
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and file.suffix == ".md" and anchor not in _anchors(file.read_text()):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    command = "./setup.sh --dev && .venv/bin/python -m pytest"
    assert command in readme
    assert command in (ROOT / ".ci" / "run").read_text()
