#!/usr/bin/env bash
# The GPU check, in one call on a CUDA machine with no network (prepared by scripts/gpu_prepare.sh):
# installs the carried wheels offline, builds the synthetic models, runs the suite's CUDA-relevant
# tests and the GPU benchmarks of docs/benchmarks.md, each step time-boxed so that the whole call
# ends within its budget (default 450 s), and writes one report to $OUT:
#   gpu_report.json, gpu_report.md   every step's status, time and numbers
#   gpu_check.log                    this script's output
#   gpu_logs.tar.gz                  each step's log and the servers' logs
#
#   bash scripts/gpu_check.sh              on the GPU machine (the device tool: carry [".device"])
#   bash scripts/gpu_check.sh --dry-run    the rehearsal on a CPU: the same steps, tiny models and
#                                          loads, this checkout's .venv (tests/test_gpu_check.py)
# Options: --budget SECONDS (the whole call; 450, or 1350 in the rehearsal, whose steps get 3 times
# their time: DRY_RUN_SCALE), --only STEP[,STEP] (the others are recorded as skipped). Variables: OUT (default ./gpu-check-out), DEVICE_DIR (.device), WORK (/tmp/gpu-check),
# PYTHON (python3 on the GPU machine; .venv/bin/python in the rehearsal).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
started=$(date +%s)

mode=gpu budget="" only=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run|--cpu) mode=dry-run ;;
    --budget) budget=$2; shift ;;
    --only) only=",$2," ; shift ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown option $1 (try --help)" >&2; exit 2 ;;
  esac
  shift
done
# A CPU is slower than the GPU at everything here: the rehearsal's steps get 3 times their budget.
if [ "$mode" = gpu ]; then scale=1; else scale=${DRY_RUN_SCALE:-3}; fi
budget=${budget:-$((450 * scale))}
deadline=$((started + budget))
out=${OUT:-$root/gpu-check-out}
device=${DEVICE_DIR:-$root/.device}
case "$device" in /*) ;; *) device=$root/$device ;; esac
work=${WORK:-/tmp/gpu-check}
rm -rf "$work" && mkdir -p "$work/logs" "$work/results" "$out"
exec > >(tee "$out/gpu_check.log") 2>&1
say() { printf '[gpu_check %4ds] %s\n' "$(($(date +%s) - started))" "$*"; }
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=true HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

if [ "$mode" = gpu ]; then
  python=${PYTHON:-python3}
else
  python=${PYTHON:-$root/.venv/bin/python}
fi
say "mode $mode, budget ${budget}s, python $python, wheels and tools from $device, report to $out"

# --- steps: each time-boxed by the smaller of its own budget and what is left of the call ---------
steps=$work/steps.jsonl
: > "$steps"
record() {  # record NAME STATUS RC SECONDS BUDGET
  printf '{"name": "%s", "status": "%s", "rc": %s, "seconds": %s, "budget": %s}\n' "$@" >> "$steps"
  say "$1: $2 (${4}s of ${5}s)"
}
wanted() { [ -z "$only" ] || [[ "$only" == *",$1,"* ]]; }
step() {  # step NAME BUDGET COMMAND...: run COMMAND into logs/NAME.log within the time left
  local name=$1 want=$2; shift 2
  if ! wanted "$name"; then record "$name" skipped 0 0 0; return 0; fi
  want=$((want * scale))
  local left=$((deadline - $(date +%s) - 20))  # 20 s kept for the report
  local box=$(( want < left ? want : left ))
  if [ "$box" -lt 10 ]; then record "$name" "no time left" 0 0 "$want"; return 0; fi
  local t0 rc status
  t0=$(date +%s)
  local shown="$*"
  shown=${shown%%$'\n'*}
  say "$name: up to ${box}s: ${shown:0:160}"
  timeout -k 10 "$box" "$@" > "$work/logs/$name.log" 2>&1
  rc=$?
  case $rc in 0) status=ok ;; 124|137) status=timeout ;; *) status=failed ;; esac
  record "$name" "$status" "$rc" "$(($(date +%s) - t0))" "$box"
  [ "$status" = ok ] || tail -n 5 "$work/logs/$name.log" | sed 's/^/    /'
  return 0
}

# --- sizes: the docs' GPU runs, or a rehearsal's tiny stand-ins on a CPU ---------------------------
m=$work/models
if [ "$mode" = gpu ]; then
  big=$m/bge-reranker-v2-m3 mini=$m/xlmr-mini qwen=$m/qwen3-reranker-0.6b qwen_shape=qwen3-reranker-0.6b
  c32=32 c16=16 d20=20 r320=320 r100=100 r640=640 r160=160 rounds=2 extra=()
  tests=(tests/test_device.py tests/test_unpadded.py tests/test_engine_sizing.py tests/test_prefix.py
         tests/test_backends.py tests/test_encoder.py tests/test_batcher.py tests/test_startup.py)
else
  big=$m/xlmr-mini mini=$m/xlmr-mini qwen=$m/qwen3-tiny qwen_shape=qwen3-tiny
  c32=4 c16=4 d20=5 r320=8 r100=5 r640=16 r160=8 rounds=1 extra=(--set warmup_seconds=0)
  tests=(tests/test_device.py)  # the rehearsal runs one module: the suite runs them all on the CPU anyway
fi
data=$device/data/vaswani
bench() {  # bench NAME BUDGET ARGS...: a step of scripts/benchmark.py, its JSON and server logs under $work
  local name=$1 want=$2; shift 2
  mkdir -p "$work/logs/$name"
  step "$name" "$want" "$python" scripts/benchmark.py --data "$data" --logdir "$work/logs/$name" \
    --json "$work/results/$name.json" "$@"
}

# --- 1. the machine and the carried packages --------------------------------------------------------
step install 60 bash -c '
  set -e
  if [ "$0" = gpu ]; then
    "$1" -m pip install -q --no-index --no-deps --no-compile --target "$2/site" "$3"/whl/*.whl
  else  # the same wheels, for the GPU machine'"'"'s Python, unpacked where this one will not import them
    "$1" -m pip install -q --no-index --no-deps --no-compile --only-binary=:all: --python-version 3.12 \
      --implementation cp --platform manylinux_2_17_x86_64 --target "$2/site-rehearsal" "$3"/whl/*.whl
  fi' "$mode" "$python" "$work" "$device"
if [ "$mode" = gpu ]; then
  export PYTHONPATH="$work/site:$root/src${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}"
fi
step versions 30 "$python" -c '
import json, platform, sys, torch, transformers, sentence_transformers, fastapi, pydantic, reranker_serve
cuda = torch.cuda.is_available()
print(json.dumps({"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
    "gpu": torch.cuda.get_device_name(0) if cuda else None, "transformers": transformers.__version__,
    "sentence_transformers": sentence_transformers.__version__, "fastapi": fastapi.__version__,
    "pydantic": pydantic.__version__, "reranker_serve": reranker_serve.__version__, "cores": __import__("os").cpu_count()}))'
if [ "$mode" = gpu ] && command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > "$work/logs/nvidia-smi.log" 2>&1
fi

# --- 2. models built in the background while the tests run (CPU work both) ----------------------------
models_box=$((240 * scale))
export python device m qwen_shape qwen data mode big
build_models() {  # the three in parallel: each is one process's CPU work
  local pids=() rc=0
  "$python" "$device/tools/make_synthetic_model.py" xlmr-mini "$m/xlmr-mini" & pids+=($!)
  if [ "$mode" = gpu ]; then
    "$python" scripts/gpu_models.py "$qwen_shape" "$qwen" --data "$data" & pids+=($!)
    "$python" "$device/tools/make_synthetic_model.py" bge-reranker-v2-m3 "$big" & pids+=($!)
  else
    "$python" scripts/gpu_models.py "$qwen_shape" "$qwen" --data "$data" --vocab 2000 --max-docs 2000 & pids+=($!)
  fi
  for pid in "${pids[@]}"; do wait "$pid" || rc=1; done
  return $rc
}
models_t0=$(date +%s)
if wanted models; then
  timeout -k 10 "$models_box" bash -c "$(declare -f build_models); build_models" > "$work/logs/models.log" 2>&1 &
  models_pid=$!
fi

# --- 3. the suite's CUDA-relevant tests ------------------------------------------------------------------
pytest_timeout=()
"$python" -c "import pytest_timeout" 2>/dev/null && pytest_timeout=(--timeout=60)
step tests 120 "$python" -m pytest -q -p no:cacheprovider "${pytest_timeout[@]}" --junitxml "$work/results/tests.xml" \
  "${tests[@]}"

if [ -n "${models_pid:-}" ]; then
  wait "$models_pid"; rc=$?
  case $rc in 0) status=ok ;; 124|137) status=timeout ;; *) status=failed ;; esac
  record models "$status" "$rc" "$(($(date +%s) - models_t0))" "$models_box"
  [ "$status" = ok ] || tail -n 5 "$work/logs/models.log" | sed 's/^/    /'
else
  record models skipped 0 0 0
fi

# --- 4. the GPU benchmarks (docs/benchmarks.md, "To run on a CUDA machine"), most telling first -----
# naive fp16 server, ours, the in-process ceiling; matmul peak, GPU busy share, useful TFLOP/s
bench v2m3_32x20 150 --model "$big" --baseline --baseline-fp16 --in-process \
  --concurrency "$c32" --docs "$d20" --requests "$r320" "${extra[@]}"
# the unpadded path's start-up self-check: verdict in /info, drift in the debug log
bench selfcheck 45 --model "$big" --concurrency 2 --docs "$d20" --requests 4 --set log_level=debug \
  "${extra[@]}"
# a lone request of 20 documents (target p50 <= 25 ms)
bench lone_p50 45 --model "$big" --concurrency 1 --docs "$d20" --requests "$r100" "${extra[@]}"
# padded vs unpadded A/B (unpadded is v2m3_32x20's "ours")
bench padded_32x20 60 --model "$big" --concurrency "$c32" --docs "$d20" --requests "$r320" \
  --set attention=padded "${extra[@]}"
# the feeding ceiling on the GPU host (target >= 6,000 pairs/s at 32 x 20)
bench feeding 75 --model "$mini" --in-process --concurrency "$c32" --docs "$d20" --requests "$r640" \
  --rounds "$rounds" "${extra[@]}"
# Qwen3-Reranker-0.6B shape at 16 x 20 (target >= 1,000 pairs/s), then without the shared prefix
bench qwen3_16x20 75 --model "$qwen" --concurrency "$c16" --docs "$d20" --requests "$r160" \
  "${extra[@]}"
bench qwen3_no_prefix 50 --model "$qwen" --concurrency "$c16" --docs "$d20" --requests "$r160" \
  --set share_prefix=false "${extra[@]}"

# --- 5. the report -------------------------------------------------------------------------------------
"$python" scripts/gpu_report.py --work "$work" --out "$out" --mode "$mode" --budget "$budget" \
  --seconds "$(($(date +%s) - started))" || say "the report failed: the raw results are in gpu_logs.tar.gz"
tar -C "$work" -czf "$out/gpu_logs.tar.gz" logs results steps.jsonl 2>/dev/null
say "done in $(($(date +%s) - started))s: $out/gpu_report.md"
