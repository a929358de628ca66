"""The batched decode path's CPU-side logic: buckets, stop strings, and the batched step (plain-PyTorch ops, no
graph, ``fast="on"`` on CPU) against the eager per-token loop on tiny float64 models of all three kinds."""

from __future__ import annotations

import pytest
import torch

from mmmamba_bench.fast.batched import FastGenerator, bucket_for, capacity_for
from mmmamba_bench.generation import choose_path, generate
from mmmamba_bench.stopping import StopStrings, cut_at_stop
from tests.helpers import image_prompt, random_model

KINDS = ["linear", "hybrid", "transformer"]


def test_bucket_for():
    assert [bucket_for(n) for n in (1, 2, 3, 4, 5, 8, 9, 16, 17, 32)] == [1, 2, 4, 4, 8, 8, 16, 16, 32, 32]
    assert bucket_for(3, (2, 6)) == 6
    with pytest.raises(ValueError):
        bucket_for(33)
    with pytest.raises(ValueError):
        bucket_for(0)


def test_capacity_for():
    assert capacity_for(1) == 512 and capacity_for(512) == 512 and capacity_for(513) == 1024
    assert capacity_for(1900, quantum=256) == 2048


def test_pad_left_to_a_length_quantum():
    from mmmamba_bench.fast.batched import pad_left

    ids, mask = torch.tensor([[5, 6, 7], [0, 8, 9]]), torch.tensor([[1, 1, 1], [0, 1, 1]])
    pids, pmask = pad_left(ids, mask, 4)
    assert pids.tolist() == [[0, 5, 6, 7], [0, 0, 8, 9]] and pmask.tolist() == [[0, 1, 1, 1], [0, 0, 1, 1]]
    assert pad_left(ids, mask, 3)[0] is ids


def test_stop_strings_decode_only_unmatched_rows():
    decode = lambda ids: "".join(chr(ord("a") + i) for i in ids)
    stop = StopStrings(decode, ("cd", ""))
    assert stop(torch.tensor([[2], [0]])).tolist() == [False, False]
    assert stop(torch.tensor([[2, 3], [0, 1]])).tolist() == [True, False]
    assert stop.decoded_rows == 4
    assert stop(torch.tensor([[2, 3, 0], [0, 1, 2]])).tolist() == [True, False]
    assert stop.decoded_rows == 5  # the matched row is not decoded again
    assert StopStrings(decode, ())(torch.tensor([[1]])).tolist() == [False]


def test_cut_at_stop_first_occurrence():
    assert cut_at_stop("yes. no", (".", "no")) == "yes"
    assert cut_at_stop("abc", ("x",)) == "abc"


def _padded_batch(model, lengths, n_tiles=1, seed=3):
    """Left-padded rows with an image each (text of different lengths), their mask and tiles."""
    rows, tiles = [], []
    for j, n in enumerate(lengths):
        ids, pv = image_prompt(model, n_tiles=n_tiles, text_len=n, seed=seed + j)
        rows.append(ids[0])
        tiles.append(pv)
    L = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), L, dtype=torch.long)
    mask = torch.zeros(len(rows), L, dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, L - len(r):] = r
        mask[b, L - len(r):] = 1
    return ids, mask, torch.cat(tiles)


@pytest.mark.parametrize("kind", KINDS)
def test_batched_step_equals_eager_loop(kind):
    """Mixed prompt lengths, left padding, images; a batch of 3 decoded in bucket 4: same greedy tokens."""
    model = random_model(kind)
    ids, mask, pv = _padded_batch(model, [9, 3, 6])
    kw = {"pixel_values": pv, "attention_mask": mask, "max_new_tokens": 7}
    eager = generate(model, ids, fast="off", **kw)
    fast = generate(model, ids, fast="on", **kw)
    assert torch.equal(fast, eager)
    assert model.code_path.extra["generate"].startswith("batched prefill")
    assert model.code_path.extra["decode_buckets_used"] == "4"


@pytest.mark.parametrize("kind", ["linear", "transformer"])
@torch.no_grad()
def test_batched_step_logits_equal_eager_steps(kind):
    """Teacher-forced: the batched step's logits equal the eager model's step logits (float64: 1e-12)."""
    from mmmamba_bench.fast.batch_torch_ops import TorchBatchOps
    from mmmamba_bench.fast.batched import BatchedDecoder
    from mmmamba_bench.generation import prefill

    model = random_model(kind)
    ids, mask, pv = _padded_batch(model, [5, 1], n_tiles=1)
    L = ids.shape[1]
    big = model.allocate_cache(4, 64)
    ref = model.allocate_cache(2, 64)
    first = prefill(model, big.rows(2), ids, pixel_values=pv, attention_mask=mask)
    assert torch.equal(first, prefill(model, ref, ids, pixel_values=pv, attention_mask=mask))
    dec = BatchedDecoder(model, big.rows(4), TorchBatchOps())
    dec.idx.fill_(L)
    dec.npad[:2] = (mask == 0).sum(-1)
    toks = torch.randint(0, 128, (6, 2), generator=torch.Generator().manual_seed(0))
    for t in toks:
        dec.tok[:2] = t
        got = dec.step()[:2]
        want = model(t[:, None], cache=ref).logits[:, -1]
        assert float((got - want).norm() / want.norm()) < 1e-12


def test_eos_trim_and_stop_strings_match_eager():
    model = random_model("hybrid")
    ids, mask, pv = _padded_batch(model, [4, 8], n_tiles=1)
    kw = {"pixel_values": pv, "attention_mask": mask, "max_new_tokens": 9}
    free = generate(model, ids, fast="off", **kw)
    L = ids.shape[1]
    eos = int(free[0, L + 2])  # row 0 ends at its third token
    eager = generate(model, ids, fast="off", eos_token_id=eos, **kw)
    fast = generate(model, ids, fast="on", eos_token_id=eos, **kw)
    assert torch.equal(fast, eager)

    decode = lambda row: " ".join(str(int(t)) for t in row)
    until = (str(int(free[1, L + 3])), str(int(free[0, L + 1])))
    cut = lambda out: [cut_at_stop(decode(r[L:]), until) for r in out]
    eager = generate(model, ids, fast="off", stop=StopStrings(decode, until), **kw)
    for interval in (1, 3, 4):
        fast = generate(model, ids, fast="on", stop=StopStrings(decode, until), stop_interval=interval, **kw)
        assert cut(fast) == cut(eager)
        assert torch.equal(fast[:, :eager.shape[1]][eager != 0], eager[eager != 0]) or interval > 1


def test_batches_above_the_largest_bucket_go_in_slices():
    model = random_model("linear")
    ids, mask, pv = _padded_batch(model, [2, 5, 3], n_tiles=1)
    kw = {"pixel_values": pv, "attention_mask": mask, "max_new_tokens": 4}
    eager = generate(model, ids, fast="off", **kw)
    gen = FastGenerator(model, buckets=(1, 2))
    assert torch.equal(gen.generate(ids, **kw), eager)
    assert gen.used == {1, 2}


def test_choose_path_on_cpu():
    model = random_model("linear")
    assert choose_path(model, "auto") == (False, "no CUDA device (model on cpu)")
    assert choose_path(model, "off")[0] is False
    assert choose_path(model, "on")[0] is True
    with pytest.raises(ValueError):
        choose_path(model, "maybe")
    generate(model, torch.tensor([[1, 2, 3]]), max_new_tokens=2)
    assert model.code_path.extra["generate"] == "eager per-token loop (no CUDA device (model on cpu))"


def test_fused_prefill_is_a_no_op_on_cpu():
    from mmmamba_bench.model.fused import applies, fused_prefill

    model = random_model("hybrid", dtype=torch.float32)
    ids, mask, pv = _padded_batch(model, [4, 8], n_tiles=1)
    plain = model(ids, pixel_values=pv, attention_mask=mask).logits
    with torch.no_grad(), fused_prefill():
        assert not applies(ids.float())
        assert torch.equal(model(ids, pixel_values=pv, attention_mask=mask).logits, plain)


def test_dynamic_ntk_model_is_not_padded_further():
    """Dynamic NTK RoPE takes its base from the padded length once it exceeds max_position_embeddings, so extra left
    padding would change the rows' results: the length quantum is skipped there (seen on the H200 in fp32)."""
    from mmmamba_bench.config import make_config
    from mmmamba_bench.model.stack import MMMambaChatModel

    cfg = make_config(hidden=64, heads=4, kv_heads=2, emb_layers=1, llm_layers=1, intermediate=128, vocab=128,
                      image_size=56, patch_size=14, max_position_embeddings=20, rope_theta=10_000.0,
                      rope_scaling={"type": "dynamic", "factor": 2.0}, model_type="internvl_chat")
    torch.manual_seed(0)
    model = MMMambaChatModel(cfg).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    ids = torch.randint(0, 128, (2, 15))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    kw = {"attention_mask": mask, "max_new_tokens": 10}
    assert torch.equal(generate(model, ids, fast="on", **kw), generate(model, ids, fast="off", **kw))
