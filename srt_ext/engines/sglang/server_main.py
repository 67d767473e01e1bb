"""``python -m srt_ext.engines.sglang.server_main ARGS``: SGLang's ``launch_server``
with stream2llm's CPU stack active in every process it starts.

SGLang spawns its scheduler and detokenizer (multiprocessing ``spawn``); a
spawned child first re-imports the parent's ``__main__`` module (as
``__mp_main__``) with the parent's ``sys.path``. Running SGLang from this module
therefore runs :func:`activate_cpu_stack` in each of them before any sglang
import, even in a venv without the ``stream2llm-cpu.pth`` start-up hook that
``scripts/dev.sh`` writes (e.g. a checkout on ``PYTHONPATH``).
"""

from __future__ import annotations

import importlib.util
import os
import runpy
import sys
from pathlib import Path

CPU_SITE = Path(__file__).resolve().parents[3] / "cpu_site"


def activate_cpu_stack() -> None:
    """With ``SGLANG_USE_CPU_ENGINE=1`` and no real ``sgl_kernel`` installed: put
    ``cpu_site/`` (our ``sgl_kernel`` stand-in) on ``sys.path`` and install the lazy
    torchvision placeholder. A no-op on the GPU stack."""
    if os.environ.get("SGLANG_USE_CPU_ENGINE") != "1":
        return
    if importlib.util.find_spec("sgl_kernel") is None and str(CPU_SITE) not in sys.path:
        sys.path.append(str(CPU_SITE))
    if importlib.util.find_spec("stream2llm_cpu_boot") is not None:
        import stream2llm_cpu_boot

        stream2llm_cpu_boot.install()


activate_cpu_stack()

if __name__ == "__main__":
    sys.argv[0] = "sglang.launch_server"
    runpy.run_module("sglang.launch_server", run_name="__main__")
