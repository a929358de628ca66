"""Mini-suite metric math on small examples worked out by hand (mmmamba_bench.eval.metrics)."""

from __future__ import annotations

import pytest

from mmmamba_bench.eval.metrics import (
    CircularRecord,
    MMERecord,
    PopeRecord,
    binary_stats,
    circular_accuracy,
    exact_match,
    mean,
    mme_scores,
    mme_total,
    normalize_short_answer,
    normalize_vqa_answer,
    parse_choice,
    parse_pope_answer,
    parse_yes_no,
    pope_metrics,
    vqa_soft_accuracy,
)

# ---------------------------------------------------------------------------------------------------------------------
# MME: acc + acc+ per category, summed
# ---------------------------------------------------------------------------------------------------------------------


def _pairs(category: str, outcomes: dict[str, tuple[bool, bool]]) -> list[MMERecord]:
    return [MMERecord(category, image, ok) for image, pair in outcomes.items() for ok in pair]


def test_mme_score_hand_table():
    # count: 3 images, 6 questions, 3 right -> acc = 3/6 = 50 (a per-image denominator would give 100);
    #        only i1 has both right -> acc+ = 1/3 = 33.33 -> 83.33
    # color: 2 images, both pairs right -> 100 + 100 = 200
    # OCR:   4 images, 5 of 8 right -> 62.5; i1 and i2 both right -> acc+ = 50 -> 112.5
    records = (
        _pairs("count", {"i1": (True, True), "i2": (True, False), "i3": (False, False)})
        + _pairs("color", {"j1": (True, True), "j2": (True, True)})
        + _pairs("OCR", {"k1": (True, True), "k2": (True, True), "k3": (False, True), "k4": (False, False)})
    )
    scores = mme_scores(records)
    assert scores == pytest.approx({"count": 50 + 100 / 3, "color": 200.0, "OCR": 112.5})
    assert mme_total(records) == pytest.approx(50 + 100 / 3 + 200 + 112.5)


def test_mme_same_image_id_in_two_categories_is_two_images():
    records = _pairs("count", {"x": (True, True)}) + _pairs("color", {"x": (False, False)})
    assert mme_scores(records) == {"color": 0.0, "count": 200.0}


@pytest.mark.parametrize("n_questions", [1, 3])
def test_mme_rejects_images_without_a_pair(n_questions):
    records = _pairs("count", {"i1": (True, True)}) + [MMERecord("count", "i2", True)] * n_questions
    with pytest.raises(ValueError, match="exactly 2"):
        mme_scores(records)


def test_mme_empty_is_an_error():
    with pytest.raises(ValueError):
        mme_total([])


# ---------------------------------------------------------------------------------------------------------------------
# POPE: yes-positive F1 per split, mean of the three; pooled accuracy and yes ratio
# ---------------------------------------------------------------------------------------------------------------------


def _split(name: str, truths: str, preds: list[str | None]) -> list[PopeRecord]:
    return [PopeRecord(name, {"y": "yes", "n": "no"}[t], p) for t, p in zip(truths, preds)]


def test_pope_hand_example():
    records = (
        # random: tp=1 fn=1 fp=1 tn=1 -> P=.5 R=.5 F1=.5, acc .5
        _split("random", "yynn", ["yes", "no", "yes", "no"])
        # popular: tp=2 fp=1 tn=1 -> P=2/3 R=1 F1=.8, acc .75
        + _split("popular", "yynn", ["yes", "yes", "yes", "no"])
        # adversarial: tp=1, a truth-yes answered "maybe" (None), tn=2 -> P=1, R=1/2 (the None is a miss), F1=2/3
        + _split("adversarial", "yynn", ["yes", None, "no", "no"])
    )
    m = pope_metrics(records)
    assert m["f1_random"] == pytest.approx(0.5)
    assert m["f1_popular"] == pytest.approx(0.8)
    assert m["f1_adversarial"] == pytest.approx(2 / 3)
    assert m["f1_mean"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert m["accuracy_random"] == pytest.approx(0.5)
    assert m["accuracy_adversarial"] == pytest.approx(0.75)
    assert m["accuracy"] == pytest.approx(8 / 12)  # 2 + 3 + 3 right of 12
    assert m["yes_ratio"] == pytest.approx(6 / 12)  # answers that were "yes" (not truths that were yes)


def test_pope_f1_mean_is_not_pooled_f1():
    # unequal splits: pooled F1 would weigh the big split more
    records = _split("random", "yn", ["yes", "no"]) + _split("popular", "yn", ["no", "no"]) + _split(
        "adversarial", "yyyynnnn", ["yes"] * 4 + ["no"] * 4)
    m = pope_metrics(records)
    assert m["f1_mean"] == pytest.approx((1.0 + 0.0 + 1.0) / 3)


def test_binary_stats_counts_and_yes_ratio():
    st = binary_stats(_split("random", "yyynnn", ["yes", "yes", "no", "yes", None, "no"]))
    assert (st.tp, st.fn, st.fp, st.tn, st.other_yes, st.other_no) == (2, 1, 1, 1, 0, 1)
    assert st.precision == pytest.approx(2 / 3)
    assert st.recall == pytest.approx(2 / 3)
    assert st.accuracy == pytest.approx(3 / 6)
    assert st.yes_ratio == pytest.approx(3 / 6)


def test_pope_all_no_gives_zero_f1_not_an_error():
    m = pope_metrics(_split("random", "yn", ["no", "no"]) + _split("popular", "yn", ["no", "no"])
                     + _split("adversarial", "yn", ["no", "no"]))
    assert m["f1_mean"] == 0.0 and m["accuracy"] == 0.5 and m["yes_ratio"] == 0.0


def test_pope_missing_split_is_an_error():
    with pytest.raises(ValueError, match="adversarial"):
        pope_metrics(_split("random", "yn", ["yes", "no"]) + _split("popular", "yn", ["yes", "no"]))


def test_pope_rejects_bad_labels():
    with pytest.raises(ValueError):
        binary_stats([PopeRecord("random", "Yes", "yes")])
    with pytest.raises(ValueError):
        binary_stats([PopeRecord("random", "yes", "maybe")])


# ---------------------------------------------------------------------------------------------------------------------
# MMBench circular accuracy
# ---------------------------------------------------------------------------------------------------------------------


def test_circular_accuracy_one_failed_rotation_fails_the_question():
    records = [CircularRecord("q1", r, True) for r in range(4)]
    records += [CircularRecord("q2", r, r != 2) for r in range(4)]  # rotation 2 wrong
    records += [CircularRecord("q3", r, True) for r in range(4)]
    assert circular_accuracy(records) == pytest.approx(2 / 3)  # per-row accuracy would be 11/12
    assert mean(float(r.correct) for r in records) == pytest.approx(11 / 12)


def test_circular_accuracy_rejects_duplicate_rotation_and_empty():
    with pytest.raises(ValueError, match="twice"):
        circular_accuracy([CircularRecord("q1", 0, True), CircularRecord("q1", 0, True)])
    with pytest.raises(ValueError):
        circular_accuracy([])


# ---------------------------------------------------------------------------------------------------------------------
# VQA soft accuracy and normalisation
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k, expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_vqa_soft_accuracy_leave_one_out(k, expected):
    # k matching references of 10: k subsets drop a match (k-1 left), 10-k drop another answer (k left)
    refs = ["7"] * k + ["1"] * (10 - k)
    assert vqa_soft_accuracy("7", refs) == pytest.approx(expected)


def test_vqa_soft_accuracy_normalises_references_and_prediction():
    refs = ["seven", "7.", "the 7", "7", "number 7", "1", "1", "1", "1", "1"]  # four normalise to "7"
    assert vqa_soft_accuracy("Seven", refs) == pytest.approx(1.0)
    assert vqa_soft_accuracy("number 7", refs) == pytest.approx(0.3)
    assert vqa_soft_accuracy("1", refs) == pytest.approx(1.0)
    assert vqa_soft_accuracy("", refs) == 0.0


@pytest.mark.parametrize("raw, normalised", [
    ("Seven", "7"), ("The Cat.", "cat"), ("a dog", "dog"), ("two  apples", "2 apples"), ("2.5", "2.5"),
    ("1,000", "1000"), ("yes!", "yes"), ("hello-world", "hello world"), ("hello - world", "hello world"),
    ("dont", "don't"), ("none", "0"), ("ten", "10"), ("eleven", "eleven"), ("  Left\n", "left"),
])
def test_normalize_vqa_answer(raw, normalised):
    assert normalize_vqa_answer(raw) == normalised


def test_normalize_vqa_answer_agrees_with_lmms_eval():
    vqa_eval = pytest.importorskip("lmms_eval.tasks._task_utils.vqa_eval_metric",
                                   reason="lmms_eval is not installed (cross-check only)")
    reference = vqa_eval.EvalAIAnswerProcessor()
    for raw in ["Seven", "The Cat.", "a dog", "2.5", "1,000 people", "yes!", "hello-world", "hello - world",
                "dont", "none", "(B) red", "3 o clock", "left side.", "two apples", "Number 7", "x = 3"]:
        assert normalize_vqa_answer(raw) == reference(raw), raw


def test_vqa_soft_accuracy_needs_references():
    with pytest.raises(ValueError):
        vqa_soft_accuracy("7", [])


# ---------------------------------------------------------------------------------------------------------------------
# Exact match and answer parsing
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pred, target, expected", [
    ("The cat.", "the cat", 1.0), (" Left ", "left", 1.0), ("cats", "cat", 0.0), ("3", "three", 0.0),
    ("blue", "Blue", 1.0), ("", "cat", 0.0), ("top  left", "top left", 1.0),
])
def test_exact_match(pred, target, expected):
    assert exact_match(pred, target) == expected


def test_normalize_short_answer():
    assert normalize_short_answer("  It's a Cat! ") == "it s a cat"


@pytest.mark.parametrize("text, expected", [
    ("Yes", "yes"), ("yes.", "yes"), ("NO", "no"), ("No, there is not.", "no"), ("Yes, there is a cat", "yes"),
    ("The answer is yes", None), ("", None), ("yesterday", None), ("  no\n", "no"),
])
def test_parse_yes_no(text, expected):
    assert parse_yes_no(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("No, there is no cat.", "no"), ("Yes, there is a cat", "yes"), ("There is not a cat", "no"),
    ("I see it. No", "yes"), ("yes", "yes"), ("no", "no"), ("No.", "no"), ("maybe", "yes"),
])
def test_parse_pope_answer_follows_popes_rule(text, expected):
    assert parse_pope_answer(text) == expected


@pytest.mark.parametrize("text, n, expected", [
    ("B", 4, "B"), ("B.", 4, "B"), ("(C)", 4, "C"), ("D. cat", 4, "D"), ("A", 2, "A"), ("C", 2, None),
    ("E", 4, None), ("Answer: A", 4, "A"), ("The answer is B.", 4, "B"), ("cat", 4, None), ("b", 4, None),
    ("", 4, None), ("  A\n", 4, "A"), ("AB", 4, None),
])
def test_parse_choice(text, n, expected):
    assert parse_choice(text, n) == expected
