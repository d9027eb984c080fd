"""Needle-in-a-haystack retrieval through a compressed cache.

A sentence with a 4-digit code is planted at several depths of a filler
passage; the model is asked for the code in a chat turn and decodes greedily
from the (compressed) cache. SmolLM2-135M-Instruct is small: a bare "What is
the secret code?" fails at some depths even uncompressed, while an explicit
"Read the text and answer ... Answer with the number only." retrieves the code
from 256-1024 token haystacks. Depths where the *uncompressed* cache fails are
left out of a scheme's score, so the score measures what compression broke.
"""

from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np

NEEDLE = "The secret code is {code}."
QUESTION = "Question: What is the secret code? Answer with the number only."
INSTRUCTION = "Read the text and answer the question."


@dataclass
class NeedleCase:
    depth: float
    code: str
    prompt_ids: List[int]


def build_cases(tok, filler_text: str, context: int, depths: Sequence[float],
                codes: Sequence[str] = ("7341", "2958", "6170")) -> List[NeedleCase]:
    """``context`` is the haystack size in tokens; the needle goes at the
    sentence boundary just before ``depth`` of it."""
    hay = tok.encode(filler_text, allow_special=False)[:context]
    cases = []
    for i, depth in enumerate(depths):
        code = codes[i % len(codes)]
        head = tok.decode(hay[:int(depth * len(hay))])
        cut = head.rfind(". ")
        head = head[:cut + 2] if cut > 0 else head
        tail = tok.decode(hay[int(depth * len(hay)):])
        doc = head + NEEDLE.format(code=code) + " " + tail
        text = tok.apply_chat_template([{"role": "user",
                                         "content": f"{INSTRUCTION}\n\n{doc}\n\n{QUESTION}"}])
        cases.append(NeedleCase(depth, code, tok.encode(text)))
    return cases


def prepare(model, case: NeedleCase, obs_window: int = 0):
    """Prefill all prompt tokens but the last; that one starts decoding, so
    every generated token is predicted by a query reading the cache."""
    r = model.prefill(case.prompt_ids[:-1], logits="none", obs_window=obs_window)
    return r.cache, r.queries


def retrieve(model, cache, case: NeedleCase, tok, max_new: int = 12) -> bool:
    # stop as soon as the code is out: the answer cannot change after that
    out = model.generate_greedy(cache, case.prompt_ids[-1], max_new,
                                stop_ids=(tok.eos_id,) if tok.eos_id is not None else (),
                                until=lambda ids: case.code in tok.decode(ids))
    return case.code in tok.decode(out)


def score(hits: List[bool], ref_hits: List[bool]) -> Optional[float]:
    """Fraction retrieved over the depths the reference retrieves; None if none."""
    ok = [h for h, r in zip(hits, ref_hits) if r]
    return (sum(ok) / len(ok)) if ok else None
