"""The lmms-eval adapter's request handling: generation (batched, stop strings) and multiple choice."""

import pytest
import torch
from PIL import Image

pytest.importorskip("lmms_eval")
from lmms_eval.api.instance import GenerationResult, Instance  # noqa: E402

from mmmamba_bench.checkpoint import save_model  # noqa: E402
from mmmamba_bench.config import make_config  # noqa: E402
from mmmamba_bench.eval.adapter import MMMambaLMM, cut_at_stop, parse_gen_kwargs  # noqa: E402
from mmmamba_bench.model.stack import MMMambaChatModel  # noqa: E402
from mmmamba_bench.tokenizer import train_word_tokenizer  # noqa: E402

WORDS = "is there a cat dog in the image yes no what digit answer with letter A B C D one two three".split()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("adapter") / "ckpt"
    tok_dir = d.parent / "tok"
    vocab = train_word_tokenizer([" ".join(WORDS), "? . user assistant"], tok_dir / "tokenizer.json")
    cfg = make_config(hidden=32, heads=2, kv_heads=1, emb_layers=1, llm_layers=2, intermediate=64, vocab=vocab,
                      image_size=32, patch_size=8, block_types=["mha", "mamba2", "mha"], rope_theta=10000.0)
    torch.manual_seed(0)
    model = MMMambaChatModel(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    save_model(model, d)
    (d / "tokenizer.json").write_bytes((tok_dir / "tokenizer.json").read_bytes())
    return d


DOCS = {"t": {"test": [{"img": Image.new("RGB", (40, 30), (i * 40, 10, 200))} for i in range(5)]}}


def make_lmm(ckpt, batch_size, max_tiles=1, docs=DOCS):
    lmm = MMMambaLMM(pretrained=str(ckpt), label="tiny", device="cpu", dtype="float32", batch_size=batch_size,
                     max_tiles=max_tiles, max_new_tokens=6)
    lmm.task_dict = docs
    return lmm


def gen_request(i, ctx, gen_kwargs):
    return Instance("generate_until", (ctx, gen_kwargs, lambda doc: [doc["img"]], i, "t", "test"), idx=0,
                    metadata={"task": "t", "doc_id": i, "repeats": 1})


def test_parse_gen_kwargs_and_stop():
    s = parse_gen_kwargs({"until": "\n", "max_new_tokens": 3, "temperature": 0, "do_sample": False}, 10)
    assert s.until == ("\n",) and s.max_new_tokens == 3 and not s.do_sample
    assert parse_gen_kwargs({}, 10).max_new_tokens == 10
    with pytest.raises(ValueError, match="num_beams=4"):
        parse_gen_kwargs({"num_beams": 4}, 10)
    assert cut_at_stop("yes. no", (".", "no")) == "yes"
    assert cut_at_stop("yes", ()) == "yes"


def test_generation_matches_model_generate_in_order_and_batched(ckpt):
    questions = ["is there a cat ?", "what digit ?", "is there a dog in the image ?", "answer with letter", "yes"]
    reqs = [gen_request(i, q, {"max_new_tokens": 5}) for i, q in enumerate(questions)]
    one = make_lmm(ckpt, 1).generate_until(reqs)
    four = make_lmm(ckpt, 4).generate_until(reqs)
    assert one == four  # batching with left padding changes nothing
    lmm = make_lmm(ckpt, 1)
    for i, q in enumerate(questions):  # each answer is the model's own greedy continuation
        enc = lmm.processor.encode_prompt(q, DOCS["t"]["test"][i]["img"])
        out = lmm.model.generate(input_ids=torch.tensor([enc.input_ids]), pixel_values=enc.pixel_values,
                                 max_new_tokens=5, eos_token_id=lmm.processor.tokenizer.eos_token_id)
        assert one[i] == lmm.processor.decode(out[0, len(enc.input_ids):])
    assert any(one)  # the random model says something


def test_stop_strings_cut_the_answer(ckpt):
    lmm = make_lmm(ckpt, 2)
    free = lmm.generate_until([gen_request(0, "what digit ?", {"max_new_tokens": 12})])[0]
    assert len(free.strip()) >= 4, free  # the fixed random checkpoint says enough to cut (never skipped)
    mid = len(free) // 2
    stop = free[mid:mid + 2]  # may span two tokens
    cut = lmm.generate_until([gen_request(0, "what digit ?", {"max_new_tokens": 12, "until": [stop]})])[0]
    assert cut == free[: free.find(stop)] and len(cut) < len(free)
    # a stop string never produced leaves the answer whole
    assert lmm.generate_until([gen_request(0, "what digit ?", {"max_new_tokens": 12, "until": ["\x00zz"]})])[0] == free


def test_loglikelihood_is_nll_and_picks_the_likeliest_choice(ckpt):
    lmm = make_lmm(ckpt, 1)
    choices = ["A", "B", "C", "D"]
    reqs = [Instance("loglikelihood", ("answer with letter", c, lambda doc: [doc["img"]], 0, "t", "test"), idx=j,
                     metadata={"task": "t", "doc_id": 0, "repeats": 1}) for j, c in enumerate(choices)]
    res = lmm.loglikelihood(reqs)
    assert all(isinstance(r, GenerationResult) for r in res)
    nlls = [r.text[0] for r in res]
    enc = lmm.processor.encode_prompt("answer with letter", DOCS["t"]["test"][0]["img"])
    with torch.no_grad():
        logits = lmm.model(torch.tensor([enc.input_ids]), pixel_values=enc.pixel_values).logits[0, -1]
    logp = torch.log_softmax(logits.double(), -1)
    ids = [lmm.processor.tokenizer.encode(c)[0] for c in choices]
    assert nlls == pytest.approx([-float(logp[i]) for i in ids], rel=1e-5)
    # lmms-eval 0.7.3 scores multiple choice by argmin: the smallest NLL is the most likely letter
    assert int(torch.tensor(nlls).argmin()) == int(torch.stack([logp[i] for i in ids]).argmax())
    assert [r.text[1] for r in res] == [int(logits.argmax()) == i for i in ids]


def test_entry_point_finds_the_adapter():
    from lmms_eval.models import get_model

    assert get_model("mmmamba") is MMMambaLMM


def test_lmms_eval_start_up_does_not_import_the_package():
    """lmms-eval loads every model entry point at start-up: ours must not import mmmamba_bench (whose import
    registers `internvl_chat` with transformers) in a run of another model."""
    import subprocess
    import sys

    code = ("import sys; from lmms_eval.models import MODEL_REGISTRY_V2 as r; "
            "print('mmmamba' in r.list_model_names(), r.get_manifest('mmmamba').simple_class_path, "
            "'mmmamba_bench' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "mmmamba_bench.eval.adapter.MMMambaLMM", "False"]


# ---------------------------------------------------------------------------------------------------------------------
# Several images in one prompt (MMMU): tile budget shared, one labelled image block per image
# ---------------------------------------------------------------------------------------------------------------------

WIDE = Image.new("RGB", (120, 30), (220, 40, 40))  # aspect 4: a 4x1 grid with 6 tiles to spend, 3x1 with 3
SQUARE = Image.new("RGB", (40, 40), (30, 200, 60))  # 1x1 with any budget
MULTI = {"mmmu": {"validation": [{"images": [WIDE, SQUARE]}, {"images": [SQUARE]},
                                 {"images": [SQUARE, WIDE, SQUARE]}, {"images": [WIDE]}]}}


def multi_request(i, ctx="which one is red ?", gen_kwargs=None):
    return Instance("generate_until", (ctx, gen_kwargs or {"max_new_tokens": 4}, lambda doc: doc["images"], i, "mmmu",
                                       "validation"), idx=0, metadata={"task": "mmmu", "doc_id": i, "repeats": 1})


def test_chat_prompt_labels_each_image_block():
    from mmmamba_bench.preprocessing import MINI_TEMPLATE, chat_prompt, tiles_per_image

    ctx2, ctx6 = "<IMG_CONTEXT>" * 2, "<IMG_CONTEXT>" * 6
    assert chat_prompt("Which is red?", [3, 1], tokens_per_tile=2, template=MINI_TEMPLATE) == (
        "<|im_start|>user\n"
        f"Image-1: <img>{ctx6}</img>\nImage-2: <img>{ctx2}</img>\nWhich is red?"
        "<|im_end|>\n<|im_start|>assistant\n")
    # one image: no label, as before (an int or a one-element list)
    one = f"<|im_start|>user\n<img>{ctx2}</img>\nq<|im_end|>\n<|im_start|>assistant\n"
    assert chat_prompt("q", 1, tokens_per_tile=2, template=MINI_TEMPLATE) == one
    assert chat_prompt("q", [1], tokens_per_tile=2, template=MINI_TEMPLATE) == one
    with pytest.raises(ValueError, match="2 images cannot also hold '<image>' placeholders"):
        chat_prompt("<image> q", [1, 1], tokens_per_tile=2)
    assert [tiles_per_image(6, n) for n in (1, 2, 3, 4, 7)] == [6, 3, 2, 1, 1]


def test_two_images_share_the_tile_budget_and_line_up_with_their_blocks(ckpt):
    from mmmamba_bench.preprocessing import load_image

    lmm = make_lmm(ckpt, 1, max_tiles=6)
    proc, cfg = lmm.processor, lmm.model.config
    enc = proc.encode_prompt("which one is red ?", [WIDE, SQUARE])
    size, per_tile = cfg.embedding_config.image_size, cfg.embedding_config.tokens_per_tile
    assert load_image(WIDE, size, 6).shape[0] == 5  # alone: 4x1 grid + thumbnail
    assert enc.tiles_per_image == (4, 1)  # together: 3 tiles each to spend -> 3x1 + thumbnail, and 1x1
    assert enc.pixel_values.shape[0] == 5
    assert torch.equal(enc.pixel_values[:4], load_image(WIDE, size, 3))
    assert torch.equal(enc.pixel_values[4:], load_image(SQUARE, size, 3))
    # one <img>...</img> block per image, in order, each with its own image's tokens, led by its label
    tok = proc.tokenizer
    start, end, ctx = (tok.token_to_id(t) for t in ("<img>", "</img>", "<IMG_CONTEXT>"))
    ids = enc.input_ids
    starts = [i for i, t in enumerate(ids) if t == start]
    ends = [i for i, t in enumerate(ids) if t == end]
    assert len(starts) == len(ends) == 2
    assert [sum(t == ctx for t in ids[a:b]) for a, b in zip(starts, ends)] == [4 * per_tile, 1 * per_tile]
    assert sum(t == ctx for t in ids) == 5 * per_tile  # no image token outside the blocks
    label1, label2 = tok.encode("Image-1: "), tok.encode("\nImage-2: ")
    assert ids[starts[0] - len(label1):starts[0]] == label1 and ids[ends[0] + 1:starts[1]] == label2


def test_the_model_answers_a_two_image_request(ckpt):
    reqs = [multi_request(i) for i in range(4)]
    one = make_lmm(ckpt, 1, max_tiles=6, docs=MULTI).generate_until(reqs)
    mixed = make_lmm(ckpt, 4, max_tiles=6, docs=MULTI).generate_until(reqs)  # 2, 1, 3, 1 images in one batch
    assert one == mixed
    lmm = make_lmm(ckpt, 1, max_tiles=6, docs=MULTI)
    for i, doc in enumerate(MULTI["mmmu"]["validation"]):  # each answer is the model's own on its images' tiles
        enc = lmm.processor.encode_prompt("which one is red ?", doc["images"])
        assert sum(enc.tiles_per_image) == enc.pixel_values.shape[0]
        out = lmm.model.generate(input_ids=torch.tensor([enc.input_ids]), pixel_values=enc.pixel_values,
                                 max_new_tokens=4, eos_token_id=lmm.processor.tokenizer.eos_token_id)
        assert one[i] == lmm.processor.decode(out[0, len(enc.input_ids):])
    ll = Instance("loglikelihood", ("which one is red ?", "A", lambda doc: doc["images"], 0, "mmmu", "validation"),
                  idx=0, metadata={"task": "mmmu", "doc_id": 0, "repeats": 1})
    (res,) = lmm.loglikelihood([ll])
    assert res.text[0] > 0


def _truncated_png():
    """A PNG cut in the middle of its pixel data: opens (the header is whole), fails when decoded."""
    import io

    import numpy as np

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    return Image.open(io.BytesIO(buf.getvalue()[: len(buf.getvalue()) // 2]))


def test_a_corrupt_image_names_task_and_document_before_any_inference(ckpt, monkeypatch):
    from mmmamba_bench.eval.adapter import BadRequestInput

    good = DOCS["t"]["test"][0]["img"]
    docs = {"t": {"test": [{"img": good}, {"img": good}, {"img": _truncated_png()}, {"img": good}]}}
    lmm = make_lmm(ckpt, 1, docs=docs)
    ran = []
    monkeypatch.setattr(lmm, "_generate_batch", lambda encs, s: ran.append(len(encs)) or [""] * len(encs))
    with pytest.raises(BadRequestInput, match=r"task 't' doc 2 \(split 'test'\): cannot build the model input: "
                                              r"OSError: .*truncated"):
        lmm.generate_until([gen_request(i, "what digit ?", {"max_new_tokens": 2}) for i in range(4)])
    assert ran == []  # stopped before the first batch
    ll = [Instance("loglikelihood", ("answer with letter", "A", lambda doc: [doc["img"]], i, "t", "test"), idx=0,
                   metadata={"task": "t", "doc_id": i, "repeats": 1}) for i in range(4)]
    monkeypatch.setattr(lmm, "model", None)  # any inference would fail with another error
    with pytest.raises(BadRequestInput, match=r"task 't' doc 2 "):
        lmm.loglikelihood(ll)


def test_tiles_are_built_per_batch_not_held_for_the_whole_run(ckpt, monkeypatch):
    """A Table-1 run asks ~50,000 questions of up to 7 tiles (17 MB each in float32): the adapter measures every
    request first but builds a request's tiles only when its batch runs, and drops them after."""
    import weakref

    lmm = make_lmm(ckpt, 2)
    made = []
    tile = lmm.processor.pixel_values
    monkeypatch.setattr(lmm.processor, "pixel_values", lambda *a, **k: made.append(weakref.ref(out := tile(*a, **k)))
                        or out)
    alive = []
    generate_batch, forward = lmm._generate_batch, lmm.model.forward

    def watched_batch(encs, s):
        alive.append(sum(r() is not None for r in made))
        return generate_batch(encs, s)

    monkeypatch.setattr(lmm, "_generate_batch", watched_batch)
    reqs = [gen_request(i, "what digit ?", {"max_new_tokens": 2}) for i in range(5)]
    answers = lmm.generate_until(reqs)
    assert len(made) == 5 and alive == [2, 2, 1]  # one batch's tiles at a time
    assert answers == make_lmm(ckpt, 2).generate_until(reqs)
    made.clear()
    monkeypatch.setattr(lmm.model, "forward", lambda *a, **k: alive.append(sum(r() is not None for r in made))
                        or forward(*a, **k))
    alive.clear()
    ll = [Instance("loglikelihood", ("answer with letter", "A", lambda doc: [doc["img"]], i, "t", "test"), idx=0,
                   metadata={"task": "t", "doc_id": i, "repeats": 1}) for i in range(4)]
    lmm.loglikelihood(ll)
    assert alive == [1, 1, 1, 1]


def test_a_non_text_continuation_is_named(ckpt):
    from mmmamba_bench.eval.adapter import BadRequestInput

    lmm = make_lmm(ckpt, 1)
    req = Instance("loglikelihood", ("answer with letter", 1, lambda doc: [doc["img"]], 3, "t", "test"), idx=0,
                   metadata={"task": "t", "doc_id": 3, "repeats": 1})
    with pytest.raises(BadRequestInput, match="task 't' doc 3: the continuation 1 is of type int, not text"):
        lmm.loglikelihood([req])


def test_prompts_past_the_model_positions_are_counted_and_warned_once(ckpt, caplog):
    import logging

    from mmmamba_bench.eval.adapter import position_limit

    lmm = make_lmm(ckpt, 2)
    short, long_ = "yes", " ".join(WORDS)
    n_short = len(lmm.processor.encode_prompt(short, DOCS["t"]["test"][0]["img"]).input_ids)
    n_long = len(lmm.processor.encode_prompt(long_, DOCS["t"]["test"][0]["img"]).input_ids)
    assert position_limit(lmm.model.config) == 32768  # the tiny config's default: nothing is long
    for stack in (lmm.model.config.embedding_config, lmm.model.config.llm_config):
        stack.max_position_embeddings = n_short + 2  # a short prompt + 2 new tokens fits, not + 3
    reqs = [gen_request(0, short, {"max_new_tokens": 2}), gen_request(1, long_, {"max_new_tokens": 2}),
            gen_request(2, short, {"max_new_tokens": 3}), gen_request(3, long_, {"max_new_tokens": 1})]
    assert n_long + 1 > n_short + 2
    with caplog.at_level(logging.WARNING, logger="mmmamba_bench.eval.adapter"):
        lmm.generate_until(reqs)
        lmm.generate_until(reqs[:2])  # a second call: counted, not warned again
        ll = Instance("loglikelihood", (long_, "A", lambda doc: [doc["img"]], 4, "u", "test"), idx=0,
                      metadata={"task": "u", "doc_id": 4, "repeats": 1})
        lmm.task_dict = {"u": DOCS["t"]}
        lmm.loglikelihood([ll])
    warnings = [r.getMessage() for r in caplog.records if "positions" in r.getMessage()]
    assert len(warnings) == 1
    assert f"3 request(s) need more positions than the model's {n_short + 2}" in warnings[0]
    assert "t: 3" in warnings[0]
    assert lmm.input_report() == {"position_limit": n_short + 2, "over_position_limit": {"t": 4, "u": 1}}


def test_position_limit_follows_the_rope_rule(ckpt):
    from mmmamba_bench.eval.adapter import position_limit

    cfg = make_lmm(ckpt, 1).model.config
    cfg.embedding_config.max_position_embeddings, cfg.llm_config.max_position_embeddings = 100, 50
    assert position_limit(cfg) == 50
    cfg.llm_config.rope_scaling = {"type": "dynamic", "factor": 2.0}
    assert position_limit(cfg) == (50 if not cfg.applies_rope_scaling else 100)  # ignored by mmMamba: still bounded
    cfg.embedding_config.layers_block_type = ["mamba2"] * cfg.embedding_config.num_hidden_layers
    cfg.llm_config.layers_block_type = ["mamba2"] * cfg.llm_config.num_hidden_layers
    assert position_limit(cfg) is None  # no attention, no positions


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_logits_fail_the_run_naming_the_batch(ckpt, bad):
    from mmmamba_bench.eval.adapter import NonFiniteLogits

    lmm = make_lmm(ckpt, 2)
    reqs = [gen_request(i, "what digit ?", {"max_new_tokens": 3}) for i in range(3)]
    assert all(isinstance(t, str) for t in lmm.generate_until(reqs))  # finite: answers
    with torch.no_grad():
        lmm.model.language_model.output.weight[5, 0] = bad  # one vocabulary row: its logit is NaN / inf for every prompt
    with pytest.raises(NonFiniteLogits, match=r"NaN or infinite logits while answering the batch task 't' docs \[0, 1\]"):
        lmm.generate_until(reqs)
    ll = Instance("loglikelihood", ("answer with letter", "A", lambda doc: [doc["img"]], 4, "t", "test"), idx=0,
                  metadata={"task": "t", "doc_id": 4, "repeats": 1})
    with pytest.raises(NonFiniteLogits, match="while scoring task 't' doc 4"):
        lmm.loglikelihood([ll])


def test_watch_logits_records_without_syncing_each_step():
    from mmmamba_bench.generation import WatchLogits, select_next

    with WatchLogits() as watch:
        select_next(torch.tensor([[0.0, 1.0], [2.0, 0.5]]), do_sample=False)
    assert not watch.found()
    with WatchLogits() as watch:
        select_next(torch.tensor([[0.0, 1.0]]), do_sample=False)
        select_next(torch.tensor([[0.0, float("nan")]]), do_sample=False)
        select_next(torch.tensor([[0.0, 1.0]]), do_sample=False)  # a later finite step does not clear it
    assert watch.found() and isinstance(watch._bad, torch.Tensor)  # a device flag until read
    select_next(torch.tensor([[float("nan"), 1.0]]), do_sample=False)  # outside any watch: not recorded
    assert WatchLogits._active == []
