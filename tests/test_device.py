"""Device and dtype selection, with CUDA / MPS / CPU features mocked."""

from __future__ import annotations

import pytest
import torch

from reranker_serve import device as dev
from reranker_serve.config import ConfigError


@pytest.fixture()
def machine(monkeypatch):
    def set_(cuda=False, mps=False, fast_bf16=False):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        monkeypatch.setattr(dev, "_mps_available", lambda: mps)
        monkeypatch.setattr(dev, "cpu_has_fast_bf16", lambda: fast_bf16)
    return set_


@pytest.mark.parametrize(
    "cuda,mps,bf16,expected",
    [
        (True, True, True, ("cuda", torch.float16)),  # CUDA beats MPS; fp16 on CUDA
        (False, True, True, ("mps", torch.float32)),  # MPS: fp32
        (False, False, False, ("cpu", torch.float32)),  # plain CPU: fp32
        (False, False, True, ("cpu", torch.bfloat16)),  # AMX / AVX512-BF16 CPU: bf16
    ],
)
def test_auto(machine, cuda, mps, bf16, expected):
    machine(cuda=cuda, mps=mps, fast_bf16=bf16)
    p = dev.resolve_placement(device="auto", dtype="auto", use_fp16=True)
    assert (p.device, p.dtype) == expected


def test_use_fp16_false_on_cuda(machine):
    machine(cuda=True)
    assert dev.resolve_placement(device="auto", dtype="auto", use_fp16=False).dtype == torch.float32


@pytest.mark.parametrize("name,dtype", [("float32", torch.float32), ("float16", torch.float16),
                                        ("bfloat16", torch.bfloat16)])
def test_explicit_dtype_wins(machine, name, dtype):
    machine(cuda=True, fast_bf16=True)
    assert dev.resolve_placement(device="cuda", dtype=name, use_fp16=True).dtype == dtype
    assert dev.resolve_placement(device="cpu", dtype=name, use_fp16=False).dtype == dtype


def test_explicit_cpu_on_a_gpu_machine(machine):
    machine(cuda=True, mps=True)
    assert dev.resolve_placement(device="cpu", dtype="auto", use_fp16=True).device == "cpu"


@pytest.mark.parametrize("name", ["cuda", "mps"])
def test_missing_accelerator_is_a_config_error(machine, name):
    machine()
    with pytest.raises(ConfigError, match=f"RERANKER_DEVICE={name}"):
        dev.resolve_device(name)


def test_cpu_bf16_probe_reads_torch(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    assert dev.cpu_has_fast_bf16() is True
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    assert dev.cpu_has_fast_bf16() is False


@pytest.mark.parametrize("family,setting,bf16_gpu,expected", [
    ("qwen3", "auto", True, torch.bfloat16),  # decoder LLMs overflow in fp16: bf16 where the GPU has it
    ("llm", "auto", False, torch.float16),  # no bf16 on this GPU: fp16 stays
    ("encoder", "auto", True, torch.float16),  # cross-encoders are fine (and fastest) in fp16
    ("qwen3", "float16", True, torch.float16),  # an explicit DTYPE always wins
])
def test_decoder_llms_get_bf16_on_gpus_that_have_it(monkeypatch, family, setting, bf16_gpu, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_gpu)
    placement = dev.for_family(dev.Placement("cuda", torch.float16), family, dtype_setting=setting)
    assert placement.dtype == expected
    cpu = dev.Placement("cpu", torch.float32)
    assert dev.for_family(cpu, family, dtype_setting=setting) == cpu
