"""The token-id vocabulary of generated workloads, and their rendering as text.

Structural words (the instruction template, "Context:", "Question:") get fixed ids below
``RESERVED``, so every query carries the *same* template ids (shareable by the radix tree);
content ids are drawn above it. ``as_text`` maps every id to one word, for replay against
a real server that takes text.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from stream2llm.trace import Chunk, Query

TEMPLATE_WORDS = (
    "Answer the question based only on the provided context. If the context does not "
    "contain the answer, say that you do not know. Be concise."
).split()
CONTEXT_WORD, QUESTION_WORD = "\nContext:", "\nQuestion:"
_STRUCT_WORDS = (*TEMPLATE_WORDS, CONTEXT_WORD, QUESTION_WORD)
RESERVED = 512
TEMPLATE_IDS: tuple[int, ...] = tuple(range(1, len(TEMPLATE_WORDS) + 1))
CONTEXT_ID = len(TEMPLATE_WORDS) + 1
QUESTION_ID = len(TEMPLATE_WORDS) + 2


# Common English words; with a leading space each is one token in Llama-3 / GPT-style BPE
# vocabularies, so a text chunk of n words tokenizes to roughly n tokens.
COMMON_WORDS = tuple(
    """time year people way day man thing woman life child world school state family student
    group country problem hand part place case week company system program question work
    government number night point home water room mother area money story fact month lot right
    study book eye job word business issue side kind head house service friend father power hour
    game line end member law car city community name president team minute idea kid body
    information back parent face others level office door health person art war history party
    result change morning reason research girl guy moment air teacher force education river
    music table paper report market price light field water food tree color plant road stone
    language energy travel north south east west summer winter spring season island ocean
    mountain forest desert village capital border nation church king queen army battle peace
    science theory method data model process value rate cost growth trade bank film series
    album song award player club league season match goal record director actor novel author
    page chapter letter church museum garden bridge tower station street port coast lake valley
    found made known used called built born played wrote became began held led won moved lived
    large small early late major local national public general special new old young great
    high low long short first last next second third main best full free real true simple
    about after before between during under over into through against among around without
    also only often still already never always later soon again once very most more less""".split()
)


def _text_words(tokenizer_vocab: Sequence[str] | None) -> tuple[str, ...]:
    """Words for content ids: from a real tokenizer's vocabulary (whole-word pieces marked
    with a leading-space byte, as BPE/SentencePiece write them) or the built-in list."""
    if not tokenizer_vocab:
        return COMMON_WORDS
    words = sorted(
        {
            t[1:]
            for t in tokenizer_vocab
            if t[:1] in ("Ġ", "▁") and t[1:].isalpha() and t[1:].isascii() and 3 <= len(t) <= 9
        }
    )
    return tuple(words) if len(words) >= 64 else COMMON_WORDS


def as_text(queries: Iterable[Query], tokenizer_vocab: Sequence[str] | None = None) -> list[Query]:
    """Render token-id queries as text for replay against a real server.

    Every id maps to one word (structural ids to the real template, "Context:" and
    "Question:"), and each word is written with a leading space, so concatenated append
    chunks equal the rendered whole prompt and update versions keep their shared prefixes.
    """
    words = _text_words(tokenizer_vocab)
    table = list(_STRUCT_WORDS) + [""] * (RESERVED - len(_STRUCT_WORDS))

    def render(ids: Sequence[int]) -> str:
        return "".join(
            " " + (words[i % len(words)] if i >= RESERVED else table[i - 1]) for i in ids
        )

    out = []
    for q in queries:
        chunks = []
        for j, c in enumerate(q.chunks):
            if c.token_ids is None:
                chunks.append(c)
                continue
            txt = render(c.token_ids)
            if j == 0 or q.mode == "update":
                txt = txt[1:]
            chunks.append(Chunk(t_s=c.t_s, text=txt, final=c.final))
        out.append(Query(q.qid, q.arrival_s, q.mode, tuple(chunks), q.max_new_tokens, dict(q.meta)))
    return out
