"""Compatibility only: the old home of the SGLang plugin (now ``srt_ext.engines.sglang``).

An install made before the move keeps ``srt_ext.sglang_engine.plugin:register`` in its
``sglang.srt.plugins`` entry-point metadata until it is reinstalled (``pip install -e .``);
SGLang only logs a failed plugin load, so without this module the ``--engine sglang``
path would silently run without our hooks. Delete this package once installs are refreshed.
"""
