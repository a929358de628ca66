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
- data parallelism: under ``accelerate launch --multi_gpu --num_processes N`` (or torchrun) each process reports
  its rank and the world size, lmms-eval shards the requests and gathers the results on rank 0.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch

log = logging.getLogger(__name__)

MODEL_ID = "mmmamba"  # lmms-eval's name for this adapter (registered by the top-level mmmamba_bench_lmms_eval)
# How answers are computed (recorded with the scores): generate_until decodes greedily (or samples) with
# generation.generate, a prefill then one-token steps over a cache allocated up front, in eager PyTorch;
# loglikelihood scores a continuation with one full forward pass.
DECODE_PATH = "mmmamba_bench.generation.generate: prefill + one-token steps over a fixed-shape cache (eager)"
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


def cut_at_stop(text: str, until: tuple[str, ...]) -> str:
    """Truncate ``text`` at the first occurrence of any stop string."""
    cut = len(text)
    for s in until:
        if s:
            i = text.find(s)
            if i != -1:
                cut = min(cut, i)
    return text[:cut]


def _lmms_base():
    from lmms_eval.api.model import lmms

    return lmms


class MMMambaLMM(_lmms_base()):  # type: ignore[misc]
    """lmms-eval "simple" model over :func:`mmmamba_bench.load_model`."""

    is_simple = True

    def __init__(self, pretrained: str, label: str | None = None, device: str | None = None,
                 dtype: str = "auto", batch_size: int | str = 1, max_tiles: int | str = 6,
                 ssd_backend: str = "auto", max_new_tokens: int | str = 64, **kwargs: Any) -> None:
        super().__init__()
        from mmmamba_bench.cards import resolve_model
        from mmmamba_bench.checkpoint import load_model
        from mmmamba_bench.processor import Processor

        if kwargs:
            log.warning("mmmamba adapter: ignoring unknown model_args %s", sorted(kwargs))
        path = resolve_model(pretrained)
        device = self._join_processes(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        torch_dtype = _parse_dtype(dtype, device)
        self.model = load_model(path, device=device, dtype=torch_dtype, ssd_backend=ssd_backend)
        self.processor = Processor.from_pretrained(path, config=self.model.config, max_tiles=int(max_tiles))
        self.label = label or path.name
        self.batch_size_per_gpu = int(batch_size)
        self.default_max_new_tokens = int(max_new_tokens)
        self._device = torch.device(device)
        log.info("mmmamba adapter: %s (%s, %s layers) on %s %s, code path %s", self.label, self.model.config.kind,
                 self.model.config.num_layers, device, torch_dtype, self.model.code_path.as_dict())

    def _join_processes(self, device: str) -> str:
        """Take this process's rank and world size when a launcher started several (data parallelism), as lmms-eval's
        own models do; returns the device this process evaluates on.

        ``accelerate launch --multi_gpu --num_processes N`` (or ``torchrun``) starts N copies of the program with
        ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` set; lmms-eval reads ``WORLD_SIZE`` to shard the requests and
        gathers the results on rank 0 through ``self.accelerator``. Each process loads the whole model on its own
        device (``cuda`` becomes ``cuda:<local rank>``; on ``cpu`` the processes form a gloo group): nothing is
        wrapped for training. A lone process (no ``WORLD_SIZE`` or 1) is rank 0 of 1 and touches no accelerate state.
        """
        launched = launched_world_size()
        if launched == 1:
            return device
        from accelerate import Accelerator, DistributedType

        on_cpu = torch.device(device).type == "cpu"
        accelerator = Accelerator(cpu=on_cpu)  # cpu=True: accelerate joins the processes through gloo
        expected = DistributedType.MULTI_CPU if on_cpu else DistributedType.MULTI_GPU
        if accelerator.num_processes != launched or accelerator.distributed_type != expected:
            hint = (f"on CPU, set ACCELERATE_USE_CPU=true for the launch (`ACCELERATE_USE_CPU=true accelerate launch "
                    f"--multi_gpu --num_processes {launched} ...`): lmms-eval's command line sets accelerate up "
                    f"before the model, for GPUs unless told otherwise" if on_cpu else
                    f"launch with `accelerate launch --multi_gpu --num_processes {launched} ...` or torchrun")
            raise RuntimeError(
                f"mmmamba adapter: started as one of WORLD_SIZE={launched} processes on {device}, but accelerate set "
                f"up {accelerator.distributed_type} with {accelerator.num_processes} process(es) (expected "
                f"{expected}); {hint}")
        if not on_cpu:
            if torch.device(device).index is not None:
                raise ValueError(f"device={device} with {launched} processes would put every process on one GPU; "
                                 f"pass device=cuda (each process takes the GPU of its local rank)")
            if accelerator.local_process_index >= torch.cuda.device_count():
                raise RuntimeError(f"mmmamba adapter: local rank {accelerator.local_process_index} has no GPU "
                                   f"({torch.cuda.device_count()} visible)")
            device = f"cuda:{accelerator.local_process_index}"
        self.accelerator = accelerator
        self._rank = accelerator.process_index
        self._world_size = accelerator.num_processes
        if self._rank == 0:
            log.info("mmmamba adapter: data parallel over %d processes (%s)", self._world_size,
                     accelerator.distributed_type)
        return device

    @property
    def device(self) -> torch.device:
        """This process's device (lmms-eval puts the tensors of its cross-process gathers on it)."""
        return self._device

    def code_path(self) -> dict[str, str]:
        """What computes this evaluation's answers: the model's kernels (SSD scan / state update, attention, conv),
        the decode path, whether a CUDA graph runs, the dtype and the device (recorded in the results JSON)."""
        from mmmamba_bench.provenance import device_name

        path = self.model.code_path.as_dict()
        return {**path, "decode": DECODE_PATH, "loglikelihood": LOGLIKELIHOOD_PATH,
                "cuda_graph": "no" if path.get("graph", "none") == "none" else "yes",
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
        def hit_stop_string(new_tokens: torch.Tensor) -> torch.Tensor:
            texts = [self.processor.decode(row) for row in new_tokens]
            return torch.tensor([any(u in t for u in s.until if u) for t in texts], device=new_tokens.device)

        stop = hit_stop_string if s.until else None
        out = self.model.generate(input_ids=batch.input_ids, pixel_values=batch.pixel_values,
                                  attention_mask=batch.attention_mask, max_new_tokens=s.max_new_tokens,
                                  do_sample=s.do_sample, temperature=s.temperature, top_p=s.top_p,
                                  eos_token_id=self.processor.tokenizer.eos_token_id, stop=stop)
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


def launched_world_size() -> int:
    """How many processes the launcher started (``WORLD_SIZE``, which lmms-eval's evaluator also reads); 1 alone."""
    text = os.environ.get("WORLD_SIZE", "1").strip() or "1"
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"WORLD_SIZE={text!r} is not a positive integer")
    return int(text)


def _parse_dtype(dtype: str, device: str) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16, "float64": torch.float64}
    if dtype not in table:
        raise ValueError(f"unknown dtype {dtype!r}; choose from {sorted(table)} or 'auto'")
    return table[dtype]
