"""The GPU check rehearsed on the CPU, so that a GPU lease is not spent debugging its script.

scripts/gpu_prepare.sh fills a device folder as for the GPU machine (wheels for Python 3.12, the
tokenizer, the synthetic-model tool, the benchmark text); scripts/gpu_check.sh --dry-run then
installs those wheels offline (for the GPU machine's Python, unpacked aside), builds the tiny
stand-in models, runs one test module and two of the benchmark steps (the self-check's, which
also measures a server, and the Qwen3 shape's), and writes the report. The other benchmark steps
run the same function with other arguments; `--dry-run` without --only runs them all (minutes).
"""

from __future__ import annotations

import json
import os
import subprocess
import zipfile
from pathlib import Path

from procs import ROOT

SHARED = ROOT.parent / "shared"
STEPS = "install,versions,tests,models,selfcheck,qwen3_16x20"


def test_gpu_prepare_then_the_rehearsal_writes_one_report(tmp_path):
    device, out, work = tmp_path / "device", tmp_path / "out", tmp_path / "work"
    env = dict(os.environ, DEVICE_DIR=str(device), OUT=str(out), WORK=str(work), SHARED=str(SHARED))
    prepared = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_prepare.sh")], env=env, capture_output=True,
                              text=True, timeout=600)
    assert prepared.returncode == 0, prepared.stdout + prepared.stderr
    wheels = sorted(p.name for p in (device / "whl").glob("*.whl"))
    core = [w for w in wheels if w.startswith("pydantic_core-")]
    assert len(core) == 1 and "-cp312-" in core[0] and "manylinux" in core[0]  # the GPU machine's Python
    # pydantic-core is the version this pydantic pins (a mismatch fails at import there, not here).
    (pydantic,) = (device / "whl").glob("pydantic-2*.whl")
    metadata = zipfile.ZipFile(pydantic).read(f"{pydantic.name.split('-py3')[0]}.dist-info/METADATA").decode()
    pinned = next(line for line in metadata.splitlines() if line.startswith("Requires-Dist: pydantic-core"))
    assert core[0].split("-")[1] in pinned, pinned
    for part in ("tools/make_synthetic_model.py", "tokenizers/xlm-roberta/tokenizer.json", "data/vaswani/corpus"):
        assert (device / part).exists(), part

    done = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--dry-run", "--only", STEPS], env=env,
                          capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "gpu_report.json").read_text())
    status = {s["name"]: s["status"] for s in report["steps"]}
    assert {name: status[name] for name in STEPS.split(",")} == dict.fromkeys(STEPS.split(","), "ok"), \
        (out / "gpu_check.log").read_text()[-3000:]
    assert {status[name] for name in status if name not in STEPS.split(",")} == {"skipped"}
    assert report["mode"] == "dry-run" and report["ok"] and report["seconds"] <= report["budget_s"]
    assert report["versions"]["torch"] and report["versions"]["reranker_serve"]
    assert report["tests"]["tests"] > 0 and report["tests"]["failures"] == report["tests"]["errors"] == 0
    # The numbers came from real runs: the server answered every request, and said how it attends.
    for run in (report["self_check"], report["qwen3_16x20"]):
        assert run, report
    assert report["self_check"]["verdict"] == "padded"  # the CPU has no unpadded path; a GPU says its verdict
    assert report["qwen3_16x20"]["pairs_per_s"] > 0 and set(report["qwen3_16x20"]["statuses"]) == {"200"}
    assert report["derived"]["qwen3_pairs_per_s"] == report["qwen3_16x20"]["pairs_per_s"]
    markdown = (out / "gpu_report.md").read_text()
    assert "| selfcheck | ok |" in markdown and "Qwen3-0.6B 16×20 ours" in markdown
    # What comes back from the device tool: at most 8 files, none in folders.
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.log", "gpu_logs.tar.gz", "gpu_report.json",
                                                    "gpu_report.md"]
