#!/usr/bin/env bash
# Run on the development machine, before a GPU lease: put everything scripts/gpu_check.sh needs
# on the GPU machine into .device/ (git-ignored), since that machine has torch, transformers and
# sentence-transformers but not the web stack, and no network at all (../shared/GPU.md):
#
#   .device/whl/        wheels for its Python (3.12, manylinux x86-64), at the versions this
#                       checkout's venv runs, of what the server needs beyond that machine's image
#   .device/tools/      make_synthetic_model.py, and .device/tokenizers/xlm-roberta beside it
#   .device/data/       the Vaswani text the benchmarks send
#
#   scripts/gpu_prepare.sh            then, with the device tool, in one call (carry: [".device"]):
#   bash scripts/gpu_check.sh         (see docs/benchmarks.md, "To run on a CUDA machine")
#
# Variables: DEVICE_DIR (default .device), SHARED (default ../shared beside the repository),
# PYTHON (the interpreter whose package versions are pinned; default .venv/bin/python),
# DEVICE_PYTHON_VERSION (default 3.12). Idempotent: wheels already there are not fetched again.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
device=${DEVICE_DIR:-.device}
shared=${SHARED:-$(cd "$root/.." && pwd)/shared}
python=${PYTHON:-$root/.venv/bin/python}
[ -x "$python" ] || python=python3
target=${DEVICE_PYTHON_VERSION:-3.12}
say() { printf '[gpu_prepare] %s\n' "$*"; }

# What the server imports that the GPU machine's image lacks (GPU.md; KINDS.md lists the image).
# torch, transformers, sentence-transformers, tokenizers, huggingface_hub, numpy, httpx, anyio,
# click, h11, uvloop and prometheus-client are there and are not carried.
packages=(fastapi starlette pydantic pydantic-core pydantic-settings python-dotenv uvicorn loguru fastapi-offline
          annotated-types annotated-doc typing-inspection typing-extensions opentelemetry-api)

mkdir -p "$device/whl"
# The versions this checkout was tested with; pydantic-core must be the one pydantic pins.
mapfile -t pins < <("$python" - "${packages[@]}" <<'EOF'
import sys
from importlib.metadata import PackageNotFoundError, version
for name in sys.argv[1:]:
    try:
        print(f"{name}=={version(name)}")
    except PackageNotFoundError:
        print(name)
EOF
)
say "wheels for Python $target: ${pins[*]}"
"$python" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
  --python-version "$target" --implementation cp --platform manylinux_2_28_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$device/whl" "${pins[@]}"
# One version of each: an older wheel left by an earlier run would stop the whole install there.
"$python" - "$device/whl" "${pins[@]}" <<'EOF'
import re, sys
from pathlib import Path
folder, pins = Path(sys.argv[1]), sys.argv[2:]
wanted = {re.sub(r"[-_.]+", "_", p.split("==")[0]).lower(): p.partition("==")[2] for p in pins}
for wheel in folder.glob("*.whl"):
    name, ver = wheel.name.split("-")[:2]
    key = re.sub(r"[-_.]+", "_", name).lower()
    if key not in wanted or (wanted[key] and ver != wanted[key]):
        wheel.unlink()
        print(f"[gpu_prepare] removed {wheel.name} (not pinned)")
EOF

for part in tools/make_synthetic_model.py tokenizers/xlm-roberta data/vaswani; do
  [ -e "$shared/$part" ] || { say "missing $shared/$part (set SHARED to the shared folder)"; exit 1; }
  mkdir -p "$device/$(dirname "$part")"
  rm -rf "${device:?}/$part"
  cp -r "$shared/$part" "$device/$part"
done
size=$(du -sm "$device" | cut -f1)
say "$device: $(ls "$device/whl" | wc -l) wheels, $size MiB in all (the device tool carries up to 64 MiB)"
[ "$size" -lt 60 ] || { say "$device is too big to carry"; exit 1; }
