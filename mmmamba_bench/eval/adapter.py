"""The lmms-eval model adapter: any checkpoint ``load_model`` reads, as lmms-eval model ``mmmamba``.

Registered through the ``lmms_eval.models`` entry point (the top-level module ``mmmamba_bench_lmms_eval``), so both
``lmms-eval --model mmmamba --model_args pretrained=PATH[,label=NAME,device=cuda,dtype=bfloat16,batch_size=8]``
and ``mmmamba-bench eval`` find it. ``pretrained`` may also name a model card in ``models/`` (e.g.
``pretrained=mmmamba-linear``).

- ``generate_until``: batched (left padding, grouped by generation settings), greedy unless the task asks for
  sampling, stop strings, ``max_new_tokens``.
- ``loglikelihood``: the negative log-likelihood of the continuation after the prompt, returned as
  ``GenerationResult(text=(nll, is_greedy))``: lmms-eval 0.7.3 stringifies plain tuples, and its
  multiple-choice scoring takes the argmin, i.e. expects an NLL.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from mmmamba_bench.stopping import StopStrings, cut_at_stop

log = logging.getLogger(__name__)

MODEL_ID = "mmmamba"  # lmms-eval's name for this adapter (registered by the top-level mmmamba_bench_lmms_eval)
# How answers are computed (recorded with the scores): generate_until decodes greedily (or samples) with
# generation.generate, which runs one of two paths (model_arg fast_decode=auto|on|off; see generation.py): the eager
# per-token loop, or the batched prefill + batched decode step captured in a CUDA graph per batch-size bucket.
# loglikelihood scores a continuation with one full forward pass.
DECODE_PATH = "mmmamba_bench.generation.generate: prefill + one-token steps over a fixed-shape cache (eager)"
DECODE_PATH_FAST = ("mmmamba_bench.generation.generate -> fast.batched.FastGenerator: batched prefill + batched "
                    "decode step captured in a CUDA graph per batch-size bucket")
LOGLIKELIHOOD_PATH = "one full forward pass over prompt + continuation"


@dataclass(frozen=True)
class GenSettings:
    max_new_tokens: int
    do_sample: bool
    temperature: float
    top_p: float
    until: tuple[str, ...]


def parse_gen_kwargs(gen_kwargs: dict[str, Any], default_max_new_tokens: int) -> GenSettings:
    """lmms-eval's per-task generation kwargs -> our settings (unknown keys are ignored with a debug note)."""
    kw = dict(gen_kwargs or {})
    until = kw.pop("until", None)
    if isinstance(until, str):
        until = [until]
    num_beams = int(kw.pop("num_beams", 1) or 1)
    if num_beams != 1:
        raise ValueError(f"num_beams={num_beams} is not supported (greedy or sampling only)")
    temperature = float(kw.pop("temperature", 0.0) or 0.0)
    do_sample = bool(kw.pop("do_sample", False)) and temperature > 0
    top_p = kw.pop("top_p", None)
    max_new = int(kw.pop("max_new_tokens", default_max_new_tokens) or default_max_new_tokens)
    if kw:
        log.debug("ignoring generation kwargs %s", sorted(kw))
    return GenSettings(max_new, do_sample, temperature if do_sample else 1.0,
                       float(top_p) if (do_sample and top_p is not None) else 1.0, tuple(until or ()))




def _lmms_base():
    from lmms_eval.api.model import lmms

    return lmms


class MMMambaLMM(_lmms_base()):  # type: ignore[misc]
    """lmms-eval "simple" model over :func:`mmmamba_bench.load_model`."""

    is_simple = True

    def __init__(self, pretrained: str, label: str | None = None, device: str | None = None,
                 dtype: str = "auto", batch_size: int | str = 1, max_tiles: int | str = 6,
                 ssd_backend: str = "auto", max_new_tokens: int | str = 64, fast_decode: str = "auto",
                 **kwargs: Any) -> None:
        super().__init__()
        from mmmamba_bench.cards import resolve_model
        from mmmamba_bench.checkpoint import load_model
        from mmmamba_bench.processor import Processor

        if kwargs:
            log.warning("mmmamba adapter: ignoring unknown model_args %s", sorted(kwargs))
        path = resolve_model(pretrained)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        torch_dtype = _parse_dtype(dtype, device)
        self.model = load_model(path, device=device, dtype=torch_dtype, ssd_backend=ssd_backend)
        self.processor = Processor.from_pretrained(path, config=self.model.config, max_tiles=int(max_tiles))
        self.label = label or path.name
        self.batch_size_per_gpu = int(batch_size)
        self.default_max_new_tokens = int(max_new_tokens)
        self._device = torch.device(device)
        from mmmamba_bench.generation import choose_path

        self.fast_decode = str(fast_decode)
        self._fast, self._fast_why = choose_path(self.model, self.fast_decode)  # raises for "on" when it cannot run
        if not self._fast and self._device.type == "cuda":
            log.warning("mmmamba adapter: eager per-token decoding on %s: %s", device, self._fast_why)
        log.info("mmmamba adapter: %s (%s, %s layers) on %s %s, code path %s", self.label, self.model.config.kind,
                 self.model.config.num_layers, device, torch_dtype, self.model.code_path.as_dict())

    def code_path(self) -> dict[str, str]:
        """What computes this evaluation's answers: the model's kernels (SSD scan / state update, attention, conv),
        the decode path, whether a CUDA graph runs, the dtype and the device (recorded in the results JSON)."""
        from mmmamba_bench.provenance import device_name

        path = self.model.code_path.as_dict()
        if self._fast:
            from mmmamba_bench.fast.batched import BUCKETS, fast_generator

            gen = fast_generator(self.model)
            path.update(gen.path())
            decode = f"{DECODE_PATH_FAST} ({gen.impl} ops; buckets {','.join(map(str, BUCKETS))})"
            cuda_graph = "yes (per batch-size bucket)" if gen.graphs else "no"
        else:
            decode = f"{DECODE_PATH} ({self._fast_why})"
            cuda_graph = "no" if path.get("graph", "none") == "none" else "yes"
        return {**path, "decode": decode, "fast_decode": self.fast_decode, "loglikelihood": LOGLIKELIHOOD_PATH,
                "cuda_graph": cuda_graph,
                "dtype": str(self.model.dtype).replace("torch.", ""), "device": str(self._device),
                "device_name": device_name(self._device)}

    # ---- requests ------------------------------------------------------------------------------------------
    def _visuals(self, doc_to_visual, doc_id, task, split) -> list:
        if doc_to_visual is None:
            return []
        visuals = doc_to_visual(self.task_dict[task][split][doc_id])
        if visuals is None:
            return []
        visuals = list(visuals) if isinstance(visuals, (list, tuple)) else [visuals]
        for v in visuals:
            if not hasattr(v, "convert"):
                raise TypeError(f"task {task!r} doc {doc_id}: visual of type {type(v).__name__} is not an image")
        return visuals

    def _encode_prompt(self, context: str, visuals: list):
        if len(visuals) > 1:
            raise ValueError(f"{len(visuals)} images in one request: only one image per prompt is supported")
        return self.processor.encode_prompt(context, visuals[0] if visuals else None)

    def generate_until(self, requests) -> list[str]:
        from tqdm import tqdm

        items = []
        for i, req in enumerate(requests):
            context, gen_kwargs, doc_to_visual, doc_id, task, split = req.args
            settings = parse_gen_kwargs(gen_kwargs, self.default_max_new_tokens)
            enc = self._encode_prompt(context, self._visuals(doc_to_visual, doc_id, task, split))
            items.append((i, settings, enc))
        # Group identical settings, longest prompts first, so batches are dense.
        items.sort(key=lambda it: (repr(it[1]), -len(it[2].input_ids)))
        out: list[str | None] = [None] * len(items)
        bar = tqdm(total=len(items), desc=f"{self.label}: generate", disable=self.rank != 0)
        start = 0
        while start < len(items):
            settings = items[start][1]
            end = start
            while end < len(items) and end - start < self.batch_size_per_gpu and items[end][1] == settings:
                end += 1
            chunk = items[start:end]
            for (i, _, _), text in zip(chunk, self._generate_batch([c[2] for c in chunk], settings)):
                out[i] = text
            bar.update(len(chunk))
            start = end
        bar.close()
        return [t if t is not None else "" for t in out]

    @torch.no_grad()
    def _generate_batch(self, encs, s: GenSettings) -> list[str]:
        batch = self.processor.collate(encs).to(self._device)
        L = batch.input_ids.shape[1]
        stop = StopStrings(self.processor.decode, s.until) if any(s.until) else None
        out = self.model.generate(input_ids=batch.input_ids, pixel_values=batch.pixel_values,
                                  attention_mask=batch.attention_mask, max_new_tokens=s.max_new_tokens,
                                  do_sample=s.do_sample, temperature=s.temperature, top_p=s.top_p,
                                  eos_token_id=self.processor.tokenizer.eos_token_id, stop=stop,
                                  fast="on" if self._fast else "off")
        return [cut_at_stop(self.processor.decode(row[L:]), s.until) for row in out]

    @torch.no_grad()
    def loglikelihood(self, requests) -> list:
        from lmms_eval.api.instance import GenerationResult

        results = []
        for req in requests:
            context, continuation, doc_to_visual, doc_id, task, split = req.args
            enc = self._encode_prompt(context, self._visuals(doc_to_visual, doc_id, task, split))
            cont = self.processor.tokenizer.encode(continuation)
            if not cont:
                raise ValueError(f"task {task!r} doc {doc_id}: continuation {continuation!r} tokenizes to nothing")
            ids = torch.tensor([enc.input_ids + cont], device=self._device)
            pv = None if enc.pixel_values is None else enc.pixel_values.to(self._device)
            logits = self.model(ids, pixel_values=pv).logits[0, len(enc.input_ids) - 1:-1].float()  # [n_cont, V]
            target = torch.tensor(cont, device=self._device)
            logp = torch.log_softmax(logits, dim=-1)
            nll = float(-logp.gather(-1, target[:, None]).sum())
            greedy = bool((logits.argmax(-1) == target).all())
            results.append(GenerationResult(text=(nll, greedy)))
        return results

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("mmmamba adapter: multi-round generation is not supported")


def _parse_dtype(dtype: str, device: str) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16, "float64": torch.float64}
    if dtype not in table:
        raise ValueError(f"unknown dtype {dtype!r}; choose from {sorted(table)} or 'auto'")
    return table[dtype]
