"""Batched generation for evaluation: prefill a left-padded batch, then a batched decode step captured in a CUDA
graph per batch-size bucket.

- :class:`BatchedDecoder`: one decode step for every row of a fixed-shape cache (batch = a bucket size), built from
  GEMMs (``torch.mm``: each weight read once for all rows) and the fused ops of :mod:`.batch_triton_ops` (CUDA,
  bf16) or their plain twins in :mod:`.batch_torch_ops`. The step keeps the token, the cache index and each row's
  number of left-padding slots in device tensors and advances the index itself, so it can be captured once and
  replayed for every step of every later batch of that bucket.
- :class:`FastGenerator`: per model, one cache (rows = the largest bucket used, length = a capacity rounded up to
  :data:`CAPACITY_QUANTUM`) shared by all buckets, one captured step per bucket; ``generate`` has the contract of
  :func:`mmmamba_bench.generation.generate` (the eager reference).

Left padding: the prefill is the model's own forward on the padded batch (padding masked in attention and kept out
of the Mamba-2 state, as always); in the decode step row b attends to cache slots npad[b] <= t <= idx only, and its
RoPE position is idx - npad[b], as the eager step computes it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mmmamba_bench.fast.batch_torch_ops import TorchBatchOps
from mmmamba_bench.fast.layer_weights import LayerWeights, layer_weights
from mmmamba_bench.model import fused
from mmmamba_bench.model.cache import AttentionCache, InferenceCache, Mamba2Cache
from mmmamba_bench.model.layers import Rotary
from mmmamba_bench.model.mamba2 import GATE_NORM_EPS
from mmmamba_bench.steps import prefill, select_next

log = logging.getLogger(__name__)

BUCKETS = (1, 2, 4, 8, 16, 32)
CAPACITY_QUANTUM = 512  # cache lengths are rounded up to this, so prompts of similar length share one capture
# A left-padded batch is padded further, to a multiple of this: the masked attention of a padded prefill (cuDNN)
# plans each new sequence length once, and a real evaluation would otherwise meet hundreds of lengths.
LENGTH_QUANTUM = 64
IMPLS = ("auto", "triton", "torch")


def bucket_for(batch: int, buckets: tuple[int, ...] = BUCKETS) -> int:
    """The smallest bucket that holds ``batch`` rows (callers split batches larger than the largest bucket)."""
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    for b in sorted(buckets):
        if b >= batch:
            return b
    raise ValueError(f"batch {batch} exceeds the largest bucket {max(buckets)}")


def capacity_for(length: int, quantum: int = CAPACITY_QUANTUM) -> int:
    """Cache length for ``length`` tokens (prompt + new tokens), rounded up to a multiple of ``quantum``."""
    return max(quantum, -(-length // quantum) * quantum)


def fast_usable(model, impl: str = "auto") -> tuple[bool, str, str]:
    """(usable, ops implementation, reason) for the batched CUDA-graph decode of ``model``."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    device, dtype = model.device, model.dtype
    if device.type != "cuda":
        return False, "-", f"needs a CUDA device (model is on {device})"
    if model.config.llm_config.vocab_size > model.config.embedding_config.llm_vocab_size:
        return False, "-", "the output vocabulary exceeds the text embedding table"
    triton_ok, why = True, "ok"
    if dtype != torch.bfloat16:
        triton_ok, why = False, f"the fused kernels are bf16-only (model is {dtype})"
    else:
        try:
            import triton  # noqa: F401
        except ImportError as exc:
            triton_ok, why = False, f"triton is not importable ({exc})"
    if impl == "triton" and not triton_ok:
        return False, "-", why
    chosen = "triton" if (impl in ("auto", "triton") and triton_ok) else "torch"
    return True, chosen, "ok" if chosen == "triton" else f"plain PyTorch ops ({why})"


def rope_rows(rot: Rotary, pos: torch.Tensor, seq_len: torch.Tensor, dtype: torch.dtype
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """cos / sin [B, hd] for one token per row at positions ``pos`` [B] (int64, device), the sequence holding
    ``seq_len`` [1] slots: :meth:`Rotary.cos_sin` computed from device tensors (float64, then cast), so it can be
    captured in a graph; dynamic NTK takes its base from ``seq_len`` as the eager step does."""
    hd = rot.head_dim
    p = pos.to(torch.float64)
    if rot.kind == "linear":
        p = p / rot.factor
    expo = torch.arange(0, hd, 2, dtype=torch.float64, device=pos.device) / hd
    if rot.kind == "dynamic":
        s = seq_len.to(torch.float64)
        scaled = rot.theta * ((rot.factor * s / rot.max_pos) - (rot.factor - 1)) ** (hd / (hd - 2))
        base = torch.where(s > rot.max_pos, scaled, torch.full_like(s, rot.theta))
        inv = 1.0 / (base[:, None] ** expo[None, :])  # [1, hd/2]
    else:
        inv = (1.0 / (rot.theta ** expo))[None, :]
    freqs = p[:, None] * inv  # [B, hd/2]
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


@dataclass
class _Layer(LayerWeights):
    cache: AttentionCache | Mamba2Cache | None = None  # the layer's slice of the shared fixed-shape cache


class BatchedDecoder:
    """One decode step for all rows of ``cache`` (its batch is the bucket size), capturable in a CUDA graph.

    Inputs live in device buffers: ``tok`` [B] (the token each row feeds in), ``idx`` [1] (its cache slot) and
    ``npad`` [B] (left-padding slots per row). :meth:`step` writes ``logits`` [B, V] and advances ``idx``.
    """

    def __init__(self, model, cache: InferenceCache, ops):
        self.model, self.cache, self.ops = model, cache, ops
        cfg, llm = model.config, model.config.llm_config
        dev, dt = model.device, model.dtype
        B, H = cache.batch_size, llm.hidden_size
        self.nh, self.nkv, self.hd = llm.num_attention_heads, llm.num_key_value_heads, llm.head_dim
        self.n_rep = self.nh // self.nkv
        self.n_emb = cfg.embedding_config.num_hidden_layers
        self.normalize = cfg.normalize_encoder_output
        self.layers = [self._layer(i, layer, c) for i, (layer, c) in enumerate(zip(model.layers, cache.layers))]
        self.emb = model.embedding_model.llm_text_embeddings.weight
        self.final_norm, self.final_eps = model.language_model.model.norm.weight, llm.rms_norm_eps
        self.w_out = model.language_model.output.weight
        self.rotary = model._rotary
        G, I, C = self.nh * self.hd, llm.intermediate_size, (2 * self.nkv + self.nh) * self.hd
        z = lambda *shape, dtype=dt: torch.zeros(*shape, dtype=dtype, device=dev)
        self.tok, self.idx, self.npad = z(B, dtype=torch.long), z(1, dtype=torch.long), z(B, dtype=torch.long)
        self.x, self.n, self.delta = z(B, H), z(B, H), z(B, H)
        self.a, self.b, self.h = z(B, I), z(B, I), z(B, I)
        self.logits = z(B, self.w_out.shape[0])
        self.has_mamba = any(L.kind == "mamba2" for L in self.layers)
        self.has_attention = any(L.kind == "mha" for L in self.layers)
        if self.has_mamba:
            self.proj = z(B, C + G + self.nh)
            self.xbc, self.y, self.zg = z(B, C), z(B, G), z(B, G)
            self.dt = z(B, self.nh, dtype=torch.float64 if dt == torch.float64 else torch.float32)
        self.plan = None
        if self.has_attention:
            self.qkv, self.q, self.attn = z(B, (self.nh + 2 * self.nkv) * self.hd), z(B, G), z(B, G)
            self.plan = ops.attn_plan(B, self.nh, self.nkv, self.hd, cache.max_len, dev)
        self.graph: torch.cuda.CUDAGraph | None = None

    def _layer(self, i: int, layer, c) -> _Layer:
        return _Layer(**layer_weights(self.model, i), cache=c)

    @torch.no_grad()
    def _body(self) -> None:
        ops, x, n, delta = self.ops, self.x, self.n, self.delta
        mm = lambda inp, w, out: torch.mm(inp, w.t(), out=out)
        torch.index_select(self.emb, 0, self.tok, out=x)
        rope = {}
        if self.has_attention:
            pos, seq = self.idx - self.npad, self.idx + 1
            rope = {s: rope_rows(rot, pos, seq, x.dtype) for s, rot in enumerate(self.rotary)}
        pending = False  # whether ``delta`` still has to be added to x
        for i, L in enumerate(self.layers):
            if i == self.n_emb and self.normalize:
                if pending:
                    x.copy_(x + delta)
                    pending = False
                x.copy_(F.normalize(x, dim=-1))
            ops.add_rms_norm(x, delta if pending else None, L.norm1, L.eps, n)
            if L.kind == "mamba2":
                C = L.conv_w.shape[0]
                mm(n, L.w_in, self.proj)
                ops.mamba_post(self.proj, L.cache.conv, L.conv_w, L.conv_b, L.dt_bias, self.xbc, self.dt)
                ops.ssm_step(self.xbc, self.dt, L.a_log, L.cache.ssm, self.y, self.nkv)
                ops.gated_norm(self.y, self.proj[:, C:C + self.y.shape[1]], L.gate_w, GATE_NORM_EPS, self.zg)
                mm(self.zg, L.w_o, delta)
            else:
                cos, sin = rope[L.stack]
                mm(n, L.w_qkv, self.qkv)
                ops.rope_write(self.qkv, cos, sin, self.idx, L.cache.k, L.cache.v, self.q, self.n_rep)
                ops.attn_decode(self.q, L.cache.k, L.cache.v, self.npad, self.idx, self.attn, self.plan)
                mm(self.attn, L.w_o, delta)
            ops.add_rms_norm(x, delta, L.norm2, L.eps, n)
            mm(n, L.w1, self.a)
            mm(n, L.w3, self.b)
            ops.swiglu(self.a, self.b, self.h)
            mm(self.h, L.w2, delta)
            pending = True
        ops.add_rms_norm(x, delta, self.final_norm, self.final_eps, n)
        mm(n, self.w_out, self.logits)
        self.idx.add_(1)

    def step(self) -> torch.Tensor:
        """Decode one token per row; returns the logits buffer [B, V] (overwritten by the next step)."""
        if self.graph is not None:
            self.graph.replay()
        else:
            self._body()
        return self.logits

    def capture(self, warmup: int = 2) -> None:
        """Compile / tune on a side stream, then capture one step. Clobbers the cache rows' state: call before a
        batch's prefill, never in the middle of a generation."""
        if self.model.device.type != "cuda":
            raise RuntimeError("CUDA graphs need a CUDA device")
        self.idx.zero_()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup):
                self._body()
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._body()
        torch.cuda.synchronize()
        self.graph = graph


class FastGenerator:
    """Batched prefill + CUDA-graph batched decode for one model (see the module docstring).

    ``graphs=False`` runs the same step eagerly (for tests and for devices without graphs).
    """

    def __init__(self, model, impl: str = "auto", buckets: tuple[int, ...] = BUCKETS, graphs: bool | None = None,
                 fused_prefill: bool = True):
        ok, chosen, why = fast_usable(model, impl) if model.device.type == "cuda" else (True, "torch", "cpu")
        if not ok:
            raise RuntimeError(f"batched fast decode cannot run: {why}")
        if chosen == "triton":
            from mmmamba_bench.fast.batch_triton_ops import TritonBatchOps

            self.ops = TritonBatchOps()
        else:
            self.ops = TorchBatchOps()
        self.model, self.impl, self.why = model, chosen, why
        self.buckets = tuple(sorted(buckets))
        self.graphs = (model.device.type == "cuda") if graphs is None else graphs
        self.cache: InferenceCache | None = None
        self.decoders: dict[int, BatchedDecoder] = {}
        self.used: set[int] = set()
        self.captures = 0
        # the prefill's element-wise work through model.fused's kernels (bf16 CUDA only; elsewhere a no-op)
        self.fused_prefill = fused_prefill and chosen == "triton"

    # ---- state -------------------------------------------------------------------------------------------------
    def _decoder(self, bucket: int, length: int) -> BatchedDecoder:
        """The step for ``bucket`` rows over a cache of at least ``length`` slots (reallocating, and dropping every
        captured step, when the cache is too small or has too few rows)."""
        cache = self.cache
        if cache is None or cache.max_len < length or cache.batch_size < bucket:
            rows = max(bucket, cache.batch_size if cache is not None else 0)
            cap = max(capacity_for(length), cache.max_len if cache is not None else 0)
            self.decoders.clear()
            self.cache = None
            if self.model.device.type == "cuda":
                torch.cuda.empty_cache()
            self.cache = self.model.allocate_cache(rows, cap)
            log.info("batched decode: cache of %d rows x %d slots (%.2f GiB)", rows, cap, self.cache.nbytes() / 2**30)
        assert self.cache is not None
        if bucket not in self.decoders:
            dec = BatchedDecoder(self.model, self.cache.rows(bucket), self.ops)
            if self.graphs:
                dec.capture()
                self.captures += 1
            self.decoders[bucket] = dec
        return self.decoders[bucket]

    def path(self) -> dict[str, str]:
        """What runs (for ``model.code_path`` and result rows)."""
        graph = "cuda-graph per bucket" if self.graphs else "no graph"
        prefill = "model forward" + (" + fused element-wise Triton kernels" if self.fused_prefill else "")
        return {"generate": f"batched prefill + batched decode ({graph})", "prefill": prefill,
                "decode_ops": f"{self.impl} + cuBLAS GEMMs",
                "decode_buckets": ",".join(map(str, self.buckets)),
                "decode_buckets_used": ",".join(map(str, sorted(self.used))) or "-"}

    def record_path(self) -> None:
        cp = self.model.code_path
        cp.extra.update(self.path())
        cp.graph = "cuda_graph" if self.graphs else "none"

    # ---- generation --------------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, max_new_tokens: int = 32, do_sample: bool = False,
                 temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                 eos_token_id: int | list[int] | None = None, pad_token_id: int | None = None,
                 generator: torch.Generator | None = None, prefill_chunk_size: int | None = None,
                 stop: Callable[[torch.Tensor], torch.Tensor] | None = None, stop_interval: int = 4) -> torch.Tensor:
        """:func:`mmmamba_bench.generation.generate`'s contract. Batches above the largest bucket go in slices of
        it (rows padded with the pad id to the longest slice: what the eager loop writes for finished rows)."""
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        if stop_interval < 1:
            raise ValueError(f"stop_interval must be >= 1, got {stop_interval}")
        device = self.model.device
        input_ids = input_ids.to(device)
        B, L = input_ids.shape
        if max_new_tokens == 0:
            return input_ids
        eos = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id or [])
        pad = pad_token_id if pad_token_id is not None else (eos[0] if eos else 0)
        top = self.buckets[-1]
        if B > top:
            tiles = None if pixel_values is None else _split_tiles(input_ids, pixel_values, self.model, top)
            outs = []
            for j, s in enumerate(range(0, B, top)):
                outs.append(self.generate(input_ids[s:s + top], None if tiles is None else tiles[j],
                                          None if attention_mask is None else attention_mask[s:s + top],
                                          max_new_tokens, do_sample, temperature, top_k, top_p, eos_token_id,
                                          pad_token_id, generator, prefill_chunk_size, stop, stop_interval))
            width = max(o.shape[1] for o in outs)
            return torch.cat([F.pad(o, (0, width - o.shape[1]), value=pad) for o in outs])

        prompt = input_ids
        if attention_mask is not None and not bool(attention_mask.bool().all()):
            padded_ids, padded_mask = pad_left(input_ids, attention_mask.to(device), LENGTH_QUANTUM)
            if padding_is_neutral(self.model, padded_ids.shape[1] + max_new_tokens):
                input_ids, attention_mask, L = padded_ids, padded_mask, padded_ids.shape[1]
        bucket = bucket_for(B, self.buckets)
        dec = self._decoder(bucket, L + max_new_tokens)
        self.used.add(bucket)
        self.record_path()
        cache = self.cache.rows(B)  # the real rows; rows B..bucket-1 are decoded too, and ignored
        with fused.fused_prefill(self.fused_prefill):
            logits = prefill(self.model, cache, input_ids, pixel_values=pixel_values, attention_mask=attention_mask,
                             chunk_size=prefill_chunk_size)
        npad = (~cache.key_mask[:, :L]).sum(-1)  # [B] left-padding slots per row
        dec.npad.zero_()
        dec.npad[:B].copy_(npad)
        dec.idx.fill_(L)
        dec.tok.zero_()
        eos_t = torch.tensor(eos, device=device, dtype=torch.long)
        new = torch.full((B, max_new_tokens), pad, dtype=torch.long, device=device)
        all_done = torch.zeros(max_new_tokens, dtype=torch.bool, device=device)  # after each step
        done = torch.zeros(B, dtype=torch.bool, device=device)
        n = max_new_tokens
        for step in range(max_new_tokens):
            tok = select_next(logits, do_sample, temperature, top_k, top_p, generator)
            tok = torch.where(done, torch.full_like(tok, pad), tok)
            new[:, step] = tok
            if eos:
                done |= torch.isin(tok, eos_t)
            checkpoint = step == max_new_tokens - 1 or (step + 1) % stop_interval == 0
            if stop is not None and checkpoint:
                done |= stop(new[:, :step + 1]).to(device)
            all_done[step] = done.all()
            if step == max_new_tokens - 1:
                break
            if checkpoint and bool(done.all()):  # the only host synchronisation: every stop_interval steps
                break
            dec.tok[:B].copy_(tok)
            logits = dec.step()[:B]
        finished = all_done.nonzero()
        if len(finished):  # the eager loop stops right after the step at which every row was done
            n = int(finished[0, 0]) + 1
        cache.length = L + n
        return torch.cat([prompt, new[:, :n]], dim=1)


def padding_is_neutral(model, length: int) -> bool:
    """Whether extra left padding leaves every row's result unchanged for sequences of up to ``length`` slots: not
    when a dynamic-NTK RoPE would take its base from a (padded) length above its max_position_embeddings."""
    return all(rot.kind != "dynamic" or length <= rot.max_pos for rot in model._rotary)


def pad_left(input_ids: torch.Tensor, attention_mask: torch.Tensor, quantum: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad [B, L] ids (id 0) and mask (0) to a multiple of ``quantum`` columns (padding is masked everywhere,
    so every row's result is unchanged)."""
    extra = -input_ids.shape[1] % quantum
    if extra == 0:
        return input_ids, attention_mask
    return F.pad(input_ids, (extra, 0), value=0), F.pad(attention_mask, (extra, 0), value=0)


def _split_tiles(input_ids: torch.Tensor, pixel_values: torch.Tensor, model, size: int) -> list[torch.Tensor]:
    """pixel_values of a batch split like its rows in slices of ``size`` (tiles follow the rows' image tokens)."""
    emb = model.config.embedding_config
    per_row = (input_ids == emb.img_context_token_id).sum(-1) // emb.tokens_per_tile  # [B] tiles per row
    bounds = torch.cumsum(per_row, 0).tolist()
    out, start = [], 0
    for s in range(0, input_ids.shape[0], size):
        end = bounds[min(s + size, input_ids.shape[0]) - 1]
        out.append(pixel_values[start:end])
        start = end
    return out


def fast_generator(model, impl: str = "auto") -> FastGenerator:
    """The model's :class:`FastGenerator` (created on first use and kept on the model, with its captured steps)."""
    gen = getattr(model, "_fast_generator", None)
    if gen is None or (impl != "auto" and gen.impl != impl):
        gen = FastGenerator(model, impl=impl)
        model._fast_generator = gen
    return gen
