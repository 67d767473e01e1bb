"""Stop strings: SGLang's ``sampling_params.stop``, matched on the decoded text.

The worker only knows token ids (its stop condition is ``stop_token_ids``/EOS), so
text stop strings are the API room's job: after each token the output is decoded and
the earliest match ends the request, its text cut just before the match (as SGLang
returns it), with ``finish_reason = {"type": "stop", "matched": <the string>}``.
"""

from __future__ import annotations

from srt_ext.api.req_state import ReqState


def match_stop(st: ReqState, text: str) -> bool:
    """Whether ``text`` (the decoded output so far) hits one of ``st.stop``; on a hit
    the state gets its cut text and stop reason."""
    hits = [(text.find(s), s) for s in st.stop if s and s in text]
    if not hits:
        return False
    pos, s = min(hits)
    st.text_override = text[:pos]
    st.finish_reason = {"type": "stop", "matched": s}
    return True
