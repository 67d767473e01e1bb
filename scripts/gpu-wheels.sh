#!/usr/bin/env bash
# Downloads, on THIS machine, the cp312 wheels that the GPU machine lacks (it has
# Python 3.12, torch 2.11, transformers 5.17 and no network; list from the device
# tool's KINDS.md, 2026-11-17) into .whl/ (git-ignored), for scripts/gpu-check.sh.
# The device tool carries at most 64 MiB per call, working tree included: the
# total is checked at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS=(
  # what `import radix_stream, srt_ext.api.server, eval.replay` pulls in beyond the GPU image
  # (python -X importtime on the CPU stack): sglang itself and its light module-level imports
  sglang==0.5.23 msgspec orjson pyzmq fastapi starlette pydantic pydantic-core annotated-types
  typing-inspection uvicorn pybase64 python-multipart dill loguru gguf compressed-tensors
  apache-tvm-ffi==0.1.11 opentelemetry-api
  # sglang imports IPython at module level
  ipython traitlets jedi parso decorator matplotlib-inline pexpect ptyprocess prompt-toolkit
  wcwidth stack-data asttokens executing pure-eval ipython-pygments-lexers
)
PLATFORMS=()
for p in manylinux_2_34_x86_64 manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 \
         manylinux2014_x86_64 manylinux1_x86_64; do PLATFORMS+=(--platform "$p"); done
mkdir -p .whl
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || true
PIP_CONSTRAINT= "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp "${PLATFORMS[@]}" -d .whl "${WHEELS[@]}"
total=$(du -cb .whl/*.whl | tail -1 | cut -f1)
tree=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
echo "wheels: $(ls .whl/*.whl | wc -l) files, $((total / 1048576)) MiB; working tree $((tree / 1048576)) MiB"
if (( total + tree > 60 * 1048576 )); then
  echo "over the device tool's 64 MiB per call: carry fewer wheels per call" >&2
  exit 1
fi
