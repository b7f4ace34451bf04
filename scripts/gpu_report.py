#!/usr/bin/env python3
"""The GPU check's report (scripts/gpu_check.sh): one JSON and one Markdown file from its steps.

Reads WORK/steps.jsonl (one line a step: name, status, rc, seconds, budget), WORK/results/*.json
(scripts/benchmark.py --json), WORK/results/tests.xml (pytest's JUnit XML), WORK/logs/versions.log
and the self-check's server log, and writes OUT/gpu_report.json and OUT/gpu_report.md: the numbers
docs/benchmarks.md asks for beside the issue's targets. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

# The targets of docs/benchmarks.md ("GPU engine": what is still to measure).
TARGETS = {
    "in_process_of_fp16_peak": 0.55,
    "server_of_in_process": 0.90,
    "ours_over_naive_fp16": 5.0,
    "lone_p50_ms": 25.0,
    "feeding_pairs_per_s": 6000.0,
    "qwen3_pairs_per_s": 1000.0,
    "health_p99_ms": 50.0,
}


def _load(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _run(result: dict | None, name: str) -> dict | None:
    """The headline figures of one server (or in-process) run of a benchmark JSON."""
    if not result or name not in result:
        return None
    r = result[name]
    keep = ("pairs_per_s", "p50_ms", "p99_ms", "statuses", "gpu_busy_share", "health_p99_ms", "useful_gflops",
            "of_peak", "real_token_share", "pairs_per_batch", "dtype", "cpu_ms_per_pair")
    out = {k: r[k] for k in keep if k in r}
    info = dict(r.get("info") or {})
    info.update((info.get("models") or [{}])[0])  # the served model's own entry: backend, attention
    for key in ("device", "dtype", "attention", "backend"):
        if key in info:
            out[f"info_{key}"] = info[key]
    return out


def _tests(xml: Path) -> dict | None:
    try:
        root = ET.parse(xml).getroot()
    except (OSError, ET.ParseError):
        return None
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    total = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    failed = [f"{c.get('classname')}::{c.get('name')}" for c in root.iter("testcase")
              if c.find("failure") is not None or c.find("error") is not None]
    total["failed"] = failed[:20]
    return total


def _self_check(work: Path, selfcheck: dict | None) -> dict:
    """The unpadded path's verdict (/info's attention) and, from the debug log, its drift."""
    out: dict[str, Any] = {}
    run = _run(selfcheck, "ours")
    if run and "info_attention" in run:
        out["verdict"] = run["info_attention"]
    log = work / "logs" / "selfcheck" / "ours.log"
    if log.exists():
        text = log.read_text(errors="replace")
        if m := re.search(r"unpadded vs padded at start-up: max \|Δ\| (\S+)", text):
            out["max_abs_drift"] = m.group(1)
        if m := re.search(r"unpadded attention failed its start-up self-check \((.*)\); serving padded", text):
            out["failure"] = m.group(1)
        if m := re.search(r"unpadded attention \((\S+) kernel\); start-up self-check passed", text):
            out["passed_with_kernel"] = m.group(1)
    return out


def build(work: Path, *, mode: str, budget: int, seconds: int) -> dict:
    steps = [json.loads(line) for line in (work / "steps.jsonl").read_text().splitlines() if line.strip()]
    results = {p.stem: _load(p) for p in sorted((work / "results").glob("*.json"))}
    versions = None
    for line in reversed((work / "logs" / "versions.log").read_text(errors="replace").splitlines()
                         if (work / "logs" / "versions.log").exists() else []):
        if line.startswith("{"):
            versions = json.loads(line)
            break
    big = results.get("v2m3_32x20")
    report: dict[str, Any] = {
        "mode": mode, "budget_s": budget, "seconds": seconds, "versions": versions,
        "steps": steps,
        "tests": _tests(work / "results" / "tests.xml"),
        "gpu": (big or {}).get("gpu"),
        "matmul_gflops": (big or {}).get("matmul_gflops"),
        "v2m3_32x20": {name: _run(big, name) for name in ("ours", "baseline", "in-process", "engine")},
        "self_check": _self_check(work, results.get("selfcheck")),
        "lone_p50": _run(results.get("lone_p50"), "ours"),
        "padded_32x20": _run(results.get("padded_32x20"), "ours"),
        "feeding": {name: _run(results.get("feeding"), name) for name in ("ours", "in-process", "engine")},
        "qwen3_16x20": _run(results.get("qwen3_16x20"), "ours"),
        "qwen3_no_prefix": _run(results.get("qwen3_no_prefix"), "ours"),
    }
    derived: dict[str, float] = {}
    if big:
        for key, source in (("ours_over_naive_fp16", "ratio_baseline"), ("server_of_in_process", "server_of_in_process")):
            if source in big:
                derived[key] = big[source]
        bare = big.get("in-process") or {}
        if "of_peak" in bare:
            derived["in_process_of_fp16_peak"] = bare["of_peak"]
        if "health_p99_ms" in (big.get("ours") or {}):
            derived["health_p99_ms"] = big["ours"]["health_p99_ms"]
    if report["lone_p50"]:
        derived["lone_p50_ms"] = report["lone_p50"].get("p50_ms")
    if report["feeding"].get("ours"):
        derived["feeding_pairs_per_s"] = report["feeding"]["ours"]["pairs_per_s"]
    if report["qwen3_16x20"]:
        derived["qwen3_pairs_per_s"] = report["qwen3_16x20"]["pairs_per_s"]
    if report["padded_32x20"] and (report["v2m3_32x20"].get("ours") or {}).get("pairs_per_s"):
        derived["unpadded_over_padded"] = (report["v2m3_32x20"]["ours"]["pairs_per_s"]
                                           / report["padded_32x20"]["pairs_per_s"])
    if report["qwen3_no_prefix"] and report["qwen3_16x20"]:
        derived["shared_prefix_over_none"] = (report["qwen3_16x20"]["pairs_per_s"]
                                              / report["qwen3_no_prefix"]["pairs_per_s"])
    report["derived"] = {k: v for k, v in derived.items() if v is not None}
    report["targets"] = TARGETS
    report["ok"] = all(s["status"] in ("ok", "skipped") for s in steps)
    return report


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def markdown(report: dict) -> str:
    v = report["versions"] or {}
    lines = [f"# GPU check ({report['mode']})", "",
             f"{report['seconds']} s of a {report['budget_s']} s budget; GPU {_fmt(report['gpu'])}; python "
             f"{_fmt(v.get('python'))}, torch {_fmt(v.get('torch'))} (CUDA {_fmt(v.get('cuda'))}), transformers "
             f"{_fmt(v.get('transformers'))}, sentence-transformers {_fmt(v.get('sentence_transformers'))}.", "",
             "| step | status | seconds | budget |", "|---|---|---|---|"]
    lines += [f"| {s['name']} | {s['status']} | {s['seconds']} | {s['budget']} |" for s in report["steps"]]
    tests = report["tests"]
    if tests:
        lines += ["", f"Tests: {tests['tests']} collected or run, {tests['failures']} failures, {tests['errors']} "
                      f"errors, {tests['skipped']} skipped" + (": " + ", ".join(tests["failed"]) if tests["failed"] else "")]
    peaks = report["matmul_gflops"] or {}
    if peaks:
        lines += ["", "Matmul peak, GFLOP/s (before / after the runs): " + ", ".join(
            f"{d} {_fmt(p.get('before'), 0)} / {_fmt(p.get('after'), 0)}" for d, p in peaks.items())]
    lines += ["", "| run | pairs/s | p50 ms | p99 ms | GPU busy | useful GFLOP/s | of peak | attention |",
              "|---|---|---|---|---|---|---|---|"]

    def row(label: str, r: dict | None) -> None:
        if r:
            busy = r.get("gpu_busy_share")
            lines.append(f"| {label} | {_fmt(r.get('pairs_per_s'))} | {_fmt(r.get('p50_ms'))} | {_fmt(r.get('p99_ms'))} "
                         f"| {_fmt(100 * busy if busy is not None else None, 0)}{'%' if busy is not None else ''} "
                         f"| {_fmt(r.get('useful_gflops'), 0)} | {_fmt(r.get('of_peak'), 2)} "
                         f"| {_fmt(r.get('info_attention'))} |")

    for name, r in report["v2m3_32x20"].items():
        row(f"v2-m3 32×20 {name}", r)
    row("v2-m3 32×20 ours, padded", report["padded_32x20"])
    row("v2-m3 lone request ×20", report["lone_p50"])
    for name, r in report["feeding"].items():
        row(f"xlmr-mini 32×20 {name}", r)
    row("Qwen3-0.6B 16×20 ours", report["qwen3_16x20"])
    row("Qwen3-0.6B 16×20, no shared prefix", report["qwen3_no_prefix"])
    sc = report["self_check"]
    lines += ["", f"Self-check: {_fmt(sc.get('verdict'))}; max |Δ| vs padded {_fmt(sc.get('max_abs_drift'))}"
                  + (f"; passed with the {sc['passed_with_kernel']} kernel" if sc.get("passed_with_kernel") else "")
                  + (f"; failure: {sc['failure']}" if sc.get("failure") else "")]
    lines += ["", "| measure | value | target |", "|---|---|---|"]
    for key, value in report["derived"].items():
        lines.append(f"| {key} | {_fmt(value, 2)} | {_fmt(report['targets'].get(key), 2)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--mode", default="gpu")
    ap.add_argument("--budget", type=int, default=0)
    ap.add_argument("--seconds", type=int, default=0)
    args = ap.parse_args(argv)
    report = build(args.work, mode=args.mode, budget=args.budget, seconds=args.seconds)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_report.json").write_text(json.dumps(report, indent=2))
    (args.out / "gpu_report.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
