"""Byte-level BPE tokenizer (GPT-2 style) built from a GGUF's vocab and merges.

Pure python so that the runtime needs nothing beyond numpy + gguf. It mirrors
the HF "fast" tokenizers of SmolLM2 (StarCoder-style pre-tokenizer, below) and
of Qwen2 (GGUF pre "qwen2": its own split regex, ``_qwen2_regex``):

1. control tokens (``<|im_start|>`` ...) written in the text are matched
   literally and map to their ids, as HF does for special tokens;
2. every numeric character is isolated (HF ``Digits(individual_digits=True)``,
   llama.cpp's ``\\p{N}`` split for pre-tokenizer "smollm"/"starcoder");
3. each piece is split with the GPT-2 regex, mapped byte -> printable unicode,
   and merged by BPE rank.

Python's ``re`` has no ``\\p{L}``/``\\p{N}``; we build those classes from
``unicodedata`` once, so letters and numbers follow the Unicode categories
rather than ``re``'s looser ``\\w``.
"""

import re
import sys
import unicodedata
from functools import lru_cache
from typing import Dict, Iterable, List, Optional, Sequence

# Pre-tokenizer types (GGUF ``tokenizer.ggml.pre``) that isolate digits.
_DIGIT_SPLIT_PRES = {"smollm", "starcoder", "refact", "codeshell", "command-r"}


@lru_cache(maxsize=1)
def bytes_to_unicode() -> Dict[int, str]:
    """GPT-2's reversible byte -> printable-character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _class_ranges(prefix: str) -> str:
    """Regex character-class body for all code points whose category starts
    with ``prefix`` ('L' letters, 'N' numbers)."""
    parts = []
    start = prev = None
    for cp in range(sys.maxunicode + 1):
        if unicodedata.category(chr(cp)).startswith(prefix):
            if start is None:
                start = cp
            elif cp != prev + 1:
                parts.append((start, prev))
                start = cp
            prev = cp
    if start is not None:
        parts.append((start, prev))

    def esc(cp):
        return "\\U%08x" % cp

    return "".join(esc(a) if a == b else f"{esc(a)}-{esc(b)}" for a, b in parts)


@lru_cache(maxsize=1)
def _classes():
    return _class_ranges("L"), _class_ranges("N")


@lru_cache(maxsize=1)
def _regexes():
    L, N = _classes()
    gpt2 = re.compile(
        rf"'s|'t|'re|'ve|'m|'ll|'d| ?[{L}]+| ?[{N}]+| ?[^\s{L}{N}]+|\s+(?!\S)|\s+")
    digit = re.compile(rf"([{N}])")
    return gpt2, digit


@lru_cache(maxsize=1)
def _qwen2_regex():
    """Qwen2's pre-tokenizer (llama.cpp pre type "qwen2"): case-insensitive
    contractions, a letter run with at most one leading non-letter/non-digit
    (not a newline), single digits, punctuation runs with their trailing
    newlines, newline runs, then whitespace."""
    L, N = _classes()
    return re.compile(
        rf"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n{L}{N}]?[{L}]+|[{N}]| ?[^\s{L}{N}]+[\r\n]*"
        rf"|\s*[\r\n]+|\s+(?!\S)|\s+")


class BPETokenizer:
    def __init__(self, tokens: Sequence[str], merges: Iterable[str],
                 token_types: Optional[Sequence[int]] = None, pre: str = "gpt2",
                 bos_id: Optional[int] = None, eos_id: Optional[int] = None,
                 add_bos: bool = False, chat_template: Optional[str] = None):
        self.tokens = list(tokens)
        self.vocab = {t: i for i, t in enumerate(self.tokens)}
        self.ranks = {tuple(m.split(" ", 1)): r for r, m in enumerate(merges)}
        self.pre = pre
        self.bos_id, self.eos_id, self.add_bos = bos_id, eos_id, add_bos
        self.chat_template = chat_template
        # token_type 3 = CONTROL, 4 = USER_DEFINED: matched literally in text.
        types = token_types or [1] * len(self.tokens)
        self.special = {t: i for i, t in enumerate(self.tokens) if types[i] in (3, 4)}
        if self.special:
            alts = sorted(self.special, key=len, reverse=True)
            self._special_re = re.compile("(" + "|".join(map(re.escape, alts)) + ")")
        else:
            self._special_re = None
        self.byte_enc = bytes_to_unicode()
        self.byte_dec = {c: b for b, c in self.byte_enc.items()}
        self._cache: Dict[str, List[int]] = {}

    @classmethod
    def from_gguf(cls, path_or_reader) -> "BPETokenizer":
        from gguf import GGUFReader

        r = path_or_reader
        if not hasattr(r, "fields"):
            r = GGUFReader(str(path_or_reader))

        def get(k, default=None):
            f = r.fields.get(k)
            return default if f is None else f.contents()

        model = get("tokenizer.ggml.model")
        if model != "gpt2":
            raise ValueError(f"only byte-level BPE (gpt2) is supported, got {model!r}")
        return cls(get("tokenizer.ggml.tokens"), get("tokenizer.ggml.merges"),
                   get("tokenizer.ggml.token_type"), get("tokenizer.ggml.pre", "gpt2"),
                   get("tokenizer.ggml.bos_token_id"), get("tokenizer.ggml.eos_token_id"),
                   bool(get("tokenizer.ggml.add_bos_token", False)),
                   get("tokenizer.chat_template"))

    # -- encoding ---------------------------------------------------------
    def _bpe(self, piece: str) -> List[int]:
        hit = self._cache.get(piece)
        if hit is not None:
            return hit
        word = [self.byte_enc[b] for b in piece.encode("utf-8")]
        ranks = self.ranks
        while len(word) > 1:
            best, best_i = None, -1
            for i in range(len(word) - 1):
                r = ranks.get((word[i], word[i + 1]))
                if r is not None and (best is None or r < best):
                    best, best_i = r, i
            if best is None:
                break
            a, b = word[best_i], word[best_i + 1]
            # merge every occurrence of the best pair, left to right
            out, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == a and word[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            word = out
        ids = [self.vocab[t] for t in word]
        if len(self._cache) < 200_000:
            self._cache[piece] = ids
        return ids

    def _encode_ordinary(self, text: str, out: List[int]) -> None:
        if self.pre == "qwen2":
            for m in _qwen2_regex().findall(text):
                out.extend(self._bpe(m))
            return
        gpt2, digit = _regexes()
        pieces = digit.split(text) if self.pre in _DIGIT_SPLIT_PRES else [text]
        for chunk in pieces:
            if chunk:
                for m in gpt2.findall(chunk):
                    out.extend(self._bpe(m))

    def encode(self, text: str, allow_special: bool = True, add_bos: Optional[bool] = None) -> List[int]:
        out: List[int] = []
        if (self.add_bos if add_bos is None else add_bos) and self.bos_id is not None:
            out.append(self.bos_id)
        if allow_special and self._special_re is not None:
            for part in self._special_re.split(text):
                if part in self.special:
                    out.append(self.special[part])
                elif part:
                    self._encode_ordinary(part, out)
        else:
            self._encode_ordinary(text, out)
        return out

    # -- decoding ---------------------------------------------------------
    def decode(self, ids: Iterable[int]) -> str:
        buf = bytearray()
        for i in ids:
            t = self.tokens[int(i)]
            if t in self.special:
                buf += t.encode("utf-8")
            else:
                buf += bytes(self.byte_dec[c] for c in t)
        return buf.decode("utf-8", errors="replace")

    # -- chat -------------------------------------------------------------
    def apply_chat_template(self, messages, add_generation_prompt: bool = True) -> str:
        """ChatML as written by SmolLM2's template (no jinja dependency):
        a default system turn is inserted when the first message is not one."""
        tpl = self.chat_template or ""
        if "<|im_start|>" not in tpl:
            raise ValueError("GGUF chat template is not ChatML; cannot format prompt")
        m = re.search(r"'<\|im_start\|>system\n(.*?)<\|im_end\|>", tpl, re.S)
        text = ""
        if messages and messages[0]["role"] != "system" and m:
            text += f"<|im_start|>system\n{m.group(1)}<|im_end|>\n"
        for msg in messages:
            text += f"<|im_start|>{msg['role']}\n{msg['content']}<|im_end|>\n"
        if add_generation_prompt:
            text += "<|im_start|>assistant\n"
        return text
