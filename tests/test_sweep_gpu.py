"""The sweep's measured cost on a CUDA GPU: the profiler's optimised decode of a checkpoint at each context, labelled
measured with the GPU's name, beside the floor at the measured copy bandwidth. GPU only (run through the device
tool)."""

from __future__ import annotations

import pytest
import torch

from mmmamba_bench.sweep.cost import MEASURED, MODELLED, measured_cost, resolve_mode

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_measured_cost_of_the_demo_teacher_and_its_linear_student(tmp_path):
    from mmmamba_bench.assets import models_dir
    from mmmamba_bench.seeding import convert

    teacher = models_dir() / "demo-teacher"
    student = convert(teacher, tmp_path / "linear", layout="linear")
    costs = {}
    for model in (teacher, student):
        profile = tmp_path / f"{model.name}.json"
        # the plain-PyTorch step: the Triton GEMV kernels need power-of-two row lengths, the demo MLP's 384 is not
        cost = measured_cost(model, [64, 1024], profile, steps=5, warmup=2, impl="torch")
        assert cost.source == MEASURED and cost.label == f"measured ({torch.cuda.get_device_name()})"
        assert [r.context for r in cost.rows] == [64, 1024] and profile.is_file()
        for r in cost.rows:
            assert r.status == "ok" and r.decode_ms_per_token > 0 and r.memory_bytes > 0
            assert r.floor_ms and r.decode_ms_per_token > r.floor_ms  # nothing beats the bandwidth floor
            assert r.detail["path"]["decode"] == "fast-torch"
        costs[model.name] = cost
    # the teacher's KV cache grows with the context, the linear student's state does not
    t, s = costs["demo-teacher"].rows, costs["linear"].rows
    assert t[1].bytes_per_step > t[0].bytes_per_step and s[1].bytes_per_step == s[0].bytes_per_step
    assert resolve_mode("auto", None) == MEASURED and resolve_mode("auto", "cpu") == MODELLED
