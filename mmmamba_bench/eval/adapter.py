"""The lmms-eval model adapter: any checkpoint ``load_model`` reads, as lmms-eval model ``mmmamba``.

Registered through the ``lmms_eval.models`` entry point (the top-level module ``mmmamba_bench_lmms_eval``), so both
``lmms-eval --model mmmamba --model_args pretrained=PATH[,label=NAME,device=cuda,dtype=bfloat16,batch_size=8]``
and ``mmmamba-bench eval`` find it. ``pretrained`` may also name a model card in ``models/`` (e.g.
``pretrained=mmmamba-linear``).

- ``generate_until``: batched (left padding, grouped by generation settings), greedy unless the task asks for
  sampling, stop strings, ``max_new_tokens``.
- inputs: every request is measured before the first batch (its images decoded, its prompt tokenised: a corrupt
  image stops the run before any inference), but its tiles are built only when its batch runs and dropped after, so
  a whole benchmark never sits in memory as float32 tiles.
- ``loglikelihood``: the negative log-likelihood of the continuation after the prompt, returned as
  ``GenerationResult(text=(nll, is_greedy))``: lmms-eval 0.7.3 stringifies plain tuples, and its
  multiple-choice scoring takes the argmin, i.e. expects an NLL.
- data parallelism: under ``accelerate launch --multi_gpu --num_processes N`` (or torchrun) each process reports
  its rank and the world size, lmms-eval shards the requests and gathers the results on rank 0.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple

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


class NonFiniteLogits(RuntimeError):
    """The model produced NaN or infinite logits during evaluation: the run stops instead of scoring garbage."""


class BadRequestInput(ValueError):
    """A request's document cannot become model input (corrupt image, wrong type); the message names task and
    document."""


class RequestInput(NamedTuple):
    """What an lmms-eval request says about its model input."""
    context: str  # the prompt
    doc_to_visual: Any  # document -> image(s), or None
    doc_id: int
    task: str
    split: str


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


def position_limit(config) -> int | None:
    """The longest sequence the model's positions cover, or None when nothing bounds it.

    A stack with attention layers is bounded by its ``max_position_embeddings`` unless it applies ``rope_scaling``
    (HoVLE's dynamic NTK extends it; mmMamba ignores rope_scaling, see ``ChatConfig.applies_rope_scaling``); Mamba-2
    layers have no positions. Beyond the bound the model still runs, on positions it was never trained on.
    """
    limits = [stack.max_position_embeddings for stack in (config.embedding_config, config.llm_config)
              if "mha" in stack.block_types and not (stack.rope_scaling and config.applies_rope_scaling)]
    return min(limits) if limits else None


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
        device = self._join_processes(device or ("cuda" if torch.cuda.is_available() else "cpu"))
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
        """Several images: each tiled with its share of ``max_tiles``, one ``Image-k:`` block each (as VLMEvalKit
        evaluates InternVL-style models; see :mod:`mmmamba_bench.preprocessing`)."""
        return self.processor.encode_prompt(context, visuals or None)

    @contextmanager
    def _request_input(self, doc_id, task, split, *, before_inference: bool):
        """Any failure to build a request's input (a corrupt or truncated image, a visual that is not an image, a
        prompt the layout refuses) as a :class:`BadRequestInput` naming the task and document."""
        try:
            yield
        except BadRequestInput:
            raise
        except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
            when = ("The run stops before inference (every request's images are decoded before the first batch)"
                    if before_inference else "The run stops")
            raise BadRequestInput(f"task {task!r} doc {doc_id} (split {split!r}): cannot build the model input: "
                                  f"{type(exc).__name__}: {exc}. {when}; fix or drop this document") from exc

    def _measure_request(self, r: RequestInput) -> int:
        """How many positions a request's prompt takes. Its images are decoded (a corrupt one stops the run here,
        before any inference) but not tiled: no request's tiles are held before its batch (a Table-1 run asks ~50,000
        questions of up to 7 tiles, 17 MB each in float32)."""
        with self._request_input(r.doc_id, r.task, r.split, before_inference=True):
            if not isinstance(r.context, str):
                raise TypeError(f"the prompt is a {type(r.context).__name__}, not text")
            visuals = self._visuals(r.doc_to_visual, r.doc_id, r.task, r.split)
            for image in visuals:
                image.load()  # decodes the pixels: a truncated file fails here
            return len(self.processor.prompt_ids(r.context, self.processor.tile_counts(visuals)))

    def _encode_request(self, r: RequestInput, measured: int):
        """A request's prompt and images as model input, built when its batch runs; ``measured``: its length from
        :meth:`_measure_request`."""
        with self._request_input(r.doc_id, r.task, r.split, before_inference=False):
            enc = self._encode_prompt(r.context, self._visuals(r.doc_to_visual, r.doc_id, r.task, r.split))
        if len(enc.input_ids) != measured:  # the tile count predicted from the image size disagrees with the tiling
            raise RuntimeError(f"mmmamba adapter: task {r.task!r} doc {r.doc_id}: the prompt has {len(enc.input_ids)} "
                               f"tokens but {measured} were predicted before the run (a bug: please report it)")
        return enc

    def _input_stats(self) -> dict[str, Any]:
        """Counts about the inputs seen so far (created on first use): see :meth:`input_report`."""
        if "_inputs_seen" not in self.__dict__:  # the model is loaded now (lmms-eval's clean() deletes it at the end)
            self._inputs_seen = {"position_limit": position_limit(self.model.config), "over_position_limit": {},
                                 "warned": False}
        return self._inputs_seen

    def _check_lengths(self, lengths: list[tuple[str, int]]) -> None:
        """``lengths``: (task, positions a request uses). Requests beyond :func:`position_limit` are evaluated (the
        scores stay comparable with other harnesses) but counted per task, recorded in the results JSON
        (:meth:`input_report`), and warned about once per run."""
        stats = self._input_stats()
        limit = stats["position_limit"]
        if limit is None:
            return
        over: dict[str, int] = {}
        for task, n in lengths:
            if n > limit:
                over[task] = over.get(task, 0) + 1
        for task, n in over.items():
            stats["over_position_limit"][task] = stats["over_position_limit"].get(task, 0) + n
        if over and not stats["warned"]:
            stats["warned"] = True
            log.warning("mmmamba adapter: %d request(s) need more positions than the model's %d "
                        "(max_position_embeddings, no RoPE scaling): %s; they are evaluated on positions the model "
                        "was not trained on (counts per task recorded in the results JSON's \"mmmamba_bench\" key, "
                        "\"inputs\"; warned once per run)", sum(over.values()), limit,
                        ", ".join(f"{t}: {n}" for t, n in sorted(over.items())))

    def input_report(self) -> dict[str, Any]:
        """What the inputs of this run were like, for the results JSON: the position limit and, per task, how many
        requests went past it (prompt + max_new_tokens, or prompt + continuation)."""
        stats = self._input_stats()
        return {"position_limit": stats["position_limit"],
                "over_position_limit": dict(sorted(stats["over_position_limit"].items()))}

    def generate_until(self, requests) -> list[str]:
        from tqdm import tqdm

        from mmmamba_bench.generation import WatchLogits

        # every request measured first (a corrupt image stops the run before any inference); tiles are built per batch
        items, lengths = [], []
        for i, req in enumerate(requests):
            context, gen_kwargs, doc_to_visual, doc_id, task, split = req.args
            settings = parse_gen_kwargs(gen_kwargs, self.default_max_new_tokens)
            r = RequestInput(context, doc_to_visual, doc_id, task, split)
            n_prompt = self._measure_request(r)
            items.append((i, settings, n_prompt, r))
            lengths.append((task, n_prompt + settings.max_new_tokens))
        self._check_lengths(lengths)
        # Group identical settings, longest prompts first, so batches are dense.
        items.sort(key=lambda it: (repr(it[1]), -it[2]))
        out: list[str | None] = [None] * len(items)
        bar = tqdm(total=len(items), desc=f"{self.label}: generate", disable=self.rank != 0)
        start = 0
        while start < len(items):
            settings = items[start][1]
            end = start
            while end < len(items) and end - start < self.batch_size_per_gpu and items[end][1] == settings:
                end += 1
            chunk = items[start:end]
            encs = [self._encode_request(r, measured=n_prompt) for _, _, n_prompt, r in chunk]
            with WatchLogits() as watch:  # NaN / inf logits choosing tokens: flagged on the device, read once
                texts = self._generate_batch(encs, settings)
            del encs  # this batch's tiles
            if watch.found():
                raise NonFiniteLogits(f"the model produced NaN or infinite logits while answering the batch "
                                      f"{_name_docs((r.task, r.doc_id) for *_, r in chunk)}; its scores would be "
                                      f"meaningless, so the run stops (check the weights and the dtype)")
            for (i, *_), text in zip(chunk, texts):
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

        # every request checked first (a corrupt image or a bad continuation stops the run before any inference);
        # each request's tiles are built when it is scored
        inputs, lengths = [], []
        for req in requests:
            context, continuation, doc_to_visual, doc_id, task, split = req.args
            r = RequestInput(context, doc_to_visual, doc_id, task, split)
            n_prompt = self._measure_request(r)
            if not isinstance(continuation, str):
                raise BadRequestInput(f"task {task!r} doc {doc_id}: the continuation {continuation!r} is of type "
                                      f"{type(continuation).__name__}, not text (check the task's target column)")
            cont = self.processor.tokenizer.encode(continuation)
            if not cont:
                raise ValueError(f"task {task!r} doc {doc_id}: continuation {continuation!r} tokenizes to nothing")
            inputs.append((r, n_prompt, cont))
            lengths.append((task, n_prompt + len(cont)))
        self._check_lengths(lengths)
        results = []
        for r, n_prompt, cont in inputs:
            enc = self._encode_request(r, measured=n_prompt)
            ids = torch.tensor([enc.input_ids + cont], device=self._device)
            pv = None if enc.pixel_values is None else enc.pixel_values.to(self._device)
            logits = self.model(ids, pixel_values=pv).logits[0, n_prompt - 1:-1].float()  # [n_cont, V]
            if not bool(torch.isfinite(logits).all()):
                raise NonFiniteLogits(f"the model produced NaN or infinite logits while scoring "
                                      f"{_name_docs([(r.task, r.doc_id)])}; its scores would be meaningless, so the "
                                      f"run stops (check the weights and the dtype)")
            target = torch.tensor(cont, device=self._device)
            logp = torch.log_softmax(logits, dim=-1)
            nll = float(-logp.gather(-1, target[:, None]).sum())
            greedy = bool((logits.argmax(-1) == target).all())
            results.append(GenerationResult(text=(nll, greedy)))
        return results

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("mmmamba adapter: multi-round generation is not supported")


def _name_docs(where) -> str:
    """(task, doc_id) pairs -> "task 'a' docs [0, 3], task 'b' doc 7"."""
    by_task: dict[str, list] = {}
    for task, doc_id in where:
        by_task.setdefault(task, []).append(doc_id)
    return ", ".join(f"task {t!r} doc {ids[0]}" if len(ids) == 1 else f"task {t!r} docs {sorted(ids)}"
                     for t, ids in by_task.items())


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
