#!/usr/bin/env bash
# The GPU session's checks in one prepared run (issue 13; docs/sglang-engine.md "On a GPU").
# On this machine first:   bash scripts/gpu-wheels.sh        (cp312 wheels the GPU image lacks -> .whl/)
# Then with the device tool, from the repo root, in ONE call:
#   run(command="bash scripts/gpu-check.sh", carry=[".whl"], timeout_s=540)
# Results come back under $OUT: gpu-check.json (every step's numbers, written as each step ends),
# the measured profile JSON, and the logs. `bash scripts/gpu-check.sh --smoke` runs the same
# code on a CPU with tiny sizes (what tests/test_gpu_check.py does).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-out/gpu-check}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
export STREAM2LLM_CACHE=${STREAM2LLM_CACHE:-/tmp/stream2llm-cache}
smoke=()
[[ "${1:-}" == "--smoke" ]] && smoke=(--smoke) && shift
if [[ ${#smoke[@]} -eq 0 ]] && compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH="$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
# Fail in seconds, not minutes, when an import is missing on that machine.
"$PY" -c "import radix_stream, scheduler, srt_ext.engines.reference, srt_ext.cli.profile, eval.gpu_check" \
  2>&1 | tee "$OUT/imports.log" || exit 1
timeout 420 "$PY" -m eval.gpu_check --out "$OUT" "${smoke[@]}" "$@" 2>&1 | tee "$OUT/gpu-check.log"
rc=${PIPESTATUS[0]}
if [[ ${#smoke[@]} -eq 0 ]]; then
  timeout 90 "$PY" -m pytest -q -x -p no:cacheprovider tests/test_engine_gpu.py 2>&1 \
    | tee "$OUT/pytest-gpu.log"
fi
exit "$rc"
