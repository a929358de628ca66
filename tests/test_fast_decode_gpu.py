"""The captured fast decode step (FastDecoder, Triton kernels, one CUDA graph) gives the eager step's logits over 64
steps, for all three kinds of model. GPU only (run through the device tool)."""

from __future__ import annotations

import pytest
import torch

from mmmamba_bench.config import make_config
from mmmamba_bench.generation import prefill
from mmmamba_bench.model.stack import MMMambaChatModel
from tests.helpers import rel_err

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
LAYOUTS = {"linear": ["mamba2"] * 4, "hybrid": ["mha", "mamba2", "mamba2", "mha"], "transformer": ["mha"] * 4}


def _model(kind: str, seed: int = 0) -> MMMambaChatModel:
    """HoVLE's layer shapes (hidden 2048, 16 / 8 heads of 128, MLP 8192, vocab 92553), 2 + 2 layers, dynamic NTK
    RoPE with a short max_position so the decode crosses into the scaled regime (applied by the HoVLE-family
    transformer; the mmMamba-family linear / hybrid models ignore rope_scaling, as their released code does)."""
    cfg = make_config(hidden=2048, heads=16, kv_heads=8, emb_layers=2, llm_layers=2, intermediate=8192, vocab=92553,
                      image_size=448, patch_size=14, block_types=LAYOUTS[kind], normalize_encoder_output=True,
                      max_position_embeddings=320, rope_scaling={"type": "dynamic", "factor": 2.0},
                      model_type="internvl_chat" if kind == "transformer" else "mmMamba_chat")
    gen = torch.Generator().manual_seed(seed)
    with torch.device("cuda"):
        model = MMMambaChatModel(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("A_log_bias"):
                p.copy_(torch.rand(p.shape, generator=gen) * 2 - 1)
            elif name.endswith("dt_bias"):
                p.copy_(torch.rand(p.shape, generator=gen) * 2 - 3)
            elif name.endswith("norm.weight") or name.endswith("gate.weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
            elif p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) * p.shape[-1] ** -0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return model.to(torch.bfloat16).eval()


@pytest.mark.parametrize("kind", ["linear", "hybrid", "transformer"])
def test_captured_step_matches_eager(kind):
    """Captured == eager fused step exactly (same kernels); both as close to a float64 run of the same weights as
    the model's own eager bf16 forward is (bf16 noise through 4 random layers is a few per cent, for both)."""
    import copy

    from mmmamba_bench.fast.decoder import FastDecoder
    from mmmamba_bench.fast.triton_ops import GemvTuner

    torch.manual_seed(0)
    model = _model(kind)
    ref = copy.deepcopy(model).double()
    ref.set_ssd_backend("torch")
    V = model.config.llm_config.vocab_size
    prompt = torch.randint(0, V, (1, 300), device="cuda")
    steps = 64
    caches = [model.allocate_cache(1, 300 + steps + 1) for _ in range(3)]
    first = [prefill(model, c, prompt, chunk_size=128) for c in caches]
    assert all(torch.equal(first[0], f) for f in first[1:])
    ref_cache = ref.allocate_cache(1, 300 + steps + 1)
    prefill(ref, ref_cache, prompt, chunk_size=128)
    tuner = GemvTuner(tune=False)
    graph_dec = FastDecoder(model, caches[0], impl="triton", tuner=tuner, greedy=False)
    eager_dec = FastDecoder(model, caches[1], impl="triton", tuner=tuner, greedy=False)
    tokens = torch.randint(0, V, (steps,), device="cuda")
    graph_dec.start(tokens[0])
    eager_dec.start(tokens[0])
    fused_err, model_err = [], []
    for t in range(steps):
        graph_dec.set_token(tokens[t])
        eager_dec.set_token(tokens[t])
        lg = graph_dec.step().clone()
        if t == 0:
            graph_dec.capture()
        le = eager_dec.step().clone()
        with torch.no_grad():
            lm = model(tokens[t].view(1, 1), cache=caches[2]).logits[0, -1]
            l64 = ref(tokens[t].view(1, 1), cache=ref_cache).logits[0, -1]
        assert torch.equal(lg, le), f"step {t}: captured and eager fused steps differ"
        assert not lg.isnan().any()
        fused_err.append(rel_err(lg, l64))
        model_err.append(rel_err(lm, l64))
    print(f"{kind}: vs float64, fused max {max(fused_err):.2e} mean {sum(fused_err) / steps:.2e}; "
          f"eager bf16 model max {max(model_err):.2e} mean {sum(model_err) / steps:.2e}")
    assert max(fused_err) < 1.5 * max(model_err) + 1e-3
    assert sum(fused_err) < 1.5 * sum(model_err) + steps * 1e-3
    assert graph_dec.graph is not None and caches[0].length == 300 + steps


def test_greedy_graph_loop_advances_on_device():
    from mmmamba_bench.fast.decoder import FastDecoder

    model = _model("hybrid")
    V = model.config.llm_config.vocab_size
    prompt = torch.randint(0, V, (1, 50), device="cuda")
    c1 = model.allocate_cache(1, 80)
    l1 = prefill(model, c1, prompt)
    dec = FastDecoder(model, c1, impl="triton")
    dec.start(l1.argmax(-1))
    dec.step()
    dec.capture()
    for _ in range(9):
        dec.step()
    assert int(dec.pos) == 60 and c1.length == 60
    # the graph fed its own argmax forward: the token waiting for the next step is the last logits' argmax
    assert int(dec.tok) == int(dec.logits.argmax())


@pytest.mark.parametrize("kind", ["linear", "hybrid"])
def test_pdl_step_matches_serial_step(kind):
    """Programmatic dependent launch (each kernel prefetches weights before waiting for the previous one) must not
    change a single bit: a race would (captured steps, 48 of them, against the same kernels launched serially)."""
    from mmmamba_bench.fast.decoder import FastDecoder
    from mmmamba_bench.fast.triton_ops import GemvTuner, pdl_supported

    if not pdl_supported():
        pytest.skip("programmatic dependent launch needs sm_90+")
    model = _model(kind, seed=1)
    V = model.config.llm_config.vocab_size
    prompt = torch.randint(0, V, (1, 200), device="cuda")
    caches = [model.allocate_cache(1, 260) for _ in range(2)]
    first = [prefill(model, c, prompt) for c in caches]
    tuner = GemvTuner(tune=False)
    decs = [FastDecoder(model, c, impl="triton", tuner=tuner, pdl=p) for c, p in zip(caches, (True, False))]
    for d in decs:
        d.start(first[0].argmax(-1))
        d.step()
        d.capture()
    assert decs[0].path()["pdl"] == "on" and decs[1].path()["pdl"] == "off"
    for t in range(48):
        a, b = decs[0].step().clone(), decs[1].step().clone()
        assert torch.equal(a, b), f"step {t}: PDL and serial launches differ"
    for ca, cb in zip(caches[0].layers, caches[1].layers):
        for ta, tb in zip(vars(ca).values(), vars(cb).values()):
            assert torch.equal(ta, tb)


def test_prefill_graph_matches_eager_prefill():
    """The captured prefill (PrefillGraph) gives the eager prefill's logits and cache bit for bit, for two different
    prompts of the captured length, and decoding continues from it."""
    from mmmamba_bench.fast.prefill import PrefillGraph

    model = _model("hybrid", seed=2)
    V = model.config.llm_config.vocab_size
    c_graph, c_eager = model.allocate_cache(1, 140), model.allocate_cache(1, 140)
    pg = PrefillGraph(model, c_graph)
    for trial in range(2):
        prompt = torch.randint(0, V, (1, 120), device="cuda")
        c_graph.reset()
        c_eager.reset()
        lg = pg(prompt).clone()
        le = prefill(model, c_eager, prompt)
        assert torch.equal(lg, le), f"prompt {trial}: logits differ"
        assert c_graph.length == c_eager.length == 120
        for ca, cb in zip(c_graph.layers, c_eager.layers):
            for ta, tb in zip(vars(ca).values(), vars(cb).values()):
                assert torch.equal(ta, tb), f"prompt {trial}: cache differs"
    assert pg.captures == 1
    with torch.no_grad():
        nxt = lg.argmax(-1).view(1, 1)
        assert torch.equal(model(nxt, cache=c_graph).logits, model(nxt, cache=c_eager).logits)


@pytest.mark.parametrize("kind", ["linear", "transformer"])
def test_step_refinement_restores_state_and_greedy_pick_matches_argmax(kind, tmp_path):
    """capture() refines the launch configurations inside the step (tuning on): afterwards the captured greedy
    decoder continues exactly where an eager decoder sharing its tuner is (so the refinement's scratch replays left
    no trace in the states, token or position), every token is torch.argmax of that step's logits, and the
    refined choices are cached for this GPU and reused without timing."""
    from mmmamba_bench.fast.decoder import FastDecoder
    from mmmamba_bench.fast.tuning import GemvTuner, TuneCache

    model = _model(kind, seed=3)
    V = model.config.llm_config.vocab_size
    prompt = torch.randint(0, V, (1, 100), device="cuda")
    caches = [model.allocate_cache(1, 180) for _ in range(2)]
    first = [prefill(model, c, prompt) for c in caches]
    cache_file = TuneCache.for_device(torch.device("cuda"), tmp_path / "tuning.json")
    tuner = GemvTuner(tune=True, cache=cache_file)
    a = FastDecoder(model, caches[0], impl="triton", tuner=tuner)
    b = FastDecoder(model, caches[1], impl="triton", tuner=tuner)
    for d in (a, b):
        d.start(first[0].argmax(-1))
        d.step()
    a.capture()
    assert a.refine_s is not None and "step" in a.path()["tuning"]
    for t in range(40):
        la, lb = a.step().clone(), b.step().clone()
        assert torch.equal(la, lb), f"step {t}: refined captured step and eager step differ"
        assert int(a.tok) == int(b.tok) == int(torch.argmax(la)), f"step {t}: greedy pick"
    assert int(a.pos) == int(b.pos) == 100 + 41
    for ca, cb in zip(caches[0].layers, caches[1].layers):
        for name, ta in vars(ca).items():
            tb = getattr(cb, name)
            if name in ("k", "v"):  # [B, nkv, T_max, hd]: the filled part
                ta, tb = ta[:, :, :141], tb[:, :, :141]
            assert torch.equal(ta, tb), f"cache {name} differs"
    again = GemvTuner(tune=True, cache=cache_file)
    assert again.choices and all(c.source == "cache" for c in again.choices.values())
