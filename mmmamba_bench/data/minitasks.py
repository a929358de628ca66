"""Item builders of the seven mini-suite tasks: images from real photos / digits, and templated questions.

Each builder ``build_<task>(canvas, n)`` returns ``n`` :class:`Item` s, one image each with the questions asked about
it (an MME pair, POPE's questions of one image, the rotations of one MMBench question, or a single question).
The visual vocabulary is small on purpose (12 photos, 3 textures, 10 digits, 5 ink colours, 2x2 / 1x2 layouts) so
that a ~1-5M parameter model trained for minutes on 64x64 images gets well above chance on every task.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from mmmamba_bench.data import render
from mmmamba_bench.data.prompts import letters
from mmmamba_bench.data.sources import PHOTOS, Sources

OBJECTS: tuple[str, ...] = tuple(PHOTOS)
COLOR_NAMES: tuple[str, ...] = tuple(render.COLORS)
POSITIONS = ("top left", "top right", "bottom left", "bottom right")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# POPE: objects co-occur within a scene; the first of each scene is common, the last two rare (popular negatives).
SCENES: dict[str, tuple[str, ...]] = {
    "space": ("astronaut", "rocket", "moon", "galaxy"),
    "home": ("cat", "coffee", "clock", "coins"),
    "outdoors": ("horse", "flower", "temple", "photographer"),
}
SCENE_WEIGHTS = (4.0, 2.0, 1.0, 1.0)

# ScienceQA-style facts about the photos and textures.
KIND: dict[str, str] = {
    "astronaut": "person", "photographer": "person", "cat": "animal", "horse": "animal", "coffee": "drink",
    "coins": "money", "rocket": "vehicle", "moon": "celestial body", "galaxy": "celestial body",
    "clock": "instrument", "flower": "plant", "temple": "building",
}
LIVING = frozenset({"astronaut", "photographer", "cat", "horse", "flower", "grass"})
TEXTURE_ANSWERS = {"brick": "brick wall", "grass": "grass", "gravel": "gravel"}
TEXTURE_DISTRACTORS = ("sand", "water", "wood")


@dataclass(frozen=True)
class Question:
    """One row of a task: the question about the item's image and its answer(s)."""

    question: str
    answer: str  # canonical answer: "Yes"/"No", "yes"/"no", an option letter, or a short answer
    category: str
    options: tuple[str, ...] = ()
    hint: str = ""
    answers: tuple[str, ...] = ()  # reference answers (TextVQA: 10); empty means (answer,)
    rotation: int = 0  # MMBench circular rotation


@dataclass(frozen=True)
class Item:
    """One image (PNG bytes) and the questions asked about it; its rows share a ``group`` id."""

    image: bytes
    questions: tuple[Question, ...]


class Canvas:
    """Drawing context of one (task, split): the split's digit pool, a seeded generator and a registry of image
    hashes shared by all tasks and splits, so that no PNG is used twice anywhere in the suite."""

    def __init__(self, sources: Sources, split: str, rng: np.random.Generator, seen: set[bytes]):
        self.sources = sources
        self.digits = sources.digits[split]
        self.rng = rng
        self._seen = seen

    # -- drawing ------------------------------------------------------------------------------------------------------
    def photo(self, name: str, size: int = render.IMAGE_SIZE) -> np.ndarray:
        return render.crop_photo(self.sources.photos[name], self.rng, size)

    def texture(self, name: str, size: int = render.IMAGE_SIZE) -> np.ndarray:
        return render.crop_photo(self.sources.textures[name], self.rng, size, min_frac=0.3)

    def digit(self, label: int, size: int = render.IMAGE_SIZE, color: str = "white", **kw) -> np.ndarray:
        idx = self.rng.choice(self.digits.indices_of(label))
        return render.digit_tile(self.digits.images[idx], self.rng, size, color=color, **kw)

    def digit_grid(self, k: int, color: str = "white") -> np.ndarray:
        """``k`` random digits in ``k`` random cells of a 2x2 grid (others black)."""
        cells: list[np.ndarray | None] = [None] * 4
        for cell in self.rng.choice(4, size=k, replace=False):
            cells[cell] = self.digit(int(self.rng.integers(10)), render.CELL, color, scale=(0.6, 0.95))
        return render.grid(cells, 2, 2)

    def side_by_side(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        """Two CELL-sized tiles at random heights in the left and right halves of the image."""
        return render.grid([render.in_column(left, self.rng, render.IMAGE_SIZE),
                            render.in_column(right, self.rng, render.IMAGE_SIZE)], 1, 2)

    # -- sampling -----------------------------------------------------------------------------------------------------
    def pick(self, values: Sequence, k: int | None = None, exclude: Sequence = ()):
        pool = [v for v in values if v not in exclude]
        if k is None:
            return pool[int(self.rng.integers(len(pool)))]
        return [pool[i] for i in self.rng.choice(len(pool), size=k, replace=False)]

    def shuffled(self, values: Sequence) -> list:
        return [values[i] for i in self.rng.permutation(len(values))]

    def unique(self, draw: Callable[[], tuple[np.ndarray, object]], tries: int = 50) -> tuple[bytes, object]:
        """Call ``draw`` until its image has never been produced before; return (PNG bytes, draw's payload)."""
        for _ in range(tries):
            image, payload = draw()
            png = render.to_png(image)
            digest = hashlib.sha256(png).digest()
            if digest not in self._seen:
                self._seen.add(digest)
                return png, payload
        raise RuntimeError(f"could not draw a new image in {tries} tries")


def _choice_question(c: Canvas, question: str, correct: str, distractors: Sequence[str], category: str,
                     hint: str = "") -> Question:
    options = c.shuffled([correct, *distractors])
    return Question(question, letters(len(options))[options.index(correct)], category, tuple(options), hint)


def _cycle(categories: Sequence[str], i: int) -> str:
    return categories[i % len(categories)]


# ---------------------------------------------------------------------------------------------------------------------
# MME: yes/no question pairs (one true, one false) per image
# ---------------------------------------------------------------------------------------------------------------------

MME_CATEGORIES = ("existence", "count", "position", "color", "OCR")


def _mme_item(c: Canvas, category: str) -> tuple[np.ndarray, tuple[str, str]]:
    """An image with a true and a false statement-question about it."""
    if category == "existence":
        obj, other = c.pick(OBJECTS, 2)
        return c.photo(obj), (f"Is there a {obj} in this image?", f"Is there a {other} in this image?")
    if category == "count":
        k, wrong = c.pick(range(1, 5), 2)
        return c.digit_grid(k), (f"Are there {k} digits in this image?", f"Are there {wrong} digits in this image?")
    if category == "position":
        a, b = c.pick(OBJECTS, 2)
        image = c.side_by_side(c.photo(a, render.CELL), c.photo(b, render.CELL))
        side, there, other = ("left", a, b) if c.rng.random() < 0.5 else ("right", b, a)
        return image, (f"Is the {there} on the {side} side of the image?", f"Is the {other} on the {side} side of the image?")
    if category == "color":
        color, wrong = c.pick(COLOR_NAMES, 2)
        image = c.digit(int(c.rng.integers(10)), color=color)
        return image, (f"Is the digit in this image {color}?", f"Is the digit in this image {wrong}?")
    if category == "OCR":
        d, wrong = c.pick(range(10), 2)
        return c.digit(d), (f"Does this image show the number {d}?", f"Does this image show the number {wrong}?")
    raise ValueError(category)


def build_mme(c: Canvas, n: int) -> list[Item]:
    items = []
    for i in range(n):
        category = _cycle(MME_CATEGORIES, i)
        png, (true_q, false_q) = c.unique(lambda: _mme_item(c, category))
        pair = [Question(true_q, "Yes", category), Question(false_q, "No", category)]
        items.append(Item(png, tuple(c.shuffled(pair))))
    return items


# ---------------------------------------------------------------------------------------------------------------------
# POPE: "Is there a X in the image?" on 2x2 grids of photos, negatives sampled random / popular / adversarial
# ---------------------------------------------------------------------------------------------------------------------

POPE_POSITIVES = 2  # per image, shared by the three splits
POPE_NEGATIVES = 2  # per image and split


def _pope_objects(c: Canvas) -> list[str]:
    """Four distinct objects: 2-3 from one scene (they co-occur), the rest from the others, common ones more often."""
    weights = {o: w for scene in SCENES.values() for o, w in zip(scene, SCENE_WEIGHTS)}
    scene = SCENES[c.pick(list(SCENES))]
    n_in = int(c.rng.integers(2, 4))
    p = np.asarray([weights[o] for o in scene])
    chosen = [scene[i] for i in c.rng.choice(len(scene), size=n_in, replace=False, p=p / p.sum())]
    rest = [o for o in OBJECTS if o not in scene]
    p = np.asarray([weights[o] for o in rest])
    chosen += [rest[i] for i in c.rng.choice(len(rest), size=4 - n_in, replace=False, p=p / p.sum())]
    return c.shuffled(chosen)


def pope_negatives(present: Sequence[str], frequency: Counter, cooccur: dict[str, Counter],
                   rng: np.random.Generator, k: int = POPE_NEGATIVES) -> dict[str, list[str]]:
    """POPE's three negative samplings among the absent objects of one image.

    random: uniform; popular: the most frequent objects of the split; adversarial: the objects that co-occur most
    often with the present ones. Ties go to the earlier object of ``OBJECTS``.
    """
    absent = [o for o in OBJECTS if o not in present]
    order = {o: i for i, o in enumerate(OBJECTS)}
    popular = sorted(absent, key=lambda o: (-frequency[o], order[o]))[:k]
    adversarial = sorted(absent, key=lambda o: (-sum(cooccur[p][o] for p in present), -frequency[o], order[o]))[:k]
    random = [absent[i] for i in rng.choice(len(absent), size=k, replace=False)]
    return {"random": random, "popular": popular, "adversarial": adversarial}


def build_pope(c: Canvas, n: int) -> list[Item]:
    drawn = []
    for _ in range(n):
        def draw():
            objects = _pope_objects(c)
            return render.grid([c.photo(o, render.CELL) for o in objects], 2, 2), objects
        drawn.append(c.unique(draw))
    frequency: Counter = Counter(o for _, objects in drawn for o in objects)
    cooccur: dict[str, Counter] = {o: Counter() for o in OBJECTS}
    for _, objects in drawn:
        for a in objects:
            cooccur[a].update(b for b in objects if b != a)
    items = []
    for png, objects in drawn:
        positives = c.pick(objects, POPE_POSITIVES)
        negatives = pope_negatives(objects, frequency, cooccur, c.rng)
        questions = []
        for split, neg in negatives.items():
            rows = [Question(f"Is there a {o} in the image?", "yes", split) for o in positives]
            rows += [Question(f"Is there a {o} in the image?", "no", split) for o in neg]
            questions += c.shuffled(rows)
        items.append(Item(png, tuple(questions)))
    return items


# ---------------------------------------------------------------------------------------------------------------------
# MMBench: 4-option multiple choice, every question asked once per rotation of its options
# ---------------------------------------------------------------------------------------------------------------------

MMBENCH_CATEGORIES = ("object recognition", "digit recognition", "spatial relation", "counting", "color")


def _mmbench_item(c: Canvas, category: str) -> tuple[np.ndarray, tuple[str, str, list[str]]]:
    if category == "object recognition":
        obj = c.pick(OBJECTS)
        return c.photo(obj), ("What is the main object in the image?", obj, c.pick(OBJECTS, 3, exclude=[obj]))
    if category == "digit recognition":
        d = int(c.rng.integers(10))
        wrong = [str(x) for x in c.pick(range(10), 3, exclude=[d])]
        return c.digit(d, color=c.pick(COLOR_NAMES)), ("Which number is shown in the image?", str(d), wrong)
    if category == "spatial relation":
        a, b = c.pick(OBJECTS, 2)
        image = c.side_by_side(c.photo(a, render.CELL), c.photo(b, render.CELL))
        side, answer, other = ("left", a, b) if c.rng.random() < 0.5 else ("right", b, a)
        return image, (f"Which object is on the {side} side of the image?", answer,
                       [other, *c.pick(OBJECTS, 2, exclude=[a, b])])
    if category == "counting":
        k = int(c.rng.integers(1, 5))
        return c.digit_grid(k), ("How many digits are there in the image?", str(k),
                                 [str(x) for x in range(1, 5) if x != k])
    if category == "color":
        color = c.pick(COLOR_NAMES)
        image = c.digit(int(c.rng.integers(10)), color=color)
        return image, ("What color is the digit?", color, c.pick(COLOR_NAMES, 3, exclude=[color]))
    raise ValueError(category)


def build_mmbench(c: Canvas, n: int) -> list[Item]:
    items = []
    for i in range(n):
        category = _cycle(MMBENCH_CATEGORIES, i)
        png, (question, correct, distractors) = c.unique(lambda: _mmbench_item(c, category))
        options = c.shuffled([correct, *distractors])
        rotations = []
        for r in range(len(options)):
            rotated = options[r:] + options[:r]
            rotations.append(Question(question, letters(len(rotated))[rotated.index(correct)], category,
                                      tuple(rotated), rotation=r))
        items.append(Item(png, tuple(rotations)))
    return items


# ---------------------------------------------------------------------------------------------------------------------
# SEED-Bench (image): 4-option multiple choice over SEED's image dimensions
# ---------------------------------------------------------------------------------------------------------------------

SEED_CATEGORIES = ("scene understanding", "instance identity", "instance location", "instance counting",
                   "instance attributes")


def _seed_item(c: Canvas, category: str) -> tuple[np.ndarray, Question]:
    if category == "scene understanding":
        texture = c.pick(list(TEXTURE_ANSWERS))
        correct = TEXTURE_ANSWERS[texture]
        pool = [v for v in TEXTURE_ANSWERS.values() if v != correct] + list(TEXTURE_DISTRACTORS)
        return c.texture(texture), _choice_question(c, "What kind of surface is shown in the image?", correct,
                                                    c.pick(pool, 3), category)
    if category == "instance identity":
        obj = c.pick(OBJECTS)
        return c.photo(obj), _choice_question(c, "Which of the following objects appears in the image?", obj,
                                              c.pick(OBJECTS, 3, exclude=[obj]), category)
    if category == "instance location":
        objects = c.pick(OBJECTS, 4)
        target = int(c.rng.integers(4))
        image = render.grid([c.photo(o, render.CELL) for o in objects], 2, 2)
        return image, _choice_question(c, f"Where is the {objects[target]} in the image?", POSITIONS[target],
                                       [p for p in POSITIONS if p != POSITIONS[target]], category)
    if category == "instance counting":
        k = int(c.rng.integers(1, 5))
        return c.digit_grid(k), _choice_question(c, "How many handwritten digits are in the image?", str(k),
                                                 [str(x) for x in range(1, 5) if x != k], category)
    if category == "instance attributes":
        color = c.pick(COLOR_NAMES)
        image = c.digit(int(c.rng.integers(10)), color=color)
        return image, _choice_question(c, "What is the color of the digit?", color,
                                       c.pick(COLOR_NAMES, 3, exclude=[color]), category)
    raise ValueError(category)


def build_seed(c: Canvas, n: int) -> list[Item]:
    items = []
    for i in range(n):
        category = _cycle(SEED_CATEGORIES, i)
        png, question = c.unique(lambda: _seed_item(c, category))
        items.append(Item(png, (question,)))
    return items


# ---------------------------------------------------------------------------------------------------------------------
# ScienceQA-IMG: 2-4 options, often with a context (hint)
# ---------------------------------------------------------------------------------------------------------------------

SQA_CATEGORIES = ("parity", "arithmetic", "classification", "comparison", "living things")
PARITY_HINT = "A whole number is even if it can be divided by two without a remainder, and odd otherwise."
LIVING_HINT = "Living things grow, respond to their surroundings and reproduce."


def _sqa_item(c: Canvas, category: str) -> tuple[np.ndarray, Question]:
    if category == "parity":
        d = int(c.rng.integers(10))
        return c.digit(d), _choice_question(c, "Is the number shown in the image even or odd?",
                                            "even" if d % 2 == 0 else "odd", ["odd" if d % 2 == 0 else "even"],
                                            category, hint=PARITY_HINT)
    if category == "arithmetic":
        d = int(c.rng.integers(10))
        wrong = c.pick([x for x in range(d - 2, d + 4) if x >= 0 and x != d + 1], 2)
        return c.digit(d), _choice_question(c, "What is the number in the image plus one?", str(d + 1),
                                            [str(x) for x in wrong], category)
    if category == "classification":
        obj = c.pick(OBJECTS)
        kinds = sorted(set(KIND.values()))
        return c.photo(obj), _choice_question(c, "Which kind of thing is shown in the image?", KIND[obj],
                                              c.pick(kinds, 3, exclude=[KIND[obj]]), category)
    if category == "comparison":
        a, b = c.pick(range(10), 2)
        image = c.side_by_side(c.digit(a, render.CELL), c.digit(b, render.CELL))
        options = ("the number on the left", "the number on the right")
        correct, wrong = options if a > b else options[::-1]
        return image, _choice_question(c, "Which number is greater?", correct, [wrong], category)
    if category == "living things":
        thing = c.pick([*OBJECTS, *TEXTURE_ANSWERS])
        image = c.texture(thing) if thing in TEXTURE_ANSWERS else c.photo(thing)
        correct = "living" if thing in LIVING else "nonliving"
        return image, _choice_question(c, "Is the thing shown in the image living or nonliving?", correct,
                                       ["nonliving" if correct == "living" else "living"], category,
                                       hint=LIVING_HINT)
    raise ValueError(category)


def build_sqa(c: Canvas, n: int) -> list[Item]:
    items = []
    for i in range(n):
        category = _cycle(SQA_CATEGORIES, i)
        png, question = c.unique(lambda: _sqa_item(c, category))
        items.append(Item(png, (question,)))
    return items


# ---------------------------------------------------------------------------------------------------------------------
# TextVQA: read handwritten numbers; 10 reference answers with realistic variants, VQA soft accuracy
# ---------------------------------------------------------------------------------------------------------------------

TEXTVQA_CATEGORIES = ("single digit", "two digits", "first digit", "last digit")
SINGLE_TEMPLATES = ("What number is written in the image?", "What number is shown?", "What digit is written here?")


def reference_answers(c: Canvas, canonical: str) -> tuple[str, ...]:
    """Ten annotator answers: mostly the canonical one, some variants that normalise to it ("seven", "7.", "the 7")
    and some that do not ("number 7", a misread digit, "4 7")."""
    if len(canonical) == 1:
        d = int(canonical)
        variants = [NUMBER_WORDS[d], f"{d}.", f"the {d}", f"number {d}", str((d + 1) % 10)]
    else:
        variants = [f"{canonical}.", " ".join(canonical), canonical[::-1], f"number {canonical}"]
    n_major = int(c.rng.integers(5, 10))
    refs = [canonical] * n_major + [variants[i] for i in c.rng.integers(len(variants), size=10 - n_major)]
    return tuple(c.shuffled(refs))


def _textvqa_item(c: Canvas, category: str) -> tuple[np.ndarray, tuple[str, str]]:
    inverted = bool(c.rng.random() < 0.3)  # dark "print" on a light background
    style = {"color": "white" if inverted else c.pick(COLOR_NAMES), "inverted": inverted,
             "background": float(c.rng.uniform(0.75, 0.95))}
    if category == "single digit":
        d = int(c.rng.integers(10))
        return c.digit(d, **style), (c.pick(SINGLE_TEMPLATES), str(d))
    first, second = int(c.rng.integers(1, 10)), int(c.rng.integers(10))
    tiles = [c.digit(x, render.CELL, scale=(0.75, 1.0), **style) for x in (first, second)]
    image = render.grid([render.in_column(t, c.rng, render.IMAGE_SIZE) for t in tiles], 1, 2)
    if inverted:  # the light background fills the whole image, not only the digit tiles
        image = np.where(image.sum(-1, keepdims=True) == 0, tiles[0][0, 0], image).astype(np.uint8)
    if category == "two digits":
        return image, ("What number is written in the image?", f"{first}{second}")
    if category == "first digit":
        return image, ("What is the first digit of the number in the image?", str(first))
    if category == "last digit":
        return image, ("What is the last digit of the number in the image?", str(second))
    raise ValueError(category)


def build_textvqa(c: Canvas, n: int) -> list[Item]:
    items = []
    for i in range(n):
        category = _cycle(TEXTVQA_CATEGORIES, i)
        png, (question, canonical) = c.unique(lambda: _textvqa_item(c, category))
        items.append(Item(png, (Question(question, canonical, category, answers=reference_answers(c, canonical)),)))
    return items


# ---------------------------------------------------------------------------------------------------------------------
# GQA: short answers about objects, relations, attributes and counts (exact match)
# ---------------------------------------------------------------------------------------------------------------------

GQA_CATEGORIES = ("object", "relation", "position", "color", "count", "digit")


def _gqa_item(c: Canvas, category: str) -> tuple[np.ndarray, tuple[str, str]]:
    if category in ("object", "relation"):
        a, b = c.pick(OBJECTS, 2)
        image = c.side_by_side(c.photo(a, render.CELL), c.photo(b, render.CELL))
        if category == "object":
            side = c.pick(["left", "right"])
            return image, (f"What is the object on the {side}?", a if side == "left" else b)
        if c.rng.random() < 0.5:
            return image, (f"Is the {a} to the left or to the right of the {b}?", "left")
        return image, (f"Is the {b} to the left or to the right of the {a}?", "right")
    if category == "position":
        objects = c.pick(OBJECTS, 4)
        target = int(c.rng.integers(4))
        image = render.grid([c.photo(o, render.CELL) for o in objects], 2, 2)
        return image, (f"What is in the {POSITIONS[target]} of the image?", objects[target])
    if category == "color":
        color = c.pick(COLOR_NAMES)
        return c.digit(int(c.rng.integers(10)), color=color), ("What color is the digit?", color)
    if category == "count":
        k = int(c.rng.integers(1, 5))
        return c.digit_grid(k, color=c.pick(COLOR_NAMES)), ("How many digits are there?", str(k))
    if category == "digit":
        d = int(c.rng.integers(10))
        return c.digit(d, color=c.pick(COLOR_NAMES)), ("Which number is this?", str(d))
    raise ValueError(category)


def build_gqa(c: Canvas, n: int) -> list[Item]:
    items = []
    for i in range(n):
        category = _cycle(GQA_CATEGORIES, i)
        png, (question, answer) = c.unique(lambda: _gqa_item(c, category))
        items.append(Item(png, (Question(question, answer, category),)))
    return items


BUILDERS: dict[str, Callable[[Canvas, int], list[Item]]] = {
    "mini_mme": build_mme,
    "mini_pope": build_pope,
    "mini_mmbench": build_mmbench,
    "mini_seed": build_seed,
    "mini_sqa": build_sqa,
    "mini_textvqa": build_textvqa,
    "mini_gqa": build_gqa,
}
