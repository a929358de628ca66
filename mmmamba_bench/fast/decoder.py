"""One batch-1 decode step over the model's fixed-shape cache, as a few fused ops, captured once in a CUDA graph.

Per Mamba-2 layer: RMSNorm+in-projection+conv+SiLU+softplus -> state update -> gated norm+o_proj+residual ->
RMSNorm+w1/w3+SwiGLU -> w2+residual (5 launches). Per attention layer: RMSNorm+wqkv+RoPE+cache write ->
split-KV attention -> merge -> wo+residual -> the same MLP (6 launches). Then the final norm + output head and,
when ``greedy``, the argmax that becomes the next step's input. The token and its position live in device
tensors (``tok``, ``pos``) that the step itself advances, so replaying the graph N times decodes N tokens with no
host synchronisation; the attention kernels read the filled length from ``pos`` and never touch the unfilled
part of the cache.

``impl="triton"`` uses :mod:`.triton_ops` (CUDA, bf16); ``impl="torch"`` the plain twins in :mod:`.torch_ops`
(any device and dtype; on CUDA the linear model's step can still be graph-captured, attention needs a host sync).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mmmamba_bench.fast import torch_ops
from mmmamba_bench.fast.layer_weights import LayerWeights, layer_weights
from mmmamba_bench.model.cache import AttentionCache, InferenceCache, Mamba2Cache
from mmmamba_bench.model.layers import Rotary
from mmmamba_bench.model.mamba2 import GATE_NORM_EPS

log = logging.getLogger(__name__)

IMPLS = ("auto", "triton", "torch")


class TorchOps:
    """The plain-PyTorch ops under the interface :class:`~.triton_ops.TritonOps` has."""

    name = "torch"
    norm_gemv_mamba_in = staticmethod(torch_ops.norm_gemv_mamba_in)
    ssm_step = staticmethod(torch_ops.ssm_step)
    gated_gemv_residual = staticmethod(torch_ops.gated_gemv_residual)
    norm_gemv_swiglu = staticmethod(torch_ops.norm_gemv_swiglu)
    gemv_residual = staticmethod(torch_ops.gemv_residual)
    norm_gemv = staticmethod(torch_ops.norm_gemv)
    norm_gemv_argmax = staticmethod(torch_ops.norm_gemv_argmax)
    norm_gemv_qkv_rope = staticmethod(torch_ops.norm_gemv_qkv_rope)
    attn_decode = staticmethod(torch_ops.attn_decode)


def triton_usable(device: torch.device, dtype: torch.dtype) -> tuple[bool, str]:
    """Whether the Triton decode kernels can run here, and why not."""
    if device.type != "cuda":
        return False, f"needs a CUDA device (got {device})"
    if dtype != torch.bfloat16:
        return False, f"the fused kernels are bf16-only (model is {dtype})"
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        return False, f"triton is not importable ({exc})"
    return True, "ok"


def rope_tables(rot: Rotary, max_len: int, device: torch.device, dtype: torch.dtype,
                chunk: int = 32768) -> tuple[torch.Tensor, torch.Tensor]:
    """cos / sin [max_len, hd]: row p is the rotation :class:`Rotary` gives a token decoded at position p.

    With dynamic NTK scaling the base depends on the length seen so far (p + 1 for a decoded token), so the row
    depends on p alone and the whole table can be computed once, in float64 like :meth:`Rotary.cos_sin`.
    """
    hd = rot.head_dim
    cos = torch.empty(max_len, hd, device=device, dtype=dtype)
    sin = torch.empty(max_len, hd, device=device, dtype=dtype)
    expo = torch.arange(0, hd, 2, dtype=torch.float64, device=device) / hd
    for s in range(0, max_len, chunk):
        p = torch.arange(s, min(s + chunk, max_len), dtype=torch.float64, device=device)
        base = torch.full_like(p, rot.theta)
        if rot.kind == "dynamic":
            seq = p + 1
            scaled = rot.theta * ((rot.factor * seq / rot.max_pos) - (rot.factor - 1)) ** (hd / (hd - 2))
            base = torch.where(seq > rot.max_pos, scaled, base)
        inv = 1.0 / (base[:, None] ** expo[None, :])
        pp = p / rot.factor if rot.kind == "linear" else p
        freqs = pp[:, None] * inv
        emb = torch.cat([freqs, freqs], dim=-1)
        cos[s:s + len(p)] = emb.cos().to(dtype)
        sin[s:s + len(p)] = emb.sin().to(dtype)
    return cos, sin


@dataclass
class _Layer(LayerWeights):
    # batch row 0 of the layer's cache: Mamba-2 conv / SSM state, or attention K / V
    conv_state: torch.Tensor | None = None
    ssm_state: torch.Tensor | None = None
    k: torch.Tensor | None = None
    v: torch.Tensor | None = None


class FastDecoder:
    """Decode steps for ``model`` (batch 1) over ``cache``, from the cache's current length.

    Usage: ``dec = FastDecoder(model, cache); dec.start(first_token); dec.step()`` (eager, also compiles and tunes)
    then ``dec.capture()`` and ``dec.step()`` replays. ``dec.logits`` [V] holds the last step's logits; with
    ``greedy=True`` the step feeds its argmax to the next step, otherwise call :meth:`set_token` before each step.
    """

    def __init__(self, model, cache: InferenceCache, impl: str = "auto", tuner=None, greedy: bool = True,
                 pdl: bool | None = None):
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
        if cache.batch_size != 1:
            raise ValueError("FastDecoder decodes batch 1 only")
        if cache.has_padding:
            raise ValueError("FastDecoder does not support padded prompts")
        self.model, self.cache, self.greedy = model, cache, greedy
        self.device, self.dtype = model.device, model.dtype
        ok, why = triton_usable(self.device, self.dtype)
        if impl == "auto":
            impl = "triton" if ok else "torch"
            if not ok:
                log.info("fast decode: plain PyTorch ops (%s)", why)
        elif impl == "triton" and not ok:
            raise RuntimeError(f"impl='triton' requested but {why}")
        self.impl = impl
        cfg = model.config
        llm = cfg.llm_config
        self.nkv, self.nh, self.hd = llm.num_key_value_heads, llm.num_attention_heads, llm.head_dim
        self.n_rep = self.nh // self.nkv
        self.n_emb = cfg.embedding_config.num_hidden_layers
        self.normalize = cfg.normalize_encoder_output
        H, dev, dt = llm.hidden_size, self.device, self.dtype
        if impl == "triton":
            from mmmamba_bench.fast.triton_ops import GemvTuner, TritonOps, new_argmax_key

            self.ops = TritonOps(tuner if tuner is not None else GemvTuner(tune=True), pdl=pdl)
            self._tune_mark = self.ops.tuner.requests  # this decoder's configurations are requested after it
            self.argkey = new_argmax_key(dev)
        else:
            self.ops = TorchOps()
            self.argkey = torch.zeros(1, dtype=torch.long, device=dev)  # unused by the plain ops
        self.layers = [self._layer(i, layer, c) for i, (layer, c) in enumerate(zip(model.layers, cache.layers))]
        self.emb = model.embedding_model.llm_text_embeddings.weight
        self.final_norm = model.language_model.model.norm.weight
        self.final_eps = llm.rms_norm_eps
        self.w_out = model.language_model.output.weight
        # static buffers
        self.tok = torch.zeros(1, dtype=torch.long, device=dev)
        self.pos = torch.zeros(1, dtype=torch.long, device=dev)
        self.x = torch.zeros(H, dtype=dt, device=dev)
        self.logits = torch.zeros(self.w_out.shape[0], dtype=dt, device=dev)
        self.h = torch.zeros(llm.intermediate_size, dtype=dt, device=dev)
        G = self.nh * self.hd
        self.g = torch.zeros(G, dtype=dt, device=dev)
        self.y = torch.zeros(G, dtype=dt, device=dev)
        self.q = torch.zeros(G, dtype=dt, device=dev)
        self.attn_out = torch.zeros(G, dtype=dt, device=dev)
        self.xbc = torch.zeros((2 * self.nkv + self.nh) * self.hd, dtype=dt, device=dev)
        state_dtype = torch.float64 if dt == torch.float64 else torch.float32
        self.dt = torch.zeros(self.nh, dtype=state_dtype, device=dev)
        self.has_attention = any(L.kind == "mha" for L in self.layers)
        self.rope: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.plan = None
        if self.has_attention:
            tables: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
            for stack, rot in enumerate(model._rotary):
                key = (rot.head_dim, rot.theta, rot.max_pos, rot.kind, rot.factor)
                if key not in tables:
                    tables[key] = rope_tables(rot, cache.max_len, dev, dt)
                self.rope[stack] = tables[key]
            if impl == "triton":
                self.plan = self.ops.attn_plan(self.nh, self.nkv, self.hd, cache.max_len, dev)
        self.length = cache.length
        self.graph: torch.cuda.CUDAGraph | None = None
        self.steps_run = 0
        self.refine_s: float | None = None  # time spent refining launch configurations in the step, if any

    def _layer(self, i: int, layer, c) -> _Layer:
        if layer.kind == "mamba2":
            assert isinstance(c, Mamba2Cache)
            return _Layer(**layer_weights(self.model, i), conv_state=c.conv[0], ssm_state=c.ssm[0])
        assert isinstance(c, AttentionCache)
        return _Layer(**layer_weights(self.model, i), k=c.k[0], v=c.v[0])

    # ---- the step ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def _body(self) -> None:
        ops, x = self.ops, self.x
        torch.index_select(self.emb, 0, self.tok, out=x.view(1, -1))
        for i, L in enumerate(self.layers):
            if i == self.n_emb and self.normalize:
                x.copy_(F.normalize(x.view(1, 1, -1), dim=-1).view(-1))
            if L.kind == "mamba2":
                ops.norm_gemv_mamba_in(x, L.norm1, L.eps, L.w_in, L.conv_state, L.conv_w, L.conv_b, L.dt_bias,
                                       self.xbc, self.g, self.dt)
                ops.ssm_step(self.xbc, self.dt, L.a_log, L.ssm_state, self.y, self.nkv)
                ops.gated_gemv_residual(self.y, self.g, L.gate_w, GATE_NORM_EPS, L.w_o, x)
            else:
                cos, sin = self.rope[L.stack]
                ops.norm_gemv_qkv_rope(x, L.norm1, L.eps, L.w_qkv, cos, sin, self.pos, L.k, L.v, self.q, self.n_rep)
                ops.attn_decode(self.q, L.k, L.v, self.pos, self.attn_out, self.plan)
                ops.gemv_residual(self.attn_out, L.w_o, x)
            ops.norm_gemv_swiglu(x, L.norm2, L.eps, L.w1, L.w3, self.h)
            ops.gemv_residual(self.h, L.w2, x)
        if self.greedy:  # head, argmax into tok, pos += 1
            ops.norm_gemv_argmax(x, self.final_norm, self.final_eps, self.w_out, self.logits, self.argkey, self.tok,
                                 self.pos)
        else:
            ops.norm_gemv(x, self.final_norm, self.final_eps, self.w_out, self.logits)
            self.pos.add_(1)

    def start(self, token) -> None:
        """Begin decoding after the prompt in the cache: ``token`` (int or [1] tensor) goes in first."""
        self.length = self.cache.length
        self.pos.fill_(self.length)
        self.set_token(token)

    def set_token(self, token) -> None:
        if isinstance(token, torch.Tensor):
            self.tok.copy_(token.reshape(1))
        else:
            self.tok.fill_(int(token))

    def step(self) -> torch.Tensor:
        """Decode one token; returns the logits buffer [V] (overwritten by the next step)."""
        if self.length >= self.cache.max_len:
            raise RuntimeError(f"the cache is full ({self.cache.max_len} tokens)")
        if self.graph is not None:
            self.graph.replay()
        else:
            self._body()
        self.length += 1
        self.cache.length = self.length
        self.steps_run += 1
        return self.logits

    def capture(self) -> None:
        """Capture one step in a CUDA graph (after at least one eager :meth:`step`, which compiles and tunes).

        With a tuning :class:`~.tuning.GemvTuner`, the shortlisted launch configurations are first refined inside
        the captured step (:meth:`refine`)."""
        if self.device.type != "cuda":
            raise RuntimeError("CUDA graphs need a CUDA device")
        if self.impl == "torch" and self.has_attention:
            raise RuntimeError("the plain-PyTorch attention op reads the length on the host; it cannot be captured")
        if self.steps_run == 0:
            raise RuntimeError("run one eager step before capture (it compiles and tunes the kernels)")
        if self.impl == "triton" and self.ops.tuner.tune and self.ops.tuner.pending():
            self.refine()
        torch.cuda.synchronize()
        pos_before, tok_before = self.pos.clone(), self.tok.clone()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._body()
        # capture records without running; the buffers must still hold this step's token and position
        self.pos.copy_(pos_before)
        self.tok.copy_(tok_before)
        torch.cuda.synchronize()
        self.graph = graph

    @torch.no_grad()
    def refine(self, reps: int = 25) -> dict[str, float]:
        """Choose each pending kernel's launch configuration by timing the whole captured step (coordinate descent
        over the tuner's shortlists, largest kernels first); returns {kernel[shape]: best step ms}.

        Each candidate's step is captured in a scratch graph (after one eager run that compiles it) and replayed
        ``reps`` times with the token and position reset before each replay, so every replay does the same work.
        Afterwards the conv / SSM states, token and position are restored; the only other writes, the KV entries
        at the current position, are rewritten by the next real step. Choices go to the tuner's on-disk cache.
        """
        import time

        tuner = self.ops.tuner
        t_start = time.perf_counter()
        states = [t for L in self.layers for t in (L.conv_state, L.ssm_state) if t is not None]
        saved = [t.clone() for t in states]
        pos0, tok0 = self.pos.clone(), self.tok.clone()

        def reset() -> None:
            self.pos.copy_(pos0)
            self.tok.copy_(tok0)

        def step_ms() -> float:
            reset()
            self._body()  # compiles this configuration outside the capture
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._body()
            events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                      for _ in range(reps + 3)]
            for a, b in events:
                reset()
                a.record()
                graph.replay()
                b.record()
            torch.cuda.synchronize()
            del graph
            ms = sorted(a.elapsed_time(b) for a, b in events[3:])
            return ms[len(ms) // 2]

        def apply(key, cfg) -> None:
            tuner.set(key, cfg, "step")
            if key[0] == "attn":
                self.plan = self.ops.attn_plan(self.nh, self.nkv, self.hd, self.cache.max_len, self.device)

        best = step_ms()
        log.info("refine: start %.4f ms/step with %s", best, tuner.describe())
        found: dict[str, float] = {}
        for key in sorted(tuner.pending(), key=lambda k: (k[0] == "attn", -k[1] * k[2])):
            current = tuner.choices[key].config
            for cand in tuner.shortlist[key]:
                if cand == current:
                    continue
                apply(key, cand)
                t = step_ms()
                log.info("refine %s[%dx%d] %s: %.4f ms/step (best so far %.4f)", *key, cand, t, best)
                if t < best:
                    best, current = t, cand
            apply(key, current)
            tuner.set(key, current, "step", best * 1e3)
            found[f"{key[0]}[{key[1]}x{key[2]}]"] = best
        for t, v in zip(states, saved):
            t.copy_(v)
        reset()
        torch.cuda.synchronize()
        tuner.save()
        self.refine_s = time.perf_counter() - t_start
        log.info("refine: %.4f ms/step after %.1f s: %s", best, self.refine_s, tuner.describe())
        return found

    def path(self) -> dict[str, str]:
        """Which implementation runs the decode step (for result rows)."""
        out = {"decode": f"fast-{self.impl}", "graph": "cuda_graph" if self.graph is not None else "none",
               "gemv": "triton-fused" if self.impl == "triton" else "torch",
               "ssd_step": "triton-fused" if self.impl == "triton" else "torch",
               "attention": ("triton-split-kv" if self.impl == "triton" else "sdpa") if self.has_attention else "-"}
        if self.impl == "triton":
            out["pdl"] = "on" if self.ops.pdl else "off"
            tuner = self.ops.tuner
            keys = tuner.used_since(self._tune_mark)
            out["tuning"] = "+".join(sorted({tuner.choices[k].source for k in keys})) or "none"
            out["gemv_configs"] = ";".join(f"{k}={v}" for k, v in tuner.describe(keys).items())
        if self.plan is not None:
            out["attn_split"] = f"{self.plan.n_splits}x{self.plan.split}"
        return out

    def record_path(self) -> None:
        """Write :meth:`path` into ``model.code_path``."""
        cp = self.model.code_path
        p = self.path()
        cp.ssd_step, cp.attention, cp.graph = p["ssd_step"], p["attention"], p["graph"]
        cp.extra.update({k: p[k] for k in ("decode", "gemv", "pdl") if k in p})
