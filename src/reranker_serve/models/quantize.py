"""int8 cross-encoders on the CPU (RERANKER_QUANTIZE): NNCF quantization of the OpenVINO model,
proven at start-up against torch float32 and cached on disk.

Where it applies: a cross-encoder served by OpenVINO on the CPU. ``plan_quantization`` says
whether to try it: ``auto`` tries int8 only where the CPU has no bf16 hardware (there the
alternative is float32; where bf16 runs in hardware it stays today's default), ``int8``
always, ``off`` and an explicit ``RERANKER_DTYPE`` never (``float32`` means exact scores).

Two NNCF methods, tried in this order, the first that passes the self-check serving:

    static    weights and activations in int8 (``nncf.quantize``), activation ranges
              calibrated on (query, document) pairs: the built-in set (quantize_texts.py) or
              the operator's file (RERANKER_QUANTIZE_CALIBRATION); int8 matrix products
    weights   weights only (``nncf.compress_weights``, int8 asymmetric per output channel),
              activations stay in floating point: no calibration, less drift, less speed

The self-check scores the check set (a different set of topics than the calibration pairs) with
torch in float32 and with the int8 model, and holds the int8 scores to ``BOUNDS``: max |Δ score|
over every pair, Spearman's rank correlation per query, top-k overlap per query. A method that
fails is not served; if none passes the model serves unquantized (its OpenVINO float mode) and
the log and /info say why, with the numbers. With ``RERANKER_QUANTIZE=int8`` the start fails
instead, as it does for ``RERANKER_BACKEND=openvino`` that does not agree with torch.

The quantized model is written under ``<model cache>/int8/`` as OpenVINO IR, keyed by the
model's weights and config, the calibration inputs, the method and the versions of torch,
transformers, OpenVINO and NNCF: a restart reads it instead of quantizing again. An entry whose
files do not match the digests of its manifest, or that OpenVINO cannot read, is rebuilt; and a
cached model passes the self-check before it serves, like a fresh one.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import shutil
import tempfile
import time
from contextlib import redirect_stdout
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from loguru import logger

from ..calibration import read_calibration
from ..errors import ModelLoadError
from .base import EncodeOptions, Pair, sigmoid
from .openvino import compile_for_cpu, convert_to_openvino, without_telemetry
from .openvino import import_openvino as _openvino
from .quantize_texts import CALIBRATION_TOPICS, CHECK_TOPICS
from .runners import Feed, PaddedRunner, Runner, padded_inputs

__all__ = [
    "BOUNDS", "METHODS", "Agreement", "Bounds", "QuantizationPlan", "QuantizationReport", "agreement",
    "calibration_topics", "nncf_available", "plan_quantization", "quantize_model",
]

METHODS = ("static", "weights")
CACHE_FORMAT = 1  # bump when what is cached, or how it is made, changes
CALIBRATION_VARIABLE = "RERANKER_QUANTIZE_CALIBRATION"


@dataclass(frozen=True, slots=True)
class Bounds:
    """How far int8 may stray from float32 on the check set before it is refused.

    Scores are sigmoid(logit), in [0, 1]. Rank agreement is judged per query, worst query: a
    reranker's output is an order, and one query whose order int8 scrambles is one too many.
    """

    max_score_delta: float = 0.05  # max |Δ score| over every check pair
    min_spearman: float = 0.8  # Spearman's rank correlation, each query's documents
    min_top_overlap: float = 2 / 3  # |top-k(float32) ∩ top-k(int8)| / k, each query
    top_k: int = 3


BOUNDS = Bounds()


@dataclass(frozen=True, slots=True)
class Agreement:
    """int8 against torch float32 on the check set."""

    pairs: int
    queries: int
    max_score_delta: float
    max_logit_delta: float
    min_spearman: float
    mean_spearman: float
    min_top_overlap: float
    mean_top_overlap: float

    def failures(self, bounds: Bounds = BOUNDS) -> list[str]:
        out = []
        if not math.isfinite(self.max_logit_delta):
            out.append("non-finite scores")
        if not self.max_score_delta <= bounds.max_score_delta:
            out.append(f"max |Δ score| {self.max_score_delta:.3g} > {bounds.max_score_delta:g}")
        if not self.min_spearman >= bounds.min_spearman:
            out.append(f"Spearman {self.min_spearman:.3f} < {bounds.min_spearman:g} on a query")
        if not self.min_top_overlap >= bounds.min_top_overlap - 1e-9:
            out.append(f"top-{bounds.top_k} overlap {self.min_top_overlap:.2f} < {bounds.min_top_overlap:.2f} on a query")
        return out

    def as_info(self) -> dict[str, float | int]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def _ranks(values: Sequence[float]) -> np.ndarray:
    order = np.argsort(np.asarray(values), kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values))
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    if len(a) < 2:
        return 1.0
    ra, rb = _ranks(a), _ranks(b)
    n = len(a)
    return float(1 - 6 * ((ra - rb) ** 2).sum() / (n * (n * n - 1)))


def top_overlap(a: Sequence[float], b: Sequence[float], k: int) -> float:
    k = min(k, len(a))
    top = lambda x: set(np.argsort(-np.asarray(x), kind="stable")[:k].tolist())  # noqa: E731
    return len(top(a) & top(b)) / k


def agreement(reference: Sequence[Sequence[float]], candidate: Sequence[Sequence[float]], *,
              bounds: Bounds = BOUNDS) -> Agreement:
    """Raw logits of each query's documents: float32's (``reference``) against the candidate's."""
    flat_ref = [x for q in reference for x in q]
    flat_got = [x for q in candidate for x in q]
    if not all(math.isfinite(x) for x in flat_got):
        nan = float("nan")
        return Agreement(len(flat_ref), len(reference), nan, nan, nan, nan, nan, nan)
    spearmans = [spearman(r, g) for r, g in zip(reference, candidate)]
    overlaps = [top_overlap(r, g, bounds.top_k) for r, g in zip(reference, candidate)]
    return Agreement(
        pairs=len(flat_ref), queries=len(reference),
        max_score_delta=max(abs(sigmoid(a) - sigmoid(b)) for a, b in zip(flat_ref, flat_got)),
        max_logit_delta=max(abs(a - b) for a, b in zip(flat_ref, flat_got)),
        min_spearman=min(spearmans), mean_spearman=sum(spearmans) / len(spearmans),
        min_top_overlap=min(overlaps), mean_top_overlap=sum(overlaps) / len(overlaps),
    )


# -- what to try --------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class QuantizationPlan:
    methods: tuple[str, ...]  # to try, in order; empty: serve unquantized
    required: bool  # RERANKER_QUANTIZE=int8: no method passing fails the start
    why: str


def plan_quantization(setting: str, *, dtype_setting: str, dtype: torch.dtype, device: str, openvino: bool,
                      bf16_hardware: Callable[[], bool], nncf: Callable[[], bool]) -> QuantizationPlan:
    """Whether to quantize a cross-encoder, from the settings and what the machine has.

    ``dtype``: the placement's; ``openvino``: whether the model serves on OpenVINO (its start-up
    check passed); ``bf16_hardware()``: whether the CPU does bf16 matrix work in hardware
    (``device.cpu_has_fast_bf16``, the probe that also makes bf16 the CPU's automatic dtype);
    ``nncf()``: whether NNCF is installed. The two are asked only where the answer matters.
    """
    if setting == "off":
        return QuantizationPlan((), False, "RERANKER_QUANTIZE=off")
    if setting == "int8":
        if dtype_setting == "float32":  # config refuses this pair; kept for direct callers
            raise ModelLoadError("RERANKER_QUANTIZE=int8 and RERANKER_DTYPE=float32 (exact scores) contradict each other")
        if device != "cpu" or not openvino:
            raise ModelLoadError("RERANKER_QUANTIZE=int8 quantizes cross-encoders served by OpenVINO on the CPU; this "
                                 f"model serves on {'torch' if not openvino else device}: use RERANKER_QUANTIZE=auto or off")
        if not nncf():
            raise ModelLoadError("RERANKER_QUANTIZE=int8 needs NNCF: pip install 'reranker-serve[int8]' (or nncf)")
        return QuantizationPlan(METHODS, True, "RERANKER_QUANTIZE=int8")
    if dtype_setting != "auto":
        why = "exact scores" if dtype_setting == "float32" else "an explicit precision"
        return QuantizationPlan((), False, f"RERANKER_DTYPE={dtype_setting} ({why})")
    if device != "cpu" or not openvino:
        return QuantizationPlan((), False, "int8 applies to cross-encoders served by OpenVINO on the CPU")
    if dtype != torch.float32 or bf16_hardware():
        return QuantizationPlan((), False, f"auto: the CPU has bf16 hardware, {_name(dtype)} is served")
    if not nncf():
        return QuantizationPlan((), False, "auto: no bf16 hardware, but NNCF is not installed "
                                           "(pip install 'reranker-serve[int8]'): float32 is served")
    return QuantizationPlan(METHODS, False, "auto: no bf16 hardware")


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


_NNCF: Any = None


def nncf_module() -> Any:
    """``import nncf``, its usage events (sent through openvino_telemetry) replaced by its stub."""
    global _NNCF
    if _NNCF is None:
        _openvino()
        with without_telemetry():
            import nncf

        # Its tables of what it compressed are for notebooks; warnings still reach the log.
        nncf.set_log_level(logging.WARNING)
        _NNCF = nncf
    return _NNCF


def nncf_available() -> bool:
    try:
        nncf_module()
    except ImportError:
        return False
    return True


# -- calibration and check pairs ---------------------------------------------------------------
Topics = Sequence[tuple[str, Sequence[str]]]


def calibration_topics(path: Path | None) -> tuple[Topics, str]:
    """The calibration set and how /info names it."""
    if path is None:
        # Each query beside its own documents, a neighbour's (unrelated) and all its own joined
        # (a long document): the lengths and the relevant/unrelated mix the server sees.
        topics = [(q, [*docs, " ".join(docs), *CALIBRATION_TOPICS[(i + 1) % len(CALIBRATION_TOPICS)][1][:3]])
                  for i, (q, docs) in enumerate(CALIBRATION_TOPICS)]
        return topics, f"built-in ({sum(len(d) for _, d in topics)} pairs: {len(topics)} topics in six languages)"
    try:
        topics = read_calibration(path)
    except ValueError as exc:
        raise ModelLoadError(f"{CALIBRATION_VARIABLE}: {exc}") from None
    return topics, f"{path} ({sum(len(d) for _, d in topics)} pairs)"


MAX_CALIBRATION_PAIRS = 300  # NNCF's default subset: more costs start-up time, not accuracy


def _samples(encode: Callable[[str, Sequence[str]], list[Pair]], topics: Topics, feed: Feed,
             names: set[str]) -> list[dict[str, np.ndarray]]:
    """One model input per pair (NNCF infers each sample alone: no padding widens the ranges)."""
    pairs = [p for query, docs in topics for p in encode(query, docs)][:MAX_CALIBRATION_PAIRS]
    return [{k: v.numpy() for k, v in padded_inputs([p], feed, device="cpu").items() if k in names} for p in pairs]


def _digest_samples(samples: Iterable[dict[str, np.ndarray]]) -> str:
    h = hashlib.sha256()
    for sample in samples:
        for key in sorted(sample):
            h.update(key.encode())
            h.update(np.ascontiguousarray(sample[key]).tobytes())
    return h.hexdigest()


def _digest_model(model: Any) -> str:
    """The weights and config of the torch model: what the quantized model was made from."""
    h = hashlib.sha256(model.config.to_json_string(use_diff=False).encode())
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(str(tensor.dtype).encode())
        h.update(np.ascontiguousarray(tensor.detach().contiguous().view(torch.uint8).numpy()).data)
    return h.hexdigest()


def _versions() -> dict[str, str]:
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "openvino": _openvino().__version__, "nncf": nncf_module().__version__, "format": str(CACHE_FORMAT)}


# -- the on-disk cache --------------------------------------------------------------------------
def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class IRCache:
    """Quantized models as OpenVINO IR under one folder, one entry per key; written whole or not at all."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def folder(self, key: str) -> Path:
        return self.root / key

    def read(self, key: str) -> Any | None:
        """The cached model of ``key``, or None (absent, or damaged: then it is removed)."""
        folder = self.folder(key)
        manifest_path = folder / "manifest.json"
        if not manifest_path.is_file():
            return None
        try:
            manifest = json.loads(manifest_path.read_text())
            for name, digest in manifest["files"].items():
                if _file_digest(folder / name) != digest:
                    raise ValueError(f"{name} does not match its digest")
            if manifest["key"] != key:
                raise ValueError("its manifest names another key")
            return _openvino().Core().read_model(str(folder / "model.xml"))
        except Exception as exc:  # missing files, bad JSON, a truncated or altered IR
            logger.warning("int8 cache entry {} is damaged ({}); quantizing again", folder,
                           str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            shutil.rmtree(folder, ignore_errors=True)
            return None

    def write(self, key: str, model: Any, about: dict[str, Any]) -> None:
        """Save ``model`` as ``key``'s entry (a failure to write is logged: the model still serves)."""
        ov = _openvino()
        staging: Path | None = None
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=self.root))
            ov.save_model(model, str(staging / "model.xml"), compress_to_fp16=False)
            files = {p.name: _file_digest(p) for p in sorted(staging.iterdir())}
            (staging / "manifest.json").write_text(json.dumps({"key": key, "files": files, **about}, indent=2))
            target = self.folder(key)
            shutil.rmtree(target, ignore_errors=True)
            os.replace(staging, target)  # atomic: a reader sees the old entry, none, or the whole new one
        except OSError as exc:
            logger.warning("could not cache the int8 model in {} ({}); the next start quantizes again", self.root, exc)
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)


# -- quantizing, checking, choosing -----------------------------------------------------------------
@dataclass(slots=True)
class QuantizationReport:
    """What /info says of quantization: the setting, what serves and why, and the measured numbers."""

    setting: str
    mode: str  # int8-static, int8-weights, or off
    reason: str
    calibration: str | None = None
    bounds: dict[str, float] = field(default_factory=dict)
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)  # per method tried: numbers, cache, seconds

    def as_info(self) -> dict[str, Any]:
        return {"setting": self.setting, "mode": self.mode, "reason": self.reason, "calibration": self.calibration,
                "bounds": self.bounds, "checks": self.checks}


def _quantize(converted: Any, method: str, samples: list[dict[str, np.ndarray]]) -> Any:
    nncf = nncf_module()
    # NNCF draws progress bars (rich) on stdout: a server's log is lines, so they go nowhere.
    with redirect_stdout(io.StringIO()):
        if method == "weights":
            return nncf.compress_weights(converted, mode=nncf.CompressWeightsMode.INT8_ASYM)
        return nncf.quantize(converted, nncf.Dataset(samples), model_type=nncf.ModelType.TRANSFORMER,
                             preset=nncf.QuantizationPreset.MIXED, subset_size=len(samples))


def _scores(runner: Runner, batches: Sequence[Sequence[Pair]], raw: Callable[[torch.Tensor], torch.Tensor]) -> list[list[float]]:
    with torch.inference_mode():
        return [raw(runner.logits(batch)).tolist() for batch in batches]


def quantize_model(*, model: Any, feed: Feed, encode: Callable[[str, Sequence[str]], list[Pair]],
                   raw_scores: Callable[[torch.Tensor], torch.Tensor], plan: QuantizationPlan, setting: str,
                   dtype: torch.dtype, threads: int, cache_dir: Path, name: str, calibration: Path | None,
                   ) -> tuple[Runner | None, QuantizationReport]:
    """The int8 runner of the first method in ``plan`` that passes the self-check (None: none did), and the report.

    ``model``: the float32 torch classifier (the reference, and what is quantized on a cache miss).
    """
    report = QuantizationReport(setting=setting, mode="off", reason=plan.why,
                                bounds={k: round(v, 6) for k, v in asdict(BOUNDS).items()})
    if not plan.methods:
        return None, report
    topics, report.calibration = calibration_topics(calibration)
    exact = PaddedRunner(model, feed)
    check = [encode(query, docs) for query, docs in CHECK_TOPICS]
    reference = _scores(exact, check, raw_scores)
    names = {"input_ids", "attention_mask"} | ({"token_type_ids"} if feed.with_types else set())
    samples = _samples(encode, topics, feed, names)
    base = {"model": _digest_model(model), "calibration": _digest_samples(samples), **_versions()}
    cache = IRCache(cache_dir / "int8")
    converted = None
    failures = []
    for method in plan.methods:
        started = time.perf_counter()
        key_fields = {**base, "method": method}
        if method == "weights":
            key_fields.pop("calibration")  # weight-only compression reads no data
        key = f"{_slug(name)}-{method}-" + hashlib.sha256(json.dumps(key_fields, sort_keys=True).encode()).hexdigest()[:24]
        quantized = cache.read(key)
        source = "cache"
        if quantized is None:
            source = "quantized"
            if converted is None:
                converted = convert_to_openvino(model, feed)
            # NNCF rewrites the graph it is given: quantize a copy, keep the float model for the next method.
            quantized = _quantize(converted.clone(), method, samples)
            cache.write(key, quantized, {"name": name, **key_fields})
        runner = compile_for_cpu(quantized, feed, dtype=dtype, threads=threads, precision="int8")
        measured = agreement(reference, _scores(runner, check, raw_scores))
        wrong = measured.failures()
        report.checks[method] = {**measured.as_info(), "passed": not wrong, "source": source,
                                 "seconds": round(time.perf_counter() - started, 2)}
        logger.info("{}: int8 ({}, {}) against torch float32 on {} check pairs: max |Δ score| {:.3g}, Spearman min "
                    "{:.3f}, top-{} overlap min {:.2f}{}", name, method, "from cache" if source == "cache" else
                    "quantized now", measured.pairs, measured.max_score_delta, measured.min_spearman, BOUNDS.top_k,
                    measured.min_top_overlap, "" if not wrong else f": refused ({'; '.join(wrong)})")
        if not wrong:
            report.mode = f"int8-{method}"
            report.reason = f"{plan.why}; int8 ({method}) passed its start-up self-check"
            return runner, report
        failures.append(f"{method}: {'; '.join(wrong)}")
    why = f"int8 failed its start-up self-check against float32 ({' | '.join(failures)})"
    if plan.required:
        raise ModelLoadError(f"RERANKER_QUANTIZE=int8: {name}: {why}; use RERANKER_QUANTIZE=auto or off, or calibrate "
                             f"on pairs of your own domain ({CALIBRATION_VARIABLE})")
    report.reason = f"{plan.why}; {why}: serving {_name(dtype)}"
    logger.warning("{}: {}; serving it in {}", name, why, _name(dtype))
    return None, report


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name.split("/")[-1])[:48] or "model"
