"""Tokenizers: the real InternLM2 one of a HoVLE / mmMamba directory, or a small word-level one we train.

A released checkpoint ships InternLM2's sentencepiece tokenizer with its remote code (``tokenizer.model`` +
``tokenization_internlm2.py``); it is loaded through transformers' ``AutoTokenizer`` with ``use_fast=False``, as
the reference does. The demo's tiny models use a word-level ``tokenizer.json`` (Hugging Face ``tokenizers``
format) trained on the mini-suite's training text, whose image tokens ``<img>``, ``</img>``, ``<IMG_CONTEXT>``
are added right after the text vocabulary: exactly the id layout of the real checkpoint (special ids >=
``llm_vocab_size``).
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Iterable, Protocol

from mmmamba_bench.preprocessing import IMG_CONTEXT, IMG_END, IMG_START, ROLE_END, ROLE_START

TEXT_SPECIALS = ("<unk>", "<s>", "</s>", "<pad>", ROLE_START, ROLE_END)
IMAGE_SPECIALS = (IMG_START, IMG_END, IMG_CONTEXT)
_WORD = re.compile(r"\w+|[^\w\s]+")  # what pre_tokenizers.Whitespace splits on


class Tokenizer(Protocol):
    eos_token_id: int  # the chat turn's end (<|im_end|>)
    pad_token_id: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def token_to_id(self, token: str) -> int | None: ...


class FastTokenizer:
    """A ``tokenizers.Tokenizer`` (tokenizer.json) behind the small :class:`Tokenizer` interface."""

    def __init__(self, path: str | Path):
        from tokenizers import Tokenizer as HFTokenizer

        self._tok = HFTokenizer.from_file(str(path))
        self.eos_token_id = self._require(ROLE_END)
        pad = self._tok.token_to_id("<pad>")
        self.pad_token_id = pad if pad is not None else self.eos_token_id

    def _require(self, token: str) -> int:
        idx = self._tok.token_to_id(token)
        if idx is None:
            raise ValueError(f"tokenizer has no {token!r} token")
        return idx

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=False)


class InternLM2Tokenizer:
    """The released sentencepiece tokenizer, through transformers' AutoTokenizer (local remote code)."""

    def __init__(self, path: str | Path):
        from transformers import AutoTokenizer

        self._tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=True, use_fast=False)
        idx = self._tok.convert_tokens_to_ids(ROLE_END)
        if idx is None or idx == self._tok.unk_token_id:
            raise ValueError(f"{path}: tokenizer has no {ROLE_END!r} token")
        self.eos_token_id = int(idx)
        self.pad_token_id = int(self._tok.pad_token_id if self._tok.pad_token_id is not None else idx)

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False))

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        idx = self._tok.convert_tokens_to_ids(token)
        return None if idx is None or idx == self._tok.unk_token_id else int(idx)


def load_tokenizer(path: str | Path) -> Tokenizer:
    """The tokenizer stored in a checkpoint directory."""
    path = Path(path)
    if (path / "tokenizer.json").is_file():
        return FastTokenizer(path / "tokenizer.json")
    if (path / "tokenizer.model").is_file():
        return InternLM2Tokenizer(path)
    raise FileNotFoundError(f"{path}: no tokenizer (expected tokenizer.json or tokenizer.model)")


def train_word_tokenizer(texts: Iterable[str], out_file: str | Path, min_count: int = 1) -> int:
    """Build a word-level tokenizer.json from ``texts``; returns the text vocabulary size (= llm_vocab_size).

    Ids: the text specials, then words by descending frequency (ties alphabetical: deterministic), then the
    three image tokens as added special tokens.
    """
    from tokenizers import AddedToken, Tokenizer as HFTokenizer, decoders, models, pre_tokenizers

    counts = Counter(w for t in texts for w in _WORD.findall(t))
    words = sorted((w for w, c in counts.items() if c >= min_count and w not in TEXT_SPECIALS),
                   key=lambda w: (-counts[w], w))
    vocab = {tok: i for i, tok in enumerate(list(TEXT_SPECIALS) + words)}
    tok = HFTokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins words with spaces, tidies punctuation
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in TEXT_SPECIALS])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in IMAGE_SPECIALS])
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_file))
    return len(vocab)
