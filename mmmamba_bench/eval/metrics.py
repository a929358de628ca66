"""Metric math of the mini-suite (and answer parsing shared with the real-task hooks), in plain Python.

No lmms-eval import: the task hooks in ``tasks/mini/utils.py`` turn model outputs into the small records below and
call these functions, so every number can be unit-tested on hand-made examples.

Scales: ``mme_scores`` / ``mme_total`` are in MME points (0-200 per category, like MME); everything else is 0-1.

References
- MME (Fu et al., 2023): per category, score = acc + acc+, acc = per-question accuracy (%), acc+ = % of images with
  both of their two questions right; the perception score is the sum over categories.
- POPE (Li et al., 2023): "yes" is the positive class; F1 per negative-sampling split (random / popular /
  adversarial); papers report the mean of the three F1s. Answer rule of POPE's evaluate.py: first sentence, "no" /
  "not" as a word means no, anything else yes.
- MMBench (Liu et al., 2023): circular evaluation, a question counts as right only if every rotation of its options
  was answered right.
- VQA accuracy (Antol et al., 2015; the VQA v2 evaluation script): answers normalised (lower case, punctuation,
  number words to digits, articles and contractions), acc = min(#humans that gave the answer / 3, 1), averaged over
  the 10 leave-one-out subsets of the 10 reference answers.
"""

from __future__ import annotations

import re
import string
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Sequence

YES, NO = "yes", "no"
POPE_SPLITS = ("random", "popular", "adversarial")

# ---------------------------------------------------------------------------------------------------------------------
# Answer parsing
# ---------------------------------------------------------------------------------------------------------------------

_EDGE_PUNCT = string.punctuation + " \t\n"


def parse_yes_no(text: str) -> str | None:
    """Strict yes/no parser of the mini-suite: the first word of the answer, case- and punctuation-insensitive.

    "Yes", "yes.", " NO, it is not" -> "yes" / "yes" / "no"; "maybe", "" or "The answer is yes" -> None (counted as
    neither yes nor no, i.e. wrong for accuracy and not a positive for F1).
    """
    words = text.strip().split()
    if not words:
        return None
    first = words[0].strip(_EDGE_PUNCT).lower()
    return first if first in (YES, NO) else None


def parse_pope_answer(text: str) -> str:
    """POPE's own evaluate.py rule (also LLaVA's): keep the first sentence, drop commas; "no"/"not" -> "no", else "yes"."""
    first_sentence = text.split(".")[0] if "." in text else text
    words = first_sentence.replace(",", "").split(" ")
    return NO if ("No" in words or "not" in words or "no" in words) else YES


_LETTER_PATTERNS = (
    re.compile(r"^\(?([A-Z])\)?(?:$|[.:,)\s])"),  # "B", "B.", "(B)", "B) cat", "B: cat"
    re.compile(r"^(?:the\s+)?(?:answer|option)\s*(?:is)?\s*:?\s*\(?([A-Z])\)?(?:$|[.:,)\s])", re.IGNORECASE),
)


def parse_choice(text: str, n_options: int) -> str | None:
    """The option letter an answer starts with ("B", "B.", "(B)", "B. cat", "Answer: B"), or None.

    Letters beyond the ``n_options`` offered are rejected. Case matters for a bare letter ("a" is not "A").
    """
    text = text.strip()
    valid = string.ascii_uppercase[:n_options]
    for pattern in _LETTER_PATTERNS:
        m = pattern.match(text)
        if m and m.group(1) in valid:
            return m.group(1)
    return None


def normalize_short_answer(text: str) -> str:
    """Exact-match normalisation: lower case, punctuation removed, whitespace collapsed ("The  Cat." -> "the cat")."""
    text = text.lower().translate(str.maketrans({c: " " for c in string.punctuation}))
    return " ".join(text.split())


# VQA answer normalisation (the rules of the VQA v2 evaluation script).
_VQA_PUNCT = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
_VQA_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")  # a period not followed by a digit ("2.5" keeps its period)
_VQA_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")  # thousands separators
_VQA_NUMBERS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
_VQA_ARTICLES = frozenset({"a", "an", "the"})
_VQA_CONTRACTIONS = {
    "arent": "aren't", "cant": "can't", "couldnt": "couldn't", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hasnt": "hasn't", "havent": "haven't", "isnt": "isn't", "its": "it's", "im": "i'm",
    "ive": "i've", "shouldnt": "shouldn't", "thats": "that's", "wasnt": "wasn't", "werent": "weren't",
    "wont": "won't", "wouldnt": "wouldn't", "youre": "you're",
}


def normalize_vqa_answer(text: str) -> str:
    """The standard VQA answer normalisation.

    Lower case; each punctuation mark is deleted where it touches a space (or the answer has a thousands comma) and
    replaced by a space elsewhere; periods are dropped unless they are decimal points; number words "zero".."ten"
    become digits; the articles a/an/the are dropped; a few contractions are restored ("dont" -> "don't").
    """
    text = text.lower().replace("\n", " ").replace("\t", " ").strip()
    has_number_comma = _VQA_COMMA_STRIP.search(text) is not None
    out = text
    for p in _VQA_PUNCT:
        if (p + " " in text or " " + p in text) or has_number_comma:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    out = _VQA_PERIOD_STRIP.sub("", out)
    words = []
    for word in out.split():
        word = _VQA_NUMBERS.get(word, word)
        if word in _VQA_ARTICLES:
            continue
        words.append(_VQA_CONTRACTIONS.get(word, word))
    return " ".join(words)


# ---------------------------------------------------------------------------------------------------------------------
# Per-answer scores
# ---------------------------------------------------------------------------------------------------------------------


def vqa_soft_accuracy(prediction: str, references: Sequence[str]) -> float:
    """VQA accuracy of one answer: mean over the leave-one-out subsets of min(#matching references / 3, 1).

    With 10 references of which k match: (k * min((k-1)/3, 1) + (10-k) * min(k/3, 1)) / 10,
    e.g. k=1 -> 0.3, k=2 -> 0.6, k=3 -> 0.9, k>=4 -> 1.0.
    """
    if not references:
        raise ValueError("vqa_soft_accuracy needs at least one reference answer")
    pred = normalize_vqa_answer(prediction)
    refs = [normalize_vqa_answer(r) for r in references]
    if len(refs) == 1:
        return float(pred == refs[0])
    scores = []
    for i in range(len(refs)):
        matches = sum(1 for j, ref in enumerate(refs) if j != i and ref == pred)
        scores.append(min(matches / 3.0, 1.0))
    return sum(scores) / len(scores)


def exact_match(prediction: str, target: str) -> float:
    """1.0 if the answers agree after :func:`normalize_short_answer`, else 0.0."""
    return float(normalize_short_answer(prediction) == normalize_short_answer(target))


# ---------------------------------------------------------------------------------------------------------------------
# Aggregates
# ---------------------------------------------------------------------------------------------------------------------


def mean(values: Iterable[float]) -> float:
    """Arithmetic mean; an empty input is an error (never a silent 0)."""
    values = list(values)
    if not values:
        raise ValueError("mean of no values: the task produced no results")
    return float(sum(values)) / len(values)


@dataclass(frozen=True)
class MMERecord:
    """One answered MME question: its category, the image it belongs to (two questions per image) and correctness."""

    category: str
    image_id: str
    correct: bool


def mme_scores(records: Iterable[MMERecord]) -> dict[str, float]:
    """Per-category MME score = acc + acc+ (each in %), so 0-200 per category.

    Every image must have exactly two questions (MME's pairs); anything else is an error rather than a skewed score.
    """
    by_image: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        by_image[r.category][r.image_id].append(bool(r.correct))
    if not by_image:
        raise ValueError("mme_scores: no results")
    scores = {}
    for category, images in sorted(by_image.items()):
        bad = {img: len(v) for img, v in images.items() if len(v) != 2}
        if bad:
            raise ValueError(f"mme_scores: category {category!r}: images without exactly 2 questions: {bad}")
        answers = [c for pair in images.values() for c in pair]
        acc = 100.0 * sum(answers) / len(answers)
        acc_plus = 100.0 * sum(all(pair) for pair in images.values()) / len(images)
        scores[category] = acc + acc_plus
    return scores


def mme_total(records: Iterable[MMERecord]) -> float:
    """Sum of the per-category scores (MME's perception score when the categories are the perception ones)."""
    return sum(mme_scores(records).values())


@dataclass(frozen=True)
class PopeRecord:
    """One answered POPE question: negative-sampling split, ground truth and parsed prediction (None = unparseable)."""

    split: str
    truth: str  # "yes" | "no"
    prediction: str | None  # "yes" | "no" | None


@dataclass(frozen=True)
class BinaryStats:
    """Yes-positive confusion counts of a set of POPE answers, and the scores derived from them.

    Answers that are neither yes nor no are wrong for accuracy, never a predicted positive, and a miss for recall
    when the truth was yes (``other_yes``).
    """

    tp: int
    fp: int
    tn: int
    fn: int
    other_yes: int  # truth "yes", answer unparseable
    other_no: int  # truth "no", answer unparseable

    @property
    def total(self) -> int:
        return self.tp + self.fp + self.tn + self.fn + self.other_yes + self.other_no

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        truth_yes = self.tp + self.fn + self.other_yes
        return self.tp / truth_yes if truth_yes else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    @property
    def accuracy(self) -> float:
        return (self.tp + self.tn) / self.total if self.total else 0.0

    @property
    def yes_ratio(self) -> float:
        """Fraction of answers that were "yes" (POPE's bias indicator; 0.5 for an unbiased model on balanced data)."""
        return (self.tp + self.fp) / self.total if self.total else 0.0


def binary_stats(records: Iterable[PopeRecord]) -> BinaryStats:
    """Count yes-positive outcomes; truths must be "yes"/"no", predictions "yes"/"no"/None."""
    tp = fp = tn = fn = other_yes = other_no = 0
    for r in records:
        if r.truth not in (YES, NO):
            raise ValueError(f"POPE ground truth must be 'yes' or 'no', got {r.truth!r}")
        if r.prediction == YES:
            tp += r.truth == YES
            fp += r.truth == NO
        elif r.prediction == NO:
            fn += r.truth == YES
            tn += r.truth == NO
        elif r.prediction is None:
            other_yes += r.truth == YES
            other_no += r.truth == NO
        else:
            raise ValueError(f"POPE prediction must be 'yes', 'no' or None, got {r.prediction!r}")
    return BinaryStats(tp=tp, fp=fp, tn=tn, fn=fn, other_yes=other_yes, other_no=other_no)


def pope_metrics(records: Iterable[PopeRecord], splits: Sequence[str] = POPE_SPLITS) -> dict[str, float]:
    """POPE scores: ``f1_mean`` (mean over the splits of yes-positive F1), pooled ``accuracy`` and ``yes_ratio``,
    and ``f1_<split>`` / ``accuracy_<split>`` per split. Every split must have answers (no silent zero)."""
    by_split: dict[str, list[PopeRecord]] = defaultdict(list)
    for r in records:
        by_split[r.split].append(r)
    unknown = sorted(set(by_split) - set(splits))
    missing = [s for s in splits if not by_split.get(s)]
    if unknown or missing:
        raise ValueError(f"pope_metrics: splits without answers {missing}, unknown splits {unknown}")
    out: dict[str, float] = {}
    for s in splits:
        st = binary_stats(by_split[s])
        out[f"f1_{s}"] = st.f1
        out[f"accuracy_{s}"] = st.accuracy
    pooled = binary_stats(r for s in splits for r in by_split[s])
    out["f1_mean"] = sum(out[f"f1_{s}"] for s in splits) / len(splits)
    out["accuracy"] = pooled.accuracy
    out["yes_ratio"] = pooled.yes_ratio
    return out


@dataclass(frozen=True)
class CircularRecord:
    """One rotation of a circularly evaluated multiple-choice question."""

    question_id: str
    rotation: int
    correct: bool


def circular_accuracy(records: Iterable[CircularRecord]) -> float:
    """Fraction of questions answered right in every rotation of their options (MMBench's CircularEval)."""
    by_question: dict[str, dict[int, bool]] = defaultdict(dict)
    for r in records:
        if r.rotation in by_question[r.question_id]:
            raise ValueError(f"circular_accuracy: question {r.question_id!r} rotation {r.rotation} seen twice")
        by_question[r.question_id][r.rotation] = bool(r.correct)
    if not by_question:
        raise ValueError("circular_accuracy: no results")
    return sum(all(rot.values()) for rot in by_question.values()) / len(by_question)
