"""Cached decoding equals a full forward pass, for all three model kinds, with an image in the prompt."""

import pytest
import torch

from mmmamba_bench.generation import prefill
from mmmamba_bench.model.embedding import InputError
from tests.helpers import RTOL, image_prompt, random_model, rel_err

KINDS = ["transformer", "linear", "hybrid"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_stepwise_decode_equals_full_forward(kind, dtype):
    model = random_model(kind, dtype, normalize=(kind == "hybrid"))
    ids, pv = image_prompt(model, n_tiles=2, text_len=12)
    L0 = ids.shape[1] - 8
    with torch.no_grad():
        full = model(ids, pixel_values=pv).logits
        cache = model.allocate_cache(1, ids.shape[1])
        parts = [model(ids[:, :L0], pixel_values=pv, cache=cache).logits]
        for t in range(L0, ids.shape[1]):
            parts.append(model(ids[:, t:t + 1], cache=cache).logits)
    assert rel_err(torch.cat(parts, 1), full) < RTOL[dtype]


@pytest.mark.parametrize("kind", KINDS)
def test_chunked_prefill_equals_full_forward(kind):
    model = random_model(kind)
    ids, pv = image_prompt(model, n_tiles=1, text_len=30)
    with torch.no_grad():
        full = model(ids, pixel_values=pv).logits[:, -1]
        cache = model.allocate_cache(1, ids.shape[1] + 4)
        last = prefill(model, cache, ids, pixel_values=pv, chunk_size=9)
    assert cache.length == ids.shape[1]
    assert rel_err(last, full) < 1e-12


@pytest.mark.parametrize("kind", KINDS)
def test_generate_matches_recomputed_greedy(kind):
    model = random_model(kind)
    ids, pv = image_prompt(model, n_tiles=1, text_len=6)
    out = model.generate(input_ids=ids, pixel_values=pv, max_new_tokens=7)
    assert out.shape == (1, ids.shape[1] + 7) and torch.equal(out[:, :ids.shape[1]], ids)
    seq = ids
    with torch.no_grad():
        for _ in range(7):  # no cache: a full forward for every new token
            nxt = model(seq, pixel_values=pv).logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], 1)
    assert torch.equal(out, seq)


@pytest.mark.parametrize("kind", KINDS)
def test_left_padded_batch_equals_single_rows(kind):
    model = random_model(kind)
    g = torch.Generator().manual_seed(4)
    a = torch.randint(0, 128, (1, 14), generator=g)
    b = torch.randint(0, 128, (1, 9), generator=g)
    batch = torch.cat([a, torch.cat([torch.zeros(1, 5, dtype=torch.long), b], 1)])
    mask = torch.ones_like(batch)
    mask[1, :5] = 0
    out = model.generate(input_ids=batch, attention_mask=mask, max_new_tokens=5)
    assert torch.equal(out[0, 14:], model.generate(input_ids=a, max_new_tokens=5)[0, 14:])
    assert torch.equal(out[1, 14:], model.generate(input_ids=b, max_new_tokens=5)[0, 9:])


def test_eos_stops_and_pads():
    model = random_model("hybrid")
    ids, pv = image_prompt(model, text_len=4)
    free = model.generate(input_ids=ids, pixel_values=pv, max_new_tokens=6)
    eos = int(free[0, ids.shape[1] + 1])  # make the second new token the EOS
    out = model.generate(input_ids=ids, pixel_values=pv, max_new_tokens=6, eos_token_id=eos)
    assert out.shape[1] == ids.shape[1] + 2 and int(out[0, -1]) == eos


def test_sampling_is_reproducible_and_differs_from_greedy():
    model = random_model("linear")
    ids, pv = image_prompt(model, text_len=4)
    kw = dict(pixel_values=pv, max_new_tokens=12, do_sample=True, temperature=5.0)
    s1 = model.generate(input_ids=ids, generator=torch.Generator().manual_seed(0), **kw)
    s2 = model.generate(input_ids=ids, generator=torch.Generator().manual_seed(0), **kw)
    greedy = model.generate(input_ids=ids, pixel_values=pv, max_new_tokens=12)
    assert torch.equal(s1, s2) and not torch.equal(s1, greedy)


def test_image_token_count_mismatch_is_an_error():
    model = random_model("transformer")
    ids, pv = image_prompt(model, n_tiles=2)
    with pytest.raises(InputError, match="2 tile\\(s\\) give 8 image tokens but input_ids hold 4"):
        model(ids[:, :1 + 4], pixel_values=pv)
    with pytest.raises(InputError, match="no pixel_values"):
        model(ids)
    with pytest.raises(InputError, match="input_ids must lie in"):
        model(torch.tensor([[0, 500]]))
