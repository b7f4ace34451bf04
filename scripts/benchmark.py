#!/usr/bin/env python3
"""Load generator for reranker-serve, with the naive server side by side.

    # ours vs the naive seed-style server, same model, one invocation (run one after the other)
    python scripts/benchmark.py --model /tmp/models/bge-reranker-base --baseline
    # an already running server (any dialect)
    python scripts/benchmark.py --url http://127.0.0.1:8000 --dialect cohere-v2
    # server overhead over the bare forward pass, one request of 10 short documents
    python scripts/benchmark.py --model /tmp/models/xlmr-mini --overhead
    # the feeding ceiling: the server against the same requests in this process (no HTTP),
    # twice, alternating (only ratios within one round compare on a noisy machine)
    python scripts/benchmark.py --model /tmp/m/xlmr-mini --in-process --concurrency 32 --requests 96 --rounds 2
    # the score cache on a replayed RAG trace where half the pairs repeat: cache off, then on
    python scripts/benchmark.py --model /tmp/models/bge-reranker-base --cache-trace --repeat-share 0.5
    # side by side in one run, A B A B (issue 22): ours in several modes, the naive server,
    # infinity-emb, llama.cpp's llama-server on GGUFs of the same model; table with the CPU's flags
    python scripts/benchmark.py --model /work/bge-base --requests 8 --docs 20 --concurrency 4 --rounds 2 \
        --mode default --mode fp32:DTYPE=float32 --mode int8:QUANTIZE=int8 --baseline \
        --infinity /work/venv-infinity --llamacpp /work/llama.cpp/build/bin/llama-server \
        --gguf /work/bge-base-Q8_0.gguf --gguf /work/bge-base-BF16.gguf --table

Requests are built from real text (Vaswani by default: ../shared/data/vaswani, or --text FILE
with one document per line): documents of --min-words..--max-words words (consecutive abstracts
joined), --docs per request, a random query each. Reports pairs/s, p50/p99 latency, status
counts, and MFU: useful GFLOP/s (scripts/mfu.py: 2·matmul params·tokens + attention 4·L²·h
per layer, padding excluded) against the served precision's matmul peak on this CPU (torch
float32/bfloat16, OpenVINO int8, same threads), measured right after each server's run, both
over wall-clock time and per CPU second of the server (the figure a shared machine moves less);
the load average is printed beside each run. --json writes everything to a file.

On CUDA it also reports the GPU's name, its fp16/bf16 8192³ matmul peak, the GPU's busy share
during each run (torch.cuda.utilization, NVML), and useful TFLOP/s against that peak;
--baseline-fp16 runs the naive server in fp16 on the GPU, as use_fp16=True users do. While our
server is under load, /health is probed every 100 ms (its p99: is the event loop responsive?).
--in-process adds the server's ceiling: the model's own encode and forward over the same pairs
in best-case batches under the engine's budget ("in-process"), and the engine (batcher
included) driven by the same concurrent callers without HTTP ("engine"). The load generator
sends prepared HTTP/1.1 requests over keep-alive sockets (it shares the machine with the server)
and reports its own CPU per pair; --passes N measures the last of N passes per server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx

from mfu import flops_per_pair, matmul_peak, mfu

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "vaswani"

BODIES = {
    "native": lambda q, d: ("/rerank", {"query": q, "documents": d}),
    "tei": lambda q, d: ("/rerank", {"query": q, "texts": d}),
    "cohere-v1": lambda q, d: ("/v1/rerank", {"query": q, "documents": d}),
    "cohere-v2": lambda q, d: ("/v2/rerank", {"query": q, "documents": d}),
    "jina": lambda q, d: ("/api/v1/rerank", {"query": q, "documents": d, "return_documents": False}),
}


# -- workload ---------------------------------------------------------------------------------------
def load_texts(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    if args.text:
        lines = [l.strip() for l in Path(args.text).read_text().splitlines() if l.strip()]
        return lines, lines
    corpus = (args.data / "corpus" / "doc-text.trec").read_text()
    docs = [" ".join(m.split()) for m in re.findall(r"</DOCNO>(.*?)</DOC>", corpus, re.S)]
    topics = (args.data / "query-text.trec").read_text()
    queries = [" ".join(m.split()).lower() for m in re.findall(r"<title>(.*?)</title>", topics, re.S)]
    return docs, queries


def random_document(rng: random.Random, words: list[list[str]], args: argparse.Namespace) -> str:
    """--min-words..--max-words words of consecutive abstracts, from a random one on."""
    target = rng.randint(args.min_words, args.max_words)
    i, text = rng.randrange(len(words)), []
    while len(text) < target:
        text += words[i % len(words)]
        i += 1
    return " ".join(text[:target])


def build_requests(args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    docs, queries = load_texts(args)
    rng = random.Random(args.seed)
    words = [d.split() for d in docs if d]
    requests = []
    for _ in range(args.requests):
        batch = [random_document(rng, words, args) for _ in range(args.docs)]
        requests.append((rng.choice(queries), batch))
    return requests


# -- machine ----------------------------------------------------------------------------------------
# The CPU features that decide which precision pays (bf16 needs AVX512-BF16 or AMX; int8 VNNI).
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def cpu_flags() -> list[str]:
    try:
        flags = next(l.split(":", 1)[1].split() for l in open("/proc/cpuinfo") if l.startswith("flags"))
    except (OSError, StopIteration):
        return []
    return [f for f in CPU_FLAGS if f in flags]


def machine() -> dict:
    cpu = platform.processor()
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "python": platform.python_version(),
            "flags": cpu_flags()}


def parse_mode(spec: str) -> tuple[str, dict[str, str]]:
    """``NAME[:KEY=VALUE,...]``: KEY is a RERANKER_ setting (``DTYPE=float32``), or, written
    ``+KEY``, a raw environment variable (``+ONEDNN_MAX_CPU_ISA=AVX2``)."""
    name, _, rest = spec.partition(":")
    env = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        env[key[1:] if key.startswith("+") else f"RERANKER_{key.upper()}"] = value
    return name, env


def pair_lengths(model: Path, requests: list[tuple[str, list[str]]], max_length: int) -> list[list[int]]:
    """Tokens of each pair, per request."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    out = []
    for q, docs in requests:
        enc = tok([q] * len(docs), docs, truncation="only_second", max_length=max_length)
        out.append([len(ids) for ids in enc["input_ids"]])
    return out


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads (Linux /proc; 0 elsewhere).

    CPU seconds per pair is what a shared machine can compare fairly: wall-clock pairs/s moves
    with whatever else runs on the cores, the CPU a pair costs much less.
    """
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def _gpu_name() -> str:
    import torch

    props = torch.cuda.get_device_properties(0)
    return f"{props.name}, {props.total_memory / 2**30:.0f} GiB, torch {torch.__version__}"


# -- servers ----------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], env: dict, url: str, log: Path, ready_path: str = "/ready") -> subprocess.Popen:
    proc = subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=ROOT)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: see {log}")
        try:
            if httpx.get(f"{url}{ready_path}", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"server not ready after 600 s: see {log}")


def start_ours(args: argparse.Namespace, port: int, mode: dict[str, str] | None = None,
               name: str = "ours") -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RERANKER_")}
    env.update(RERANKER_MODEL_PATH=str(args.model), RERANKER_PORT=str(port), RERANKER_USE_OFFLINE_MODE="true",
               RERANKER_MAX_LENGTH=str(args.max_length), RERANKER_LOG_LEVEL="warning")
    for setting in args.set or []:
        key, _, value = setting.partition("=")
        env[f"RERANKER_{key.upper()}"] = value
    env.update(mode or {})
    return start([sys.executable, "-m", "reranker_serve"], env, f"http://127.0.0.1:{port}",
                 args.logdir / f"{name}.log")


def start_baseline(args: argparse.Namespace, port: int, mode: dict[str, str] | None = None,
                   name: str = "baseline") -> subprocess.Popen:
    cmd = [sys.executable, str(ROOT / "scripts" / "naive_server.py"), "--model", str(args.model), "--port", str(port),
           "--max-length", str(args.max_length)] + (["--fp16"] if args.baseline_fp16 else [])
    env = {**os.environ, **{k: v for k, v in (mode or {}).items() if not k.startswith("RERANKER_")}}
    return start(cmd, env, f"http://127.0.0.1:{port}", args.logdir / f"{name}.log")


def start_llamacpp(args: argparse.Namespace, port: int, gguf: Path, name: str) -> subprocess.Popen:
    """llama.cpp's llama-server in reranking mode on a GGUF of the same model (built by the user:
    docs/benchmarks.md). As many slots as clients, one thread per core, and a micro-batch that
    holds a whole pair (an encoder's sequence must fit one ubatch)."""
    slots, window = args.concurrency, args.max_length
    cmd = [str(args.llamacpp), "--reranking", "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port),
           "-t", str(len(os.sched_getaffinity(0))), "--parallel", str(slots), "-c", str(slots * window),
           "-b", str(slots * window), "-ub", str(slots * window), "--no-webui", "--log-disable"]
    return start(cmd, dict(os.environ), f"http://127.0.0.1:{port}", args.logdir / f"{name}.log", ready_path="/health")


def start_infinity(args: argparse.Namespace, port: int) -> subprocess.Popen:
    """infinity-emb from its own venv (it pins other transformers / sentence-transformers)."""
    env = dict(os.environ, INFINITY_ANONYMOUS_USAGE_STATS="0", DO_NOT_TRACK="1", HF_HUB_OFFLINE="1")
    cmd = [str(args.infinity / "bin" / "infinity_emb"), "v2", "--model-id", str(args.model),
           "--served-model-name", "m", "--engine", "torch", "--device", "cpu", "--dtype", args.infinity_dtype,
           "--batch-size", "32", "--host", "127.0.0.1", "--port", str(port)]
    return start(cmd, env, f"http://127.0.0.1:{port}", args.logdir / "infinity.log", ready_path="/health")


# -- load -------------------------------------------------------------------------------------------
class RawConnection:
    """One keep-alive HTTP/1.1 connection that sends prepared request bytes and reads the reply.

    A load generator as light as wrk's: on a small machine it shares the cores with the server it
    measures, and httpx spent ~0.17 ms of CPU per pair there (3.4 ms per request of 20 documents),
    6% of the machine at 700 pairs/s. This one parses only the status line and the headers.
    """

    def __init__(self, host: str, port: int, *, tls: bool = False) -> None:
        self.host, self.port, self.tls = host, port, tls
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    @staticmethod
    def request(host: str, port: int, path: str, body: bytes, headers: dict) -> bytes:
        lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", "Content-Type: application/json",
                 f"Content-Length: {len(body)}", *(f"{k}: {v}" for k, v in headers.items())]
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    async def send(self, data: bytes) -> tuple[int, dict[str, str]]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port, ssl=self.tls or None)
        try:
            self.writer.write(data)
            head = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            status = int(head[0].split(" ", 2)[1])
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:] if line)}
            if headers.get("transfer-encoding", "").lower() == "chunked":
                while size := int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16):
                    await self.reader.readexactly(size + 2)
                await self.reader.readuntil(b"\r\n")
            else:
                await self.reader.readexactly(int(headers.get("content-length", 0)))
            if headers.get("connection", "").lower() == "close":
                self.close()
            return status, headers
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def run_load(url: str, dialect: str, requests: list, concurrency: int, headers: dict, *,
                   probe_health: bool = False) -> dict:
    # Bodies are serialised into whole requests before the clock starts (see RawConnection).
    parsed = httpx.URL(url)
    tls = parsed.scheme == "https"
    host, port = parsed.host, parsed.port or (443 if tls else 80)
    queue = []
    for index, (q, docs) in enumerate(requests):
        path, body = BODIES[dialect](q, docs)
        queue.append((index, RawConnection.request(host, port, path, json.dumps(body).encode(), headers), len(docs)))
    latencies, statuses, tokens, pairs, succeeded = [], Counter(), 0, 0, []

    async def worker() -> None:
        nonlocal tokens, pairs
        connection = RawConnection(host, port, tls=tls)
        while queue:
            index, data, n = queue.pop(0)
            t = time.perf_counter()
            try:
                status, reply = await connection.send(data)
                statuses[status] += 1
                if status == 200:
                    latencies.append(time.perf_counter() - t)
                    pairs += n
                    succeeded.append(index)
                    tokens += int(reply.get("x-compute-tokens", 0))
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                statuses[type(exc).__name__] += 1
        connection.close()

    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        warm = BODIES[dialect](*requests[0])
        # no-store: the warm-up must not put the first request's scores in the server's score cache.
        await client.post(warm[0], json=warm[1], headers={**headers, "Cache-Control": "no-store"})
        started, client_cpu = time.perf_counter(), time.process_time()
        done = asyncio.Event()
        health: list[float] = []

        async def probe() -> None:
            # The event loop's responsiveness under full load: /health every 100 ms on its own connection.
            async with httpx.AsyncClient(base_url=url, timeout=60) as own:
                while not done.is_set():
                    t = time.perf_counter()
                    if (await own.get("/health")).status_code == 200:
                        health.append(time.perf_counter() - t)
                    await asyncio.sleep(0.1)

        prober = asyncio.ensure_future(probe()) if probe_health else None
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
        client_cpu = time.process_time() - client_cpu
        done.set()
        if prober is not None:
            await prober
    lat = sorted(latencies)
    health.sort()
    return {
        "seconds": elapsed,
        "requests": len(requests),
        "pairs": pairs,
        "pairs_per_s": pairs / elapsed,
        "p50_ms": 1000 * statistics.median(lat) if lat else None,
        "p99_ms": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else None,
        "statuses": {str(k): v for k, v in statuses.items()},
        "server_tokens": tokens,
        "client_cpu_ms_per_pair": 1000 * client_cpu / pairs if pairs else None,
        "succeeded": sorted(succeeded),
        **({"health_p99_ms": 1000 * health[min(len(health) - 1, int(0.99 * len(health)))]} if health else {}),
    }


def batching(url: str) -> dict:
    """How full the server's forward passes were: real tokens / padded tokens, pairs per batch."""
    from prometheus_client.parser import text_string_to_metric_families

    totals: Counter = Counter()
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=10).text):
        for sample in family.samples:
            totals[sample.name] += sample.value
    padded, batches = totals["reranker_batch_tokens_sum"], totals["reranker_batch_size_count"]
    if not padded or not batches:
        return {}
    return {"real_token_share": totals["reranker_tokens_total"] / padded,
            "pairs_per_batch": totals["reranker_batch_size_sum"] / batches}


def report(name: str, result: dict, request_flops: list[float] | None, peak: float | None) -> None:
    if peak is not None:
        result["matmul_gflops"] = peak
    line = (f"{name:>10}: {result['pairs_per_s']:7.2f} pairs/s  p50 {result['p50_ms'] or 0:8.1f} ms  "
            f"p99 {result['p99_ms'] or 0:8.1f} ms  statuses {result['statuses']}")
    if "cpu_ms_per_pair" in result:
        line += f"  CPU {result['cpu_ms_per_pair']:.2f} ms/pair"
    if result.get("client_cpu_ms_per_pair"):
        line += f" (load generator {result['client_cpu_ms_per_pair']:.2f})"
    if "health_p99_ms" in result:
        line += f"  /health p99 {result['health_p99_ms']:.1f} ms"
    if "gpu_busy_share" in result:
        line += f"  GPU busy {100 * result['gpu_busy_share']:.0f}%"
    if "real_token_share" in result:
        line += f"  real tokens {100 * result['real_token_share']:.0f}%, {result['pairs_per_batch']:.1f} pairs/batch"
    if "mfu" in result:  # measured beside the run (CPU)
        line += (f"  useful {result['useful_gflops']:6.1f} GFLOP/s, MFU {100 * result['mfu']:.0f}% of "
                 f"{result['peak_gflops']:.0f} ({result['dtype']} matmul)")
        if "mfu_cpu" in result:
            line += f", per CPU second {100 * result['mfu_cpu']:.0f}%"
        line += f"  load {result['load']:.1f}"
    elif request_flops:
        # Only answered requests count as useful work.
        gflops = sum(request_flops[i] for i in result["succeeded"]) / result["seconds"] / 1e9
        result["useful_gflops"] = gflops
        line += f"  useful {gflops:6.1f} GFLOP/s"
        if peak:
            result["of_peak"] = gflops / peak
            line += f" ({100 * gflops / peak:.0f}% of matmul peak)"
    print(line, flush=True)


def _dtype_of(info: dict) -> str | None:
    """The dtype our /info reports (per model where it lists models)."""
    if info.get("dtype"):
        return info["dtype"]
    models = info.get("models") or []
    return models[0].get("dtype") if models and isinstance(models[0], dict) else None


def _cell(run: dict | None) -> str:
    if not run:
        return "did not start"
    if "mfu" not in run:
        return f"{run['pairs_per_s']:.2f}"
    per_cpu = f", {100 * run['mfu_cpu']:.0f}%" if "mfu_cpu" in run else ""
    return f"{run['pairs_per_s']:.2f} ({100 * run['mfu']:.0f}%{per_cpu}; {run['load']:.1f})"


def markdown_table(out: dict, names: list[str]) -> str:
    """Every system's pairs/s in each round (servers run one after another, round after round:
    A B A B), with the machine and its CPU flags in the header."""
    m = out["machine"]
    rounds = out.get("rounds", {})
    n = max((len(v) for v in rounds.values()), default=0)
    lines = [f"{m['cpu']}, {m['cores']} cores; CPU flags: {', '.join(m.get('flags') or ['none of ' + '/'.join(CPU_FLAGS)])}",
             "", "| system | dtype | " + " | ".join(f"round {i + 1} pairs/s (MFU, per CPU s; load)" for i in range(n)) +
             " | matmul peak GFLOP/s (last round) | statuses (last round) | p50 / p99 ms (last round) |",
             "|---|---|" + "---|" * n + "---|---|---|"]
    for name in names:
        runs = rounds.get(name, [])
        if not any(runs):
            continue
        last = [r for r in runs if r][-1]
        cells = [_cell(r) for r in runs] + [""] * (n - len(runs))
        peak = f"{last['peak_gflops']:.0f}" if last.get("peak_gflops") else "—"
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(last["statuses"].items()))
        latency = f"{last['p50_ms'] or 0:.0f} / {last['p99_ms'] or 0:.0f}"
        lines.append(f"| {name} | {last['dtype']} | " + " | ".join(cells) + f" | {peak} | {statuses} | {latency} |")
    return "\n".join(lines)


# -- overhead ---------------------------------------------------------------------------------------
def otlp_sink():
    """A local OTLP/HTTP collector that accepts and discards traces (--otlp-sink), so tracing's
    cost is measured with spans really encoded and sent."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            self.server.exports += 1
            self.server.bytes += len(body)
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *a) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.exports = server.bytes = 0
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def overhead(args: argparse.Namespace) -> dict:
    """p50 of one HTTP request (10 short documents) minus p50 of the bare forward pass."""
    import torch

    from reranker_serve.config import Settings
    from reranker_serve.device import Placement, configure_cpu_threads
    from reranker_serve.models import EncodeOptions, load_model

    docs = [f"short document number {i} about computers" for i in range(10)]
    query = "digital computers"
    configure_cpu_threads(0)
    # The same model path as the server's (backend included: --set applies to both).
    overrides = dict(item.split("=", 1) for item in args.set or [])
    spec = Settings(_env_file=None, model_path=args.model, max_length=args.max_length, **overrides).model_specs[0]
    model = load_model(spec, Placement("cpu", torch.float32))
    pairs = model.encode(query, docs, EncodeOptions(max_length=model.max_length))
    bare = []
    for _ in range(args.repeat):
        t = time.perf_counter()
        model.forward(pairs)
        bare.append(time.perf_counter() - t)
    del model
    port = free_port()
    # The same request again and again: with the score cache it would be answered from memory
    # (no forward pass at all), so the cache is off here unless --set says otherwise.
    args.set = ["cache_mb=0"] + (args.set or []) + ["dtype=float32"]
    sink = None
    if args.otlp_sink:
        sink = otlp_sink()
        args.set.append(f"otlp_endpoint=http://127.0.0.1:{sink.server_address[1]}")
    proc = start_ours(args, port)
    try:
        served, server_total, server_inference = [], [], []
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            for _ in range(5):
                client.post("/rerank", json={"query": query, "documents": docs})
            for _ in range(args.repeat):
                t = time.perf_counter()
                r = client.post("/rerank", json={"query": query, "documents": docs})
                served.append(time.perf_counter() - t)
                assert r.status_code == 200, r.text
                server_total.append(float(r.headers["x-total-time"]))
                server_inference.append(float(r.headers["x-inference-time"]))
    finally:
        proc.terminate()
        proc.wait(30)
        if sink is not None:
            sink.shutdown()
            print(f"OTLP sink received {sink.exports} exports, {sink.bytes} bytes")
    b, s = statistics.median(bare) * 1000, statistics.median(served) * 1000
    st, si = statistics.median(server_total), statistics.median(server_inference)
    print(f"bare forward p50 {b:.2f} ms | client-observed p50 {s:.2f} ms (overhead {s - b:.2f} ms) | "
          f"server-side X-Total-Time p50 {st:.2f} ms, of which forward {si:.2f} ms (overhead {st - b:.2f} ms)")
    return {"bare_forward_p50_ms": b, "served_p50_ms": s, "overhead_ms": s - b,
            "server_total_p50_ms": st, "server_inference_p50_ms": si, "server_overhead_ms": st - b}


# -- in-process ---------------------------------------------------------------------------------------
def in_process(args: argparse.Namespace, requests: list[tuple[str, list[str]]]) -> dict:
    """The server's ceiling: the same engine (settings, backend, batcher, batches) scoring the same
    requests from the same number of concurrent callers, with no HTTP in between."""
    from reranker_serve.config import Settings
    from reranker_serve.engine import Engine

    overrides = dict(item.split("=", 1) for item in args.set or [])
    settings = Settings(_env_file=None, model_path=args.model, max_length=args.max_length, use_offline_mode=True,
                        **overrides)
    engine = Engine.load(settings)
    engine.start()
    options = engine.encode_options()
    gpu = _gpu_monitor(engine.model.device)

    async def run() -> tuple[float, list[float]]:
        queue = list(requests)
        latencies: list[float] = []

        async def worker() -> None:
            while queue:
                q, docs = queue.pop(0)
                t = time.perf_counter()
                await engine.score(q, docs, options)
                latencies.append(time.perf_counter() - t)

        await engine.score(*requests[0], options)  # as run_load: one warm-up request
        for _ in range(args.passes - 1):
            queue.extend(requests)
            await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        latencies.clear()
        queue[:] = requests
        gpu.start()
        started, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        cpu_seconds[0] = time.process_time() - cpu
        return time.perf_counter() - started, sorted(latencies)

    cpu_seconds = [0.0]
    try:
        elapsed, lat = asyncio.run(run())
    finally:
        busy = gpu.stop()
        engine.stop()
    pairs = sum(len(d) for _, d in requests)
    common = {"requests": len(requests), "pairs": pairs, "statuses": {"200": len(requests)},
              "succeeded": list(range(len(requests))), "dtype": engine.model.dtype_name,
              "device": engine.model.device, "attention": getattr(engine.model, "attention", "padded")}
    for _ in range(args.passes - 1):
        bare_forward(engine, requests)
    cpu = time.process_time()
    bare = bare_forward(engine, requests)
    bare_cpu = time.process_time() - cpu
    return {"engine": {"seconds": elapsed, "pairs_per_s": pairs / elapsed, "p50_ms": 1000 * statistics.median(lat),
                       "p99_ms": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))],
                       "cpu_ms_per_pair": 1000 * cpu_seconds[0] / pairs, **common, **busy},
            "bare": {"seconds": bare, "pairs_per_s": pairs / bare, "p50_ms": None, "p99_ms": None,
                     "cpu_ms_per_pair": 1000 * bare_cpu / pairs, **common}}


def bare_forward(engine, requests: list[tuple[str, list[str]]]) -> float:
    """Seconds for the model's own encode of every request, then forward passes over all the pairs
    sorted by length in batches under the engine's budget: the best batches the batcher could form."""
    import torch

    model, batcher = engine.model, engine.batcher
    options = engine.encode_options()
    started = time.perf_counter()
    pairs = sorted((p for q, docs in requests for p in model.encode(q, docs, options)), key=len, reverse=True)
    i = 0
    while i < len(pairs):
        width, n, tokens = len(pairs[i]), 0, 0
        while i + n < len(pairs) and n < batcher.max_batch_size:
            cost = (n + 1) * width if getattr(batcher, "padded", True) else tokens + len(pairs[i + n])
            if n and cost > batcher.max_batch_tokens:
                break
            tokens += len(pairs[i + n])
            n += 1
        model.forward(pairs[i : i + n])
        i += n
    if model.device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - started


# -- GPU ----------------------------------------------------------------------------------------------
class _gpu_monitor:
    """The GPU's busy share while a run lasts (NVML's utilization, sampled every 100 ms); a no-op on CPU."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.samples: list[float] = []
        self._stop = None

    def start(self) -> None:
        if not self.device.startswith("cuda"):
            return
        import threading

        import torch

        self._stop = threading.Event()

        def sample() -> None:
            while not self._stop.is_set():
                try:
                    self.samples.append(float(torch.cuda.utilization()))  # NVML (nvidia-ml-py) underneath
                except Exception:
                    return
                self._stop.wait(0.1)

        threading.Thread(target=sample, daemon=True).start()

    def stop(self) -> dict:
        if self._stop is None:
            return {}
        self._stop.set()
        return {"gpu_busy_share": statistics.mean(self.samples) / 100} if self.samples else {}


def cuda_matmul_peak(dtype_name: str, n: int = 8192, repeat: int = 10) -> float:
    """The GPU's dense matmul rate (GFLOP/s) at n³, the figure useful work is compared with."""
    import torch

    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(n, n, dtype=dtype, device="cuda"), torch.randn(n, n, dtype=dtype, device="cuda")
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeat):
        a @ b
    end.record()
    torch.cuda.synchronize()
    return 2 * n**3 * repeat / (start.elapsed_time(end) / 1000) / 1e9


# -- score cache ------------------------------------------------------------------------------------
def build_cache_trace(args: argparse.Namespace) -> tuple[list[tuple[str, list[str]]], float]:
    """A RAG trace: --requests requests of --docs documents over --trace-queries conversations
    (queries); a request of a conversation seen before reuses documents retrieved for it earlier
    (chat turns, retries, pagination) so that --repeat-share of all pairs repeat an earlier pair."""
    docs, queries = load_texts(args)
    rng = random.Random(args.seed)
    words = [d.split() for d in docs if d]
    conversations = rng.sample(queries, min(args.trace_queries, len(queries)))
    seen: dict[str, list[str]] = {}
    trace, repeats, total = [], 0, 0
    for _ in range(args.requests):
        query = rng.choice(conversations)
        past = seen.setdefault(query, [])
        batch: list[str] = []
        for _ in range(args.docs):
            total += 1
            candidates = [d for d in past if d not in batch]
            if candidates and repeats < args.repeat_share * total:
                batch.append(rng.choice(candidates))
                repeats += 1
            else:
                batch.append(random_document(rng, words, args))
        past.extend(d for d in batch if d not in past)
        trace.append((query, batch))
    return trace, repeats / total


def cache_metrics(url: str) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    totals: Counter = Counter()
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=10).text):
        for sample in family.samples:
            totals[sample.name] += sample.value
    return {"hits": totals["reranker_cache_hits_total"], "misses": totals["reranker_cache_misses_total"],
            "entries": totals["reranker_cache_entries"]}


def cache_trace(args: argparse.Namespace) -> dict:
    """The same trace replayed against our server with the cache off, then on (each --rounds times,
    alternating, a fresh server each time so every replay starts cold)."""
    trace, share = build_cache_trace(args)
    pairs = sum(len(d) for _, d in trace)
    print(f"trace: {len(trace)} requests x {args.docs} docs over {args.trace_queries} conversations, "
          f"{100 * share:.0f}% of {pairs} pairs repeat an earlier one, concurrency {args.concurrency}")
    out: dict = {"requests": len(trace), "pairs": pairs, "repeat_share": share, "runs": []}
    for _ in range(args.rounds):
        for name, mb in (("off", "0"), ("on", str(args.cache_mb))):
            run_args = argparse.Namespace(**vars(args))
            run_args.set = (args.set or []) + [f"cache_mb={mb}"]
            port = free_port()
            proc, url = start_ours(run_args, port), f"http://127.0.0.1:{port}"
            try:
                result = asyncio.run(run_load(url, args.dialect, trace, args.concurrency, {}))
                result.update(cache=cache_metrics(url), name=name)
            finally:
                proc.terminate()
                proc.wait(60)
            result.pop("succeeded")
            out["runs"].append(result)
            print(f"cache {name:>3}: {result['pairs_per_s']:7.2f} pairs/s  p50 {result['p50_ms']:8.1f} ms  "
                  f"p99 {result['p99_ms']:8.1f} ms  tokens fed {result['server_tokens']}  "
                  f"hits {result['cache']['hits']:.0f} misses {result['cache']['misses']:.0f}  "
                  f"statuses {result['statuses']}", flush=True)
    return out


# -- main -------------------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", type=Path, help="model folder: start our server on it (and the baseline)")
    ap.add_argument("--url", help="benchmark a server that is already running")
    ap.add_argument("--baseline", action="store_true", help="also run the naive seed-style server, same model")
    ap.add_argument("--infinity", type=Path, metavar="VENV",
                    help="also run infinity-emb from this venv (pip install 'infinity-emb[server,torch]')")
    ap.add_argument("--infinity-dtype", default="float32", help="infinity's --dtype (bfloat16 only with AMX)")
    ap.add_argument("--overhead", action="store_true", help="measure server overhead over the bare forward pass")
    ap.add_argument("--in-process", action="store_true",
                    help="also run the same requests through the engine in this process, no HTTP (the ceiling)")
    ap.add_argument("--baseline-fp16", action="store_true",
                    help="the naive server in fp16 (CrossEncoder use_fp16-style, as GPU users run it)")
    ap.add_argument("--otlp-sink", action="store_true",
                    help="--overhead: trace every request to a local OTLP/HTTP sink (needs reranker-serve[otel])")
    ap.add_argument("--cache-trace", action="store_true", help="replay a RAG trace with the score cache off and on")
    ap.add_argument("--repeat-share", type=float, default=0.5, help="--cache-trace: share of pairs that repeat")
    ap.add_argument("--trace-queries", type=int, default=10, help="--cache-trace: conversations (distinct queries)")
    ap.add_argument("--cache-mb", type=float, default=64, help="--cache-trace: RERANKER_CACHE_MB when on")
    ap.add_argument("--rounds", type=int, default=1,
                    help="--cache-trace: off/on pairs of runs; otherwise: repeat in-process and the servers, alternating")
    ap.add_argument("--dialect", choices=sorted(BODIES), default="native")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--docs", type=int, default=20, help="documents per request")
    ap.add_argument("--requests", type=int, default=40)
    ap.add_argument("--min-words", type=int, default=20)
    ap.add_argument("--max-words", type=int, default=300)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="Vaswani-style TREC collection folder")
    ap.add_argument("--text", help="a file with one document per line instead of --data")
    ap.add_argument("--set", action="append", metavar="KEY=VALUE", help="RERANKER_KEY for our server (repeatable)")
    ap.add_argument("--api-key")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--passes", type=int, default=1,
                    help="run the workload this many times per server (and in-process) and report the last: the "
                         "steady state of a server that has seen these input shapes before")
    ap.add_argument("--repeat", type=int, default=50, help="--overhead: requests to time")
    ap.add_argument("--logdir", type=Path, default=Path("/tmp"))
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--mode", action="append", metavar="NAME[:KEY=VALUE,...]",
                    help="one of our servers per mode, e.g. fp32:DTYPE=float32, int8:QUANTIZE=int8, "
                         "torch:BACKEND=torch; +KEY=VALUE sets a raw environment variable "
                         "(avx2:+ONEDNN_MAX_CPU_ISA=AVX2,+ATEN_CPU_CAPABILITY=avx2); default: the defaults")
    ap.add_argument("--baseline-mode", action="append", metavar="NAME:+KEY=VALUE,...",
                    help="also the naive server under these environment variables (e.g. ISA emulation)")
    ap.add_argument("--llamacpp", type=Path, metavar="BIN", help="llama.cpp's llama-server binary (docs/benchmarks.md)")
    ap.add_argument("--gguf", type=Path, action="append", metavar="FILE",
                    help="with --llamacpp: a GGUF of the same model (repeatable: Q8_0, BF16)")
    ap.add_argument("--table", action="store_true", help="print a markdown table of every round (A B A B)")
    args = ap.parse_args()
    if args.gguf and not args.llamacpp:
        ap.error("--gguf needs --llamacpp BIN")
    if not args.model and not args.url:
        ap.error("give --model (start servers) or --url (use a running one)")

    out: dict = {"machine": machine(), "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:])}
    print(f"machine: {out['machine']}")
    if args.overhead:
        out["overhead"] = overhead(args)
    elif args.cache_trace:
        out["cache_trace"] = cache_trace(args)
    else:
        requests = build_requests(args)
        headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
        useful = None
        if args.model:
            config = json.loads((args.model / "config.json").read_text())
            per_request = pair_lengths(args.model, requests, args.max_length)
            useful = [sum(flops_per_pair(config, n) for n in lengths) for lengths in per_request]
            lengths = [n for lengths in per_request for n in lengths]
            out["workload"] = {"pairs": len(lengths), "tokens": sum(lengths), "mean_tokens": sum(lengths) / len(lengths)}
            print(f"workload: {len(requests)} requests x {args.docs} docs, {sum(lengths)} tokens "
                  f"(mean {sum(lengths) / len(lengths):.0f}/pair), concurrency {args.concurrency}")
        # The machine's matmul rate, measured with no server running (an idle server's thread pool
        # still competes for the cores), before and after the runs; the better of the two counts.
        cuda = _cuda_available()
        if cuda and args.model:
            peaks = {d: cuda_matmul_peak(d) for d in ("float16", "bfloat16")}
            out["gpu"] = _gpu_name()
            print(f"gpu: {out['gpu']}")
        else:
            peaks = {}  # CPU: the served precision's peak is measured beside each run (below)
        threads = len(os.sched_getaffinity(0))  # what our server uses (RERANKER_THREADS=0) and the others are given
        targets: list = [("server", None)] if args.url else []
        if args.model and not args.url:
            # Ours once per --mode (default: one, the defaults), each a server of its own.
            for spec in args.mode or ["default"]:
                mode_name, mode = parse_mode(spec)
                name = "ours" if mode_name == "default" and not mode else f"ours-{mode_name}"
                targets.append((name, lambda a, port, mode=mode, name=name: start_ours(a, port, mode, name)))
        if args.baseline and args.model:
            targets.append(("baseline", start_baseline))
            for spec in args.baseline_mode or []:
                mode_name, mode = parse_mode(spec)
                name = f"baseline-{mode_name}"
                targets.append((name, lambda a, port, mode=mode, name=name: start_baseline(a, port, mode, name)))
        if args.infinity and args.model:
            targets.append(("infinity", start_infinity))
        if args.llamacpp:
            for gguf in args.gguf or []:
                name = "llamacpp-" + gguf.stem.rsplit("-", 1)[-1]  # bge-base-Q8_0.gguf -> llamacpp-Q8_0
                targets.append((name, lambda a, port, gguf=gguf, name=name: start_llamacpp(a, port, gguf, name)))
        # --rounds N repeats the whole set (in-process, then each server) N times: on a noisy machine
        # only ratios taken within one round compare; the median of them is reported.
        shares: list[float] = []
        for round_ in range(args.rounds):
            if args.in_process and args.model:
                both = in_process(args, requests)
                out["in-process"], out["engine"] = both["bare"], both["engine"]
                if not cuda and useful is not None:
                    peak = matmul_peak(both["bare"]["dtype"], threads)
                    for key, row in (("in-process", both["bare"]), ("engine", both["engine"])):
                        row["load"] = os.getloadavg()[0]
                        if peak is not None:
                            row.update(mfu(sum(useful), row["seconds"], row["cpu_ms_per_pair"] * row["pairs"] / 1000,
                                           threads, peak))
                        out.setdefault("rounds", {}).setdefault(key, []).append(
                            {k: row[k] for k in ("pairs_per_s", "p50_ms", "p99_ms", "statuses", "dtype", "mfu",
                                                 "mfu_cpu", "peak_gflops", "load") if k in row})
                print(f"in-process: {both['bare']['pairs_per_s']:.2f} pairs/s (encode + forward, best batches); "
                      f"engine without HTTP: {both['engine']['pairs_per_s']:.2f}", flush=True)
            for name, starter in targets:
                proc, url = None, args.url
                if starter is not None:
                    port = free_port()
                    try:
                        proc, url = starter(args, port), f"http://127.0.0.1:{port}"
                    except SystemExit as failed:  # one system that does not start does not end the run
                        print(f"{name:>9}: did not start ({failed})", flush=True)
                        out.setdefault("failed", {})[name] = str(failed)
                        out.setdefault("rounds", {}).setdefault(name, []).append(None)  # keeps rounds aligned
                        continue
                try:
                    info = httpx.get(f"{url}/info", timeout=5).json() if name in ("ours", "server") else {}
                except (httpx.HTTPError, ValueError):
                    info = {}
                ours = name in ("ours", "server") or name.startswith("ours-")
                if not info and ours:
                    try:
                        info = httpx.get(f"{url}/info", timeout=5).json()
                    except (httpx.HTTPError, ValueError):
                        info = {}
                dtype = _dtype_of(info) or (args.infinity_dtype if name == "infinity" else
                                            "float16" if name == "baseline" and args.baseline_fp16 else
                                            "bfloat16" if name.endswith("BF16") else
                                            name.split("-", 1)[1].lower() if name.startswith("llamacpp-") else "float32")
                dialect = args.dialect if ours else "native"
                gpu = _gpu_monitor("cuda" if cuda else "cpu")
                gpu.start()
                # Unmeasured passes pay per-shape preparation before timing; the score cache is bypassed in
                # them (else the measured pass would time cache hits, not the engine).
                for _ in range(args.passes - 1):
                    asyncio.run(run_load(url, dialect, requests, args.concurrency, {**headers, "Cache-Control": "no-store"}))
                cpu_before = process_cpu_seconds(proc.pid) if proc is not None else 0.0
                result = asyncio.run(run_load(url, dialect, requests, args.concurrency, headers,
                                              probe_health=ours))
                if proc is not None and result["pairs"]:
                    result["cpu_ms_per_pair"] = 1000 * (process_cpu_seconds(proc.pid) - cpu_before) / result["pairs"]
                result.update(gpu.stop())
                result["dtype"] = dtype
                if ours:
                    result.update(batching(url))
                    result["info"] = info  # device, dtype, attention (the unpadded self-check's verdict)
                out[name] = result
                out.setdefault("rounds", {}).setdefault(name, []).append(
                    {k: result[k] for k in ("pairs_per_s", "p50_ms", "p99_ms", "statuses", "dtype")})
                print(f"{name:>9}: {result['pairs_per_s']:.2f} pairs/s, statuses {result['statuses']}", flush=True)
                if proc is not None:
                    proc.terminate()
                    proc.wait(60)
                if not cuda and useful is not None:
                    # With this server gone, the matmul peak of the precision it served, as close to its
                    # run as the machine allows (a neighbour's load moves both alike), and the load average.
                    peak = matmul_peak(dtype, threads)
                    result["load"] = os.getloadavg()[0]
                    if peak is not None:
                        result.update(mfu(sum(useful[i] for i in result["succeeded"]), result["seconds"],
                                          result.get("cpu_ms_per_pair", 0) * result["pairs"] / 1000 or None,
                                          threads, peak))
                        out.setdefault("matmul_peaks", []).append({"dtype": dtype, **peak})
                    out["rounds"][name][-1].update({k: result[k] for k in ("mfu", "mfu_cpu", "peak_gflops", "load")
                                                    if k in result})
            if "in-process" in out and "ours" in out:
                shares.append(out["ours"]["pairs_per_s"] / out["in-process"]["pairs_per_s"])
                if args.rounds > 1:
                    print(f"round {round_ + 1}: server / in-process {100 * shares[-1]:.0f}%", flush=True)
        if peaks:
            after = {d: cuda_matmul_peak(d) for d in peaks}
            out["matmul_gflops"] = {d: {"before": peaks[d], "after": after[d]} for d in peaks}
            peaks = {d: max(peaks[d], after[d]) for d in peaks}
            size = "8192³ CUDA" if cuda else "1024³"
            print(f"{size} matmul, GFLOP/s: " + ", ".join(f"{d} {v:.0f}" for d, v in peaks.items()))
        names = [name for name, _ in targets] + (["in-process", "engine"] if "in-process" in out else [])
        for name in names:
            if name in out:
                report(name, out[name], useful, peaks.get(out[name]["dtype"]) if cuda else None)
        if "in-process" in out and "ours" in out:
            share = out["ours"]["pairs_per_s"] / out["in-process"]["pairs_per_s"]
            out["server_of_in_process"] = share
            line = f"server / in-process: {100 * share:.0f}% (wall clock)"
            if len(shares) > 1:
                out["server_of_in_process_rounds"] = shares
                line = (f"server / in-process, {len(shares)} rounds: " + ", ".join(f"{100 * x:.0f}%" for x in shares)
                        + f"; median {100 * statistics.median(shares):.0f}%; last round {100 * share:.0f}% (wall clock)")
            if out["ours"].get("cpu_ms_per_pair"):
                cpu_share = out["in-process"]["cpu_ms_per_pair"] / out["ours"]["cpu_ms_per_pair"]
                out["server_of_in_process_cpu"] = cpu_share
                line += f", {100 * cpu_share:.0f}% (CPU per pair: the rate it reaches when CPU-bound)"
            print(line)
        for other in [name for name, _ in targets if not name.startswith("ours")]:
            if "ours" in out and other in out and out[other]["pairs_per_s"]:
                ratio = out["ours"]["pairs_per_s"] / out[other]["pairs_per_s"]
                out[f"ratio_{other}"] = ratio
                print(f"ours / {other} throughput: {ratio:.2f}x")
        if args.table:
            print(markdown_table(out, [name for name, _ in targets] + (["in-process", "engine"] if args.in_process else [])))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
