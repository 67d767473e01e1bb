import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))  # test helpers (kv_fakes)

from engine_servers import engine_srv  # noqa: E402,F401  (one server per engine per session)

import radix_stream  # noqa: E402,F401  (makes sglang importable before any test imports it)
