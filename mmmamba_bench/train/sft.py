"""InternVL's supervised fine-tuning format (the SOLO set mmMamba distilled on), read as a stream.

Rows: JSON lines ``{"id": ..., "image": "rel/path.jpg" | [paths] | absent, "conversations": [{"from": "human",
"value": "<image>\\n..."}, {"from": "gpt", "value": "..."}, ...]}``; ``<image>`` marks where each image goes. Several
such files are named by a meta JSON ``{"name": {"root": IMAGE_DIR, "annotation": FILE.jsonl, "data_augment": false,
"repeat_time": 1, "length": N}, ...}``, its paths relative to the meta file's folder.

What holds:

- Nothing is loaded whole: opening makes one streaming pass over each annotation file that records the byte offset
  and 1-based line number of every non-blank line (int64 arrays, 16 bytes a row) and hashes the bytes;
  :meth:`SFTData.encode` seeks to one line and reads it. Blank lines are not rows.
- The order is a pure function of the position: position k is epoch ``k // len``, each epoch a permutation of the
  epoch's rows seeded by (seed, epoch), so a run resumes by position alone.
- A row that cannot be trained on (:data:`REASONS`) encodes to None, is counted by reason and logged once with its
  file and line: a row's content never raises. Only the files are checked when opening (missing, unreadable meta,
  no rows).
- Images are read from files under their image root only (a path with ``..`` or an absolute path is refused without
  being opened, checked on the path as written: symlinks inside the root are the user's), with PIL restricted to
  :data:`IMAGE_FORMATS` (no format that runs a program, e.g. EPS via Ghostscript); nothing is executed or unpickled.
- Encoding is InternVL's for ``internlm2-chat`` (``preprocess_internlm``): every turn's value stripped, a single
  image without ``<image>`` goes first in the first question, each ``<image>`` replaced in order by its image's
  block, labels on every answer and its end-of-turn token. Pieces are tokenised as
  :meth:`~mmmamba_bench.processor.Processor.encode_example` tokenises them (prompt, answer, next prompt, ...), so a
  one-turn row encodes exactly as ``encode_example`` does.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
import torch
from PIL import Image

from mmmamba_bench.images import to_rgb
from mmmamba_bench.preprocessing import (
    IMAGE_PLACEHOLDER,
    IMG_CONTEXT,
    IMG_END,
    IMG_START,
    image_block,
    next_turn_prompt,
)
from mmmamba_bench.processor import IGNORE, Encoded, Processor

log = logging.getLogger(__name__)

# Why a row is skipped (the keys of SFTData.skipped()).
REASONS = {
    "bad_json": "the line is not valid UTF-8 JSON",
    "not_object": "the line's JSON is not an object",
    "no_conversations": "no 'conversations' list, or an empty one",
    "bad_turns": "turns are not human, gpt, human, gpt, ... ending with gpt, each with a string 'value'",
    "bad_image_field": "'image' is neither a path nor a list of paths",
    "image_outside_root": "an image path with '..' or an absolute one (refused, never read)",
    "missing_image": "an image file that does not exist",
    "unreadable_image": "an image file PIL cannot decode",
    "image_placeholders": "the number of <image> placeholders in the questions differs from the number of images",
    "image_token_in_text": "a turn's text holds an image token (<img>, </img>, <IMG_CONTEXT>) itself",
    "too_long": "more tokens than max_tokens once encoded",
}
IMAGE_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF", "PPM")  # JPEG includes its multi-picture MPO
META_KEYS = {"root", "annotation", "data_augment", "repeat_time", "length"}  # the meta keys this reader honours
_CHUNK = 1 << 20  # bytes read at a time while indexing


class BadRow(Exception):
    """A row that cannot be trained on: ``reason`` (a key of :data:`REASONS`) and what was found."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class Source:
    """One annotation file and where its images are."""

    name: str
    annotation: Path
    image_root: Path
    repeat_time: float = 1.0
    length: int | None = None  # the meta's "length": checked against the file's rows, a warning when they differ


# ---- opening: meta, line index, epoch ------------------------------------------------------------------------------

def read_meta(path: Path, raw: bytes) -> list[Source]:
    """The annotation files a meta JSON names (``raw``: its bytes), paths resolved against its folder; an entry
    without "root" has its images in its annotation file's folder. Keys other than :data:`META_KEYS`, and
    ``data_augment: true``, are logged as not applied."""
    try:
        meta = json.loads(raw.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a readable meta JSON ({exc})") from None
    if not isinstance(meta, dict) or not meta:
        raise ValueError(f"{path}: a meta JSON is a non-empty object {{name: {{\"root\": ..., \"annotation\": ...}}}}")
    sources = []
    for name, entry in meta.items():
        where = f"{path}: entry {name!r}"
        if not isinstance(entry, dict) or not isinstance(entry.get("annotation"), str):
            raise ValueError(f"{where} has no \"annotation\" (the JSON-lines file of its rows)")
        repeat = entry.get("repeat_time", 1)
        if isinstance(repeat, bool) or not isinstance(repeat, (int, float)) or not (0 < repeat < math.inf):
            raise ValueError(f"{where}: repeat_time must be a number > 0, got {repeat!r}")
        ignored = sorted(set(entry) - META_KEYS) + (["data_augment"] if entry.get("data_augment") else [])
        if ignored:
            log.warning("%s: %s not applied by this reader", where, ", ".join(ignored))
        annotation = path.parent / entry["annotation"]
        root = path.parent / entry["root"] if isinstance(entry.get("root"), str) else annotation.parent
        sources.append(Source(str(name), annotation, root, float(repeat), entry.get("length")))
    return sources


def index_lines(path: Path, hasher: hashlib._Hash) -> tuple[np.ndarray, np.ndarray]:
    """(byte offset [N] int64, 1-based line number [N] int64) of every non-blank line of ``path``, in one streaming
    pass of ``_CHUNK`` reads that also feeds ``hasher`` every byte. Memory: the index plus a few chunks."""
    offsets, numbers = [], []
    carry, carry_at, lines_before = b"", 0, 0  # the unfinished last line, its byte offset, newlines before it
    with open(path, "rb") as f:
        while True:
            chunk = f.read(_CHUNK)
            hasher.update(chunk)
            buf = carry + chunk if carry else chunk
            data = np.frombuffer(buf, dtype=np.uint8)
            ends = np.flatnonzero(data == 10)  # each complete line's newline
            if not chunk and len(data) > (int(ends[-1]) + 1 if len(ends) else 0):
                ends = np.append(ends, len(data))  # the last line, without a newline
            if len(ends):
                starts = np.concatenate(([0], ends[:-1] + 1))
                done = int(ends[-1]) + 1  # bytes of complete lines
                ink = (data[:done] > 32) | ((data[:done] < 32) & (data[:done] != 9) & (data[:done] != 10)
                                            & (data[:done] != 13))  # not JSON white space
                keep = np.logical_or.reduceat(ink, starts)  # [lines]: the line holds something
                offsets.append(starts[keep].astype(np.int64) + carry_at)
                numbers.append(np.flatnonzero(keep).astype(np.int64) + lines_before + 1)
                carry, carry_at, lines_before = buf[done:], carry_at + done, lines_before + len(ends)
            else:
                carry = buf
            if not chunk:
                break
    empty = np.zeros(0, dtype=np.int64)
    return (np.concatenate(offsets) if offsets else empty), (np.concatenate(numbers) if numbers else empty)


def epoch_rows(counts: list[int], repeats: list[float], seed: int) -> np.ndarray:
    """The row ids of one epoch [sum of n_i * r_i] int64, file by file (row ids numbered across files in order).

    repeat_time r of a file with n rows, as InternVL: its rows int(r) times, plus a random subset of
    floor(n * (r - int(r))) rows (without replacement, seeded by (seed, file's position)); r = 0.5 is half the rows.
    """
    parts, first = [], 0
    for i, (n, r) in enumerate(zip(counts, repeats, strict=True)):
        ids = np.arange(first, first + n, dtype=np.int64)
        whole = int(r)
        extra = math.floor(n * Fraction(repr(r))) - whole * n  # exact for decimal r (2.3 * 10 is 23, not 22)
        parts.append(np.tile(ids, whole))
        if extra:
            rng = np.random.default_rng([seed, 1, i])
            parts.append(np.sort(rng.choice(ids, size=extra, replace=False)))
        first += n
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


# ---- one row -------------------------------------------------------------------------------------------------------

def parse_row(line: bytes) -> tuple[list[tuple[str, str]], list[str]]:
    """One line -> ([(question, answer), ...] as written, image paths as written); raises :class:`BadRow`."""
    try:
        row = json.loads(line.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRow("bad_json", str(exc)) from None
    if not isinstance(row, dict):
        raise BadRow("not_object", f"a JSON {type(row).__name__}")
    conv = row.get("conversations")
    if not isinstance(conv, list) or not conv:
        raise BadRow("no_conversations", f"'conversations' is {conv!r:.60}")
    for k, turn in enumerate(conv):
        want = ("human", "gpt")[k % 2]
        if not isinstance(turn, dict) or turn.get("from") != want or not isinstance(turn.get("value"), str):
            raise BadRow("bad_turns", f"turn {k + 1} is {turn!r:.80}, expected {{'from': {want!r}, 'value': str}}")
    if len(conv) % 2:
        raise BadRow("bad_turns", f"{len(conv)} turns: the last question has no answer")
    image = row.get("image")
    images = [] if not image else [image] if isinstance(image, str) else image  # InternVL: empty = text-only
    if not isinstance(images, list) or not all(isinstance(p, str) and p for p in images):
        raise BadRow("bad_image_field", f"'image' is {image!r:.80}")
    return [(conv[k]["value"], conv[k + 1]["value"]) for k in range(0, len(conv), 2)], images


def image_path(root: Path, rel: str) -> Path:
    """``root / rel``, refusing a path that could leave ``root`` (absolute, or with a ``..`` part); raises BadRow."""
    if any(p.is_absolute() or p.drive or ".." in p.parts for p in (PurePosixPath(rel), PureWindowsPath(rel))):
        raise BadRow("image_outside_root", f"{rel!r} is not a path inside the image root {root}")
    path = root / rel
    if not path.is_file():
        raise BadRow("missing_image", f"{path} not found")
    return path


def read_image(path: Path) -> Image.Image:
    """The image of a file, decoded and 8-bit RGB; raises BadRow when PIL cannot read it."""
    try:
        with open(path, "rb") as f:
            image = Image.open(f, formats=IMAGE_FORMATS)
            image.load()
        return to_rgb(image)
    except Exception as exc:  # PIL's decoders raise many kinds (OSError, SyntaxError, ValueError, struct.error...)
        raise BadRow("unreadable_image", f"{path}: {type(exc).__name__}: {exc}") from None


def prepare_turns(turns: list[tuple[str, str]], num_images: int) -> list[tuple[str, str]]:
    """The turns as InternVL builds them: a lone image without placeholder goes first (``<image>\\n``) in the first
    question, every value stripped; raises BadRow when placeholders and images disagree or text holds image tokens."""
    for question, answer in turns:
        for token in (IMG_START, IMG_END, IMG_CONTEXT):
            if token in question or token in answer:
                raise BadRow("image_token_in_text", f"a turn holds {token!r}")
    if num_images == 1 and not any(IMAGE_PLACEHOLDER in q for q, _ in turns):
        turns = [(IMAGE_PLACEHOLDER + "\n" + turns[0][0], turns[0][1])] + turns[1:]
    in_questions = sum(q.count(IMAGE_PLACEHOLDER) for q, _ in turns)
    in_answers = sum(a.count(IMAGE_PLACEHOLDER) for _, a in turns)
    if in_questions != num_images or in_answers:
        raise BadRow("image_placeholders", f"{num_images} image(s), {in_questions} {IMAGE_PLACEHOLDER} in the "
                                           f"questions, {in_answers} in the answers")
    return [(q.strip(), a.strip()) for q, a in turns]


def encode_turns(processor: Processor, turns: list[tuple[str, str]], images: list[Image.Image]) -> Encoded:
    """A conversation (placeholders already matching ``images``) -> input_ids, labels, every image's tiles.

    Pieces: ``encode_prompt`` of the first question (BOS, template, system turn), then per turn the answer's tokens
    + end-of-turn (labelled), then the next question's :func:`next_turn_prompt` (not labelled).
    """
    per_image = [processor.pixel_values(im, len(images)) for im in images]  # each [n_k, 3, S, S]
    tiles = tuple(int(pv.shape[0]) for pv in per_image)
    blocks = iter([image_block(n, processor.config.embedding_config.tokens_per_tile) for n in tiles])

    def place(question: str) -> str:  # each <image> -> the next image's block
        parts = question.split(IMAGE_PLACEHOLDER)
        return parts[0] + "".join(next(blocks) + part for part in parts[1:])

    tok = processor.tokenizer
    ids = processor.encode_prompt(place(turns[0][0])).input_ids
    is_answer = [False] * len(ids)
    for k, (question, answer) in enumerate(turns):
        if k:
            prompt = tok.encode(next_turn_prompt(place(question), processor.config.template))
            ids, is_answer = ids + prompt, is_answer + [False] * len(prompt)
        target = tok.encode(answer) + [tok.eos_token_id]
        ids, is_answer = ids + target, is_answer + [True] * len(target)
    # labels[t] is the token at t + 1 where that token belongs to an answer
    labels = [ids[t + 1] if is_answer[t + 1] else IGNORE for t in range(len(ids) - 1)] + [IGNORE]
    return Encoded(ids, torch.cat(per_image) if per_image else None, labels, tiles)


# ---- the data set --------------------------------------------------------------------------------------------------

class SFTData:
    """Rows of one or several InternVL annotation files: an index (no row text held), an endless seeded order, and
    rows encoded on demand. Open with :meth:`open`."""

    def __init__(self, path: Path, processor: Processor, sources: list[Source], offsets: list[np.ndarray],
                 lines: list[np.ndarray], sha256: str, max_tokens: int, seed: int):
        self.path, self.processor, self.sources = path, processor, sources
        self._offsets, self._lines = offsets, lines  # per source: [n_i] int64 byte offsets, 1-based line numbers
        self._first = np.cumsum([0] + [len(o) for o in offsets])  # [len(sources) + 1]: first row id of each source
        self.sha256, self.max_tokens, self.seed = sha256, max_tokens, seed
        # [len]: the row ids of one epoch (in file order; each epoch permutes them)
        self.rows_of_epoch = epoch_rows([len(o) for o in offsets], [s.repeat_time for s in sources], seed)
        self._perm_epoch, self._perm = -1, np.zeros(0, dtype=np.int64)
        self._bad: dict[int, str] = {}  # row id -> reason, for rows found bad in this process

    @classmethod
    def open(cls, path: str | Path, processor: Processor, *, image_root: str | Path | None = None,
             max_tokens: int = 8192, seed: int = 0) -> SFTData:
        """Index ``path``: a ``.json`` meta file, or one JSON-lines annotation file whose images are relative to
        ``image_root`` (default: its folder). Raises, naming the file, on a missing file or image root, an
        unreadable meta, a meta entry without "annotation", or no rows at all. ``seed`` picks the order and the
        subsets of a fractional repeat_time; rows over ``max_tokens`` tokens are skipped ("too_long").

        ``sha256``: the identity of the data, over the meta file's bytes (if any), every annotation file's bytes and
        ``max_tokens``. Image files are not hashed: replacing an image keeps the identity.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"SFT data: {path} not found")
        if max_tokens < 1 or seed < 0:
            raise ValueError(f"max_tokens must be >= 1 and seed >= 0, got {max_tokens} and {seed}")
        hasher = hashlib.sha256(b"mmmamba-bench sft v1\0")
        if path.suffix == ".json":
            if image_root is not None:
                raise ValueError(f"{path}: a meta JSON names each file's image root; image_root is for a .jsonl")
            raw = path.read_bytes()
            hasher.update(b"meta %d\0" % len(raw) + raw)
            sources = read_meta(path, raw)
        else:
            sources = [Source(path.stem, path, Path(image_root) if image_root is not None else path.parent)]
        offsets, lines = [], []
        for src in sources:
            if not src.annotation.is_file():
                raise FileNotFoundError(f"{path}: annotation file {src.annotation} of {src.name!r} not found")
            if not src.image_root.is_dir():
                raise FileNotFoundError(f"{path}: image root {src.image_root} of {src.name!r} is not a folder")
            hasher.update(b"annotation %d\0" % src.annotation.stat().st_size)
            off, num = index_lines(src.annotation, hasher)
            offsets.append(off)
            lines.append(num)
            if src.length is not None and src.length != len(off):
                log.warning("%s: entry %r says length %r, but %s has %d rows (the file's count is used)",
                            path, src.name, src.length, src.annotation, len(off))
        hasher.update(b"max_tokens %d\0" % max_tokens)
        data = cls(path, processor, sources, offsets, lines, hasher.hexdigest(), max_tokens, seed)
        if len(data) == 0:
            raise ValueError(f"{path}: no rows to train on ({data.num_rows} rows in "
                             f"{', '.join(str(s.annotation) for s in sources)} after repeat_time)")
        log.info("SFT data %s: %d rows in %d file(s), %d an epoch", path, data.num_rows, len(sources), len(data))
        return data

    def reseeded(self, seed: int) -> SFTData:
        """The same files and index in another order (another seed), without indexing the files again."""
        return SFTData(self.path, self.processor, self.sources, self._offsets, self._lines, self.sha256,
                       self.max_tokens, seed)

    @property
    def num_rows(self) -> int:
        """Distinct rows in the files (row ids are 0 .. num_rows - 1)."""
        return int(self._first[-1])

    def __len__(self) -> int:
        """Rows of one epoch, after repeat_time."""
        return len(self.rows_of_epoch)

    def row_at(self, k: int) -> int:
        """The row id at position ``k >= 0`` of the endless order (a pure function of k, seed and the files)."""
        if k < 0:
            raise IndexError(f"position {k} < 0")
        epoch, i = divmod(k, len(self.rows_of_epoch))
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, 0, epoch]).permutation(len(self.rows_of_epoch))
            self._perm_epoch = epoch
        return int(self.rows_of_epoch[self._perm[i]])

    def _locate(self, row: int) -> tuple[int, int]:
        """(source index, row index within that source's file) of row id ``row``."""
        if not 0 <= row < self.num_rows:
            raise IndexError(f"row {row} outside 0..{self.num_rows - 1}")
        s = int(np.searchsorted(self._first, row, side="right")) - 1
        return s, row - int(self._first[s])

    def where(self, row: int) -> tuple[Path, int]:
        """(annotation file, 1-based line number) of row id ``row``."""
        s, i = self._locate(row)
        return self.sources[s].annotation, int(self._lines[s][i])

    def encode(self, row: int) -> Encoded | None:
        """Row ``row`` encoded (input_ids, labels, pixel_values [N_tiles, 3, S, S] or None), or None for a bad row
        (counted in :meth:`skipped`, logged once with its file:line)."""
        if row in self._bad:
            return None
        s, i = self._locate(row)
        path, line_no = self.sources[s].annotation, int(self._lines[s][i])
        try:
            with open(path, "rb") as f:
                f.seek(int(self._offsets[s][i]))
                line = f.readline()
            turns, rels = parse_row(line)
            turns = prepare_turns(turns, len(rels))
            images = [read_image(image_path(self.sources[s].image_root, rel)) for rel in rels]
            enc = encode_turns(self.processor, turns, images)
            if len(enc.input_ids) > self.max_tokens:
                raise BadRow("too_long", f"{len(enc.input_ids)} tokens > max_tokens {self.max_tokens}")
        except BadRow as bad:
            self._bad[row] = bad.reason
            log.warning("%s:%d: row skipped (%s): %s", path, line_no, bad.reason, bad.detail)
            return None
        return enc

    def skipped(self) -> dict[str, int]:
        """How many distinct rows were found bad so far in this process, per reason (each DataLoader worker counts
        its own)."""
        return dict(Counter(self._bad.values()))

    def bad_rows(self) -> dict[int, str]:
        """Row id -> reason of every row found bad so far in this process (or noted with :meth:`note_bad`)."""
        return dict(self._bad)

    def note_bad(self, rows: dict[int, str]) -> None:
        """Rows known to be bad (found by another process, or before a resume): skipped without reading them again."""
        self._bad.update({int(r): str(reason) for r, reason in rows.items()})
