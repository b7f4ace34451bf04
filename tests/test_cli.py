"""The command line (issue 24 item 7): one argparse, `serve` (the default), `download`, `evaluate`;
every older spelling still works."""

from __future__ import annotations

import subprocess
import sys

import pytest

from reranker_serve.__main__ import main


def test_help_lists_the_subcommands():
    out = subprocess.run([sys.executable, "-m", "reranker_serve", "--help"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0
    assert "{serve,download,evaluate}" in out.stdout and "--port" in out.stdout


@pytest.mark.parametrize("argv", [["--port", "70000"], ["serve", "--port", "70000"], ["--port", "70000", "serve"]])
def test_serve_is_the_default_and_takes_its_options_before_or_after_the_name(argv, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no .env
    assert main(argv) == 2
    assert "RERANKER_PORT: Input should be less than or equal to 65535 (got 70000)" in capsys.readouterr().err


def test_download_and_evaluate_keep_their_own_usage(capsys):
    assert main(["download"]) == 2
    assert "usage: download_model.sh MODEL_ID [DIR]" in capsys.readouterr().err
    assert main(["download", "--help"]) == 0
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", "--help"])
    assert exit_.value.code == 0 and "COLLECTION" in capsys.readouterr().out.upper()


def test_the_module_spellings_still_work():
    for module in ("reranker_serve.download", "reranker_serve"):
        args = [sys.executable, "-m", module] + (["download"] if module == "reranker_serve" else [])
        out = subprocess.run(args, capture_output=True, text=True, timeout=120)
        assert (out.returncode, "usage: download_model.sh" in out.stderr) == (2, True), (module, out.stderr)
