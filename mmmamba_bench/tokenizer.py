"""Tokenizers: the real InternLM2 one of a HoVLE / mmMamba directory, or a small word-level one we train.

A released checkpoint ships InternLM2's sentencepiece tokenizer (``tokenizer.model`` + ``tokenizer_config.json``) with
Python code of its own (``tokenization_internlm2.py``); :class:`InternLM2Tokenizer` reads the files as data and never
runs that code. The demo's tiny models use a word-level ``tokenizer.json`` (Hugging Face ``tokenizers``
format) trained on the mini-suite's training text, whose image tokens ``<img>``, ``</img>``, ``<IMG_CONTEXT>``
are added right after the text vocabulary: exactly the id layout of the real checkpoint (special ids >=
``llm_vocab_size``).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Protocol

from mmmamba_bench.preprocessing import IMG_CONTEXT, IMG_END, IMG_START, ROLE_END, ROLE_START

TEXT_SPECIALS = ("<unk>", "<s>", "</s>", "<pad>", ROLE_START, ROLE_END)
IMAGE_SPECIALS = (IMG_START, IMG_END, IMG_CONTEXT)
_WORD = re.compile(r"\w+|[^\w\s]+")  # what pre_tokenizers.Whitespace splits on


class Tokenizer(Protocol):
    eos_token_id: int  # the chat turn's end (<|im_end|>)
    pad_token_id: int
    bos_token_id: int | None  # None: the model's prompts start without BOS

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def token_to_id(self, token: str) -> int | None: ...


class TokenizerFileError(ValueError):
    """A tokenizer file that cannot be read; the message names the file."""


class FastTokenizer:
    """A ``tokenizers.Tokenizer`` (tokenizer.json) behind the small :class:`Tokenizer` interface."""

    def __init__(self, path: str | Path):
        from tokenizers import Tokenizer as HFTokenizer

        try:
            self._tok = HFTokenizer.from_file(str(path))
        except Exception as exc:  # the Rust parser raises a bare Exception ("key must be a string", ...)
            raise TokenizerFileError(f"{path}: not a valid tokenizer.json ({exc})") from None
        self.eos_token_id = self._require(ROLE_END)
        pad = self._tok.token_to_id("<pad>")
        self.pad_token_id = pad if pad is not None else self.eos_token_id
        self.bos_token_id: int | None = None  # the word-level tokenizers of the demo models use no BOS

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


@dataclass(frozen=True)
class AddedToken:
    """A token matched as a whole in the text before the sentencepiece model sees it (tokenizer_config.json)."""

    content: str
    id: int
    special: bool  # skipped when decoding
    lstrip: bool = False  # swallows the white space on its left
    rstrip: bool = False  # swallows the white space on its right


class InternLM2Tokenizer:
    """InternLM2's tokenizer, read as data: ``tokenizer.model`` (sentencepiece) + ``tokenizer_config.json``.

    A released directory ships it with its own Python (``tokenization_internlm2.py``, loaded by transformers only
    with ``trust_remote_code=True``). That code is never run here; this class does what it does for the calls we
    make, following transformers' slow-tokenizer rules it builds on:

    - encode: the text is cut at every added token (``added_tokens_decoder``; leftmost match, the longest at a
      position, honouring ``lstrip`` / ``rstrip``); each added token is its id, every other piece goes through
      ``SentencePieceProcessor.encode`` on its own (which adds its dummy prefix per piece, as the remote code does).
    - decode (``skip_special_tokens``): special ids are dropped, runs of ordinary ids are decoded by sentencepiece,
      and any non-special added token in between is joined with single spaces.
    - ``bos_token_id`` / ``add_bos_token``: the released chat code tokenises the prompt with special tokens, so it
      starts with BOS when ``add_bos_token`` (InternLM2's default: true).
    """

    def __init__(self, path: str | Path):
        import sentencepiece as spm

        path = Path(path)
        model_file = path / "tokenizer.model"
        try:
            self._sp = spm.SentencePieceProcessor(model_file=str(model_file))
        except (OSError, RuntimeError) as exc:
            raise TokenizerFileError(f"{model_file}: not a readable sentencepiece model ({exc})") from None
        config = _read_json(path / "tokenizer_config.json") or {}
        specials_map = _read_json(path / "special_tokens_map.json") or {}
        self._added = _added_tokens(config, path / "tokenizer_config.json")
        for content, idx in (_read_json(path / "added_tokens.json") or {}).items():  # older layout
            if isinstance(content, str) and isinstance(idx, int) and content not in self._added:
                self._added[content] = AddedToken(content, idx, special=False)
        named = [config.get(k, specials_map.get(k)) for k in ("bos_token", "eos_token", "unk_token", "pad_token")]
        named += list(config.get("additional_special_tokens") or specials_map.get("additional_special_tokens") or [])
        special_names = {t["content"] if isinstance(t, dict) else t for t in named if t}
        self._special_ids = {t.id for t in self._added.values() if t.special or t.content in special_names}
        self._special_ids |= {i for i in (self._sp.bos_id(), self._sp.eos_id(), self._sp.unk_id(), self._sp.pad_id())
                              if i >= 0}
        self._special_ids |= {self._sp.piece_to_id(n) for n in special_names
                              if n not in self._added and self._sp.piece_to_id(n) != self._sp.unk_id()}
        self._by_id = {t.id: t for t in self._added.values()}
        pattern = "|".join(re.escape(c) for c in sorted(self._added, key=len, reverse=True))
        self._split = re.compile(f"({pattern})") if pattern else None
        self.add_bos_token = bool(config.get("add_bos_token", True))
        self.bos_token_id: int | None = self._sp.bos_id() if self._sp.bos_id() >= 0 else None
        eos = self.token_to_id(ROLE_END)
        if eos is None:
            raise TokenizerFileError(f"{path}: tokenizer has no {ROLE_END!r} token")
        self.eos_token_id = eos
        pad = self._sp.pad_id()
        self.pad_token_id = pad if pad >= 0 else eos

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        if self._split is None:
            return list(self._sp.encode(text))
        parts = self._split.split(text)  # [text, token, text, token, ..., text]
        for i in range(1, len(parts), 2):
            token = self._added[parts[i]]
            if token.lstrip:
                parts[i - 1] = parts[i - 1].rstrip()
            if token.rstrip:
                parts[i + 1] = parts[i + 1].lstrip()
        ids: list[int] = []
        for i, part in enumerate(parts):
            if i % 2:
                ids.append(self._added[part].id)
            elif part:
                ids.extend(self._sp.encode(part))
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        texts: list[str] = []
        run: list[int] = []
        for idx in ids:
            idx = int(idx)
            if idx in self._special_ids:
                continue
            if idx in self._by_id:
                if run:
                    texts.append(self._sp.decode(run))
                    run = []
                texts.append(self._by_id[idx].content)
            else:
                run.append(idx)
        if run:
            texts.append(self._sp.decode(run))
        return " ".join(texts)

    def token_to_id(self, token: str) -> int | None:
        if token in self._added:
            return self._added[token].id
        idx = self._sp.piece_to_id(token)
        return None if idx == self._sp.unk_id() and token != self._sp.id_to_piece(idx) else int(idx)


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TokenizerFileError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise TokenizerFileError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def _added_tokens(config: dict, where: Path) -> dict[str, AddedToken]:
    out: dict[str, AddedToken] = {}
    for key, entry in (config.get("added_tokens_decoder") or {}).items():
        try:
            idx = int(key)
            content = entry["content"]
        except (TypeError, ValueError, KeyError):
            raise TokenizerFileError(f"{where}: added_tokens_decoder entry {key!r} is not an id with a content") \
                from None
        if not isinstance(content, str) or not content:
            raise TokenizerFileError(f"{where}: added token {key} has no text content")
        out[content] = AddedToken(content, idx, special=bool(entry.get("special", False)),
                                  lstrip=bool(entry.get("lstrip", False)), rstrip=bool(entry.get("rstrip", False)))
    return out


def load_tokenizer(path: str | Path) -> Tokenizer:
    """The tokenizer stored in a checkpoint directory (read as data; a checkpoint's code is never run)."""
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
