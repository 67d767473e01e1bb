"""Text-exact streaming: however a text is split into append chunks, the stream's
final token ids are those of the whole text.

The property runs the tokenizer side (``StreamFrontend.append_ids``: re-tokenize
the text tail across each chunk boundary) and the scheduler side
(``messages._next_version``: cut to ``keep``, append) over hypothesis-drawn texts
and splits, with the real tokenizers of both shipped models (byte-level BPE of
SmolLM2, WordPiece of the tiny model), used as SGLang's server uses them. One end-to-end case streams text pieces
into SGLang's real server and gets the one-shot ``/generate`` tokens.
"""

from __future__ import annotations

from array import array

import pytest
from engine_servers import GREEDY, EngineServer
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from sglang_helpers import shared_sglang_server
from transformers import AutoTokenizer

from srt_ext.api.tokenizer import TokenizerRoom
from srt_ext.client.rest import Client
from srt_ext.engines.reference.model_store import TINY_MODEL, resolve_model
from srt_ext.engines.sglang.frontend import HFEncoder, HttpStream, StreamFrontend
from srt_ext.engines.sglang.messages import _next_version

PIECES = st.sampled_from([
    "the", " river", "Nile", " is", " the", " second", "-longest", ".", " ", "  ", "\n", "\n\n",
    "\t", "It", " flows", ",", "?!", "é", "ü", "中文", "日本語", "😀", "👍🏽", "ñandú", "'s",
    "<|im_start|>", "<|im_end|>", "</s>", "<s>", "[CLS]", "[SEP]", "<|endoftext|>", "123",
    "4567", "0.5", "e.g.", "http://x.org/a?b=c", "don't", "   leading", "trailing   ",
])  # fmt: skip


def _frontend(model: str | None) -> StreamFrontend:
    """The tokenizer side as SGLang's server runs it (its HF tokenizer)."""
    path = resolve_model(model)
    return StreamFrontend(tm=None, tokenizer=TokenizerRoom(path),
                          encoder=HFEncoder(AutoTokenizer.from_pretrained(str(path))))  # fmt: skip


FRONTENDS = {m: _frontend(m) for m in (TINY_MODEL, None)}  # None: the default SmolLM2


def stream(fe: StreamFrontend, chunks: list[str | list[int]]) -> tuple[list[int], list[int]]:
    """Run the chunks through both sides; returns the final ids and each cut."""
    s = HttpStream("r", "append", {})
    version: array = array("q")
    cuts = []
    for chunk in chunks:
        text, ids = (chunk, None) if isinstance(chunk, str) else (None, chunk)
        new, keep, tail = fe.append_ids(s, text, ids)
        cuts.append(len(version) - (keep if keep is not None else len(version)))
        version = _next_version("append", version, array("q", new), keep)
        s.input_tokens, s.tail = len(version), tail
    return list(version), cuts


@pytest.mark.parametrize("model", list(FRONTENDS), ids=["tiny", "smollm2"])
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_any_split_of_a_text_gives_the_whole_texts_ids(model: str | None, data: st.DataObject) -> None:
    fe = FRONTENDS[model]
    text = "".join(data.draw(st.lists(PIECES | st.text(max_size=6), min_size=1, max_size=25)))
    assume(text)  # an empty input is refused before tokenization
    cuts = sorted(data.draw(st.sets(st.integers(0, len(text)), max_size=8)))
    bounds = [0, *cuts, len(text)]
    chunks: list[str | list[int]] = [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    got, cut = stream(fe, [c for c in chunks if c])
    assert got == fe.encoder.encode(text, first=True)
    assert max(cut, default=0) <= 8  # a boundary changes a few tail tokens, never more


@pytest.mark.parametrize("model", list(FRONTENDS), ids=["tiny", "smollm2"])
def test_token_id_chunks_stay_exact_and_start_a_new_text_tail(model: str | None) -> None:
    fe = FRONTENDS[model]
    ids = fe.encoder.encode(" middle", first=False)
    got, _ = stream(fe, ["Hello wor", "ld", ids, " after", "wards."])
    want = fe.encoder.encode("Hello world", first=True) + ids + fe.encoder.encode(" afterwards.")
    assert got == want


def test_a_word_split_across_chunks_is_retokenized_by_the_server() -> None:
    """Natural pieces of text (a sentence cut mid-word and before a space) streamed
    into SGLang's server give the one-shot tokens of the whole text."""
    s = shared_sglang_server()
    srv = EngineServer("sglang", s.url, s)
    sp = {"max_new_tokens": 6, **GREEDY}
    pieces = ["The Nile is the second-lon", "gest river. ", "It flows thr", "ough eleven countries",
              " and ends in the Mediterra", "nean Sea.", " Where does it end?"]  # fmt: skip
    text = "".join(pieces)
    srv.flush()
    with Client(srv.url) as c:
        rid = c.open_stream(sampling_params=sp, text=pieces[0])
        for i, piece in enumerate(pieces[1:], 1):
            c.send_chunk(rid, text=piece, final=i == len(pieces) - 1)
        streamed = c.result(rid)
        srv.flush()
        one_shot = c.generate(text=text, sampling_params=sp)
    assert streamed["meta_info"]["prompt_tokens"] == one_shot["meta_info"]["prompt_tokens"]
    assert streamed["output_ids"] == one_shot["output_ids"]
