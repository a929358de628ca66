"""transformers' Auto classes load our released-layout directories (after ``import mmmamba_bench``), without
``trust_remote_code``, as the same model with the same weights and logits as :func:`mmmamba_bench.load_model`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

import mmmamba_bench  # noqa: F401  (registers with transformers)
from mmmamba_bench.checkpoint import CheckpointError, load_model, save_model
from mmmamba_bench.config import ConfigError
from tests.helpers import image_prompt, random_model

transformers = pytest.importorskip("transformers")
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

REPO = Path(__file__).resolve().parents[1]
KINDS = {"transformer": ("internvl_chat", "HoVLEForCausalLM"), "linear": ("mmMamba_chat", "MMMambaForCausalLM"),
         "hybrid": ("mmMamba_chat", "MMMambaForCausalLM")}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """kind -> a float32 checkpoint written by save_model (the hybrid with encoder-output normalisation)."""
    root = tmp_path_factory.mktemp("hf")
    return {kind: save_model(random_model(kind, torch.float32, normalize=(kind == "hybrid")), root / kind)
            for kind in KINDS}


def _copy(src: Path, dst: Path, edit=None) -> Path:
    shutil.copytree(src, dst)
    if edit is not None:
        state = load_file(str(dst / "model.safetensors"))
        edit(state)
        save_file(state, str(dst / "model.safetensors"))
    return dst


@pytest.mark.parametrize("kind", list(KINDS))
def test_auto_classes_give_the_same_model_and_logits(saved, kind):
    path = saved[kind]
    model_type, class_name = KINDS[kind]
    config = AutoConfig.from_pretrained(path)
    assert config.model_type == model_type and config.chat_config.kind == kind
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    assert type(model).__name__ == class_name and model.dtype == torch.float32 and not model.training
    assert type(AutoModel.from_pretrained(path, dtype=torch.float32)) is type(model)
    ref = load_model(path, dtype=torch.float32)
    # parameter names are the checkpoint's tensor names, and every value is the file's
    on_disk = load_file(str(path / "model.safetensors"))
    state = model.state_dict()
    assert set(state) == set(on_disk)
    assert all(torch.equal(state[name], on_disk[name]) for name in on_disk)
    ids, pv = image_prompt(ref, n_tiles=2, text_len=9)
    with torch.no_grad():
        got = model(input_ids=ids, pixel_values=pv).logits
        want = ref(ids, pixel_values=pv).logits
    assert got.shape == want.shape and torch.equal(got, want)  # one implementation: bit-identical
    assert torch.equal(model.generate(ids, pixel_values=pv, max_new_tokens=5),
                       ref.generate(ids, pixel_values=pv, max_new_tokens=5))
    assert model.code_path.rope == ref.code_path.rope


def test_dtype_auto_is_the_checkpoint_dtype_and_save_pretrained_writes_the_released_layout(saved, tmp_path):
    bf16 = save_model(load_model(saved["hybrid"]), tmp_path / "bf16", dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(bf16)  # dtype="auto" (transformers 5 default): torch_dtype
    assert model.dtype == torch.bfloat16
    model.save_pretrained(tmp_path / "again")
    assert json.loads((tmp_path / "again" / "config.json").read_text()) == json.loads((bf16 / "config.json").read_text())
    back = load_model(tmp_path / "again", dtype=torch.bfloat16)
    assert all(torch.equal(t, model.state_dict()[n]) for n, t in back.state_dict().items())


def test_labels_give_the_shifted_next_token_loss(saved):
    model = AutoModelForCausalLM.from_pretrained(saved["linear"], dtype=torch.float32)
    ids, pv = image_prompt(model.core, n_tiles=1, text_len=6)
    labels = ids.clone()
    labels[:, : ids.shape[1] - 3] = -100  # loss on the last 3 tokens: predicted at positions L-4 .. L-2
    out = model(input_ids=ids, pixel_values=pv, labels=labels)
    want = F.cross_entropy(out.logits[0, -4:-1], ids[0, -3:])
    assert torch.allclose(out.loss, want, rtol=1e-6, atol=0)


def test_a_missing_tensor_is_an_error_not_a_fresh_initialisation(saved, tmp_path):
    name = "language_model.model.layers.1.attention.wo.weight"  # hybrid: LM layers mamba2, mha
    path = _copy(saved["hybrid"], tmp_path / "missing", lambda state: state.pop(name))
    with pytest.raises(CheckpointError, match=f"missing tensor\\(s\\) for this config: {name}"):
        AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def test_a_misshaped_tensor_is_an_error(saved, tmp_path):
    path = _copy(saved["linear"], tmp_path / "shape",
                 lambda state: state.__setitem__("language_model.model.norm.weight", torch.ones(7)))
    with pytest.raises((CheckpointError, RuntimeError), match="ignore_mismatched_sizes|shaped differently"):
        AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def test_a_tensor_the_model_would_drop_is_an_error(saved, tmp_path):
    name = "embedding_model.encoder.0.attention.wqkv.bias"

    def add_bias(state):
        state[name] = torch.zeros(state[name.replace("bias", "weight")].shape[0])

    path = _copy(saved["transformer"], tmp_path / "bias", add_bias)
    with pytest.raises(CheckpointError, match="belong to modules this config builds without them"):
        AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def test_from_config_builds_the_model_and_trust_remote_code_still_gets_ours(saved):
    config = AutoConfig.from_pretrained(saved["hybrid"], trust_remote_code=True)
    model = AutoModelForCausalLM.from_config(config)
    assert type(model).__name__ == "MMMambaForCausalLM" and model.core.config.block_types == config.chat_config.block_types


def test_another_internvl_checkpoint_is_refused_with_directions(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "internvl_chat", "vision_config": {"hidden_size": 1024},
        "llm_config": {"architectures": ["InternLM2ForCausalLM"]},
        "auto_map": {"AutoConfig": "configuration_internvl_chat.InternVLChatConfig"}}))
    with pytest.raises(ConfigError, match=r"no 'embedding_config' field \(it has 'vision_config'.*"
                                          r"HoVLE-layout checkpoints only.*mmmamba_bench\.hf\.unregister\(\)") as err:
        AutoConfig.from_pretrained(tmp_path)
    assert str(tmp_path / "config.json") in str(err.value)


def test_register_is_idempotent_and_unregister_removes_only_ours():
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    from mmmamba_bench.hf import register, unregister
    from mmmamba_bench.hf.configuration import HoVLEChatConfig, MMMambaChatConfig

    register(processor=False)
    register(processor=False)
    try:
        assert CONFIG_MAPPING["internvl_chat"] is HoVLEChatConfig and CONFIG_MAPPING["mmMamba_chat"] is MMMambaChatConfig
        unregister()
        assert "internvl_chat" not in CONFIG_MAPPING and "mmMamba_chat" not in CONFIG_MAPPING
        assert HoVLEChatConfig not in MODEL_FOR_CAUSAL_LM_MAPPING and "llama" in CONFIG_MAPPING
    finally:
        register(processor=False)
    assert MMMambaChatConfig in MODEL_FOR_CAUSAL_LM_MAPPING


def test_auto_processor_gives_our_processor_after_register():
    from transformers import AutoProcessor

    from mmmamba_bench.hf import register
    from mmmamba_bench.processor import Processor

    register()  # import mmmamba_bench leaves AutoProcessor out (its import cost)
    teacher = REPO / "models" / "demo-teacher"
    processor = AutoProcessor.from_pretrained(teacher, max_tiles=2)
    assert isinstance(processor, Processor) and processor.max_tiles == 2
    assert processor.config.to_dict() == Processor.from_pretrained(teacher).config.to_dict()


def _python(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=REPO,
                         timeout=300, check=False)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_import_registers_configs_without_importing_model_or_processor_code():
    got = _python("""
        import sys
        import mmmamba_bench
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING
        print(CONFIG_MAPPING["internvl_chat"].__name__, CONFIG_MAPPING["mmMamba_chat"].__name__,
              "transformers.modeling_utils" in sys.modules, "transformers.models.auto.processing_auto" in sys.modules,
              "mmmamba_bench.model.stack" in sys.modules)
    """)
    assert got == "HoVLEChatConfig MMMambaChatConfig False False False"


def test_import_without_transformers_skips_registration_silently():
    got = _python("""
        import importlib.util, sys, warnings
        real = importlib.util.find_spec
        importlib.util.find_spec = lambda name, *a: None if name == "transformers" else real(name, *a)
        warnings.simplefilter("error")
        import mmmamba_bench
        print("torch" in sys.modules, "transformers" in sys.modules)
    """)
    assert got == "False False"


def test_non_finite_weights_are_refused_through_transformers_too(tmp_path):
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    import mmmamba_bench  # noqa: F401  (registers the classes)
    from mmmamba_bench.checkpoint import CheckpointError, save_model
    from tests.helpers import random_model

    out = save_model(random_model("linear", torch.float32), tmp_path / "ckpt")
    tensors = load_file(str(out / "model.safetensors"))
    name = "language_model.output.weight"
    tensors[name][0, 0] = float("nan")
    save_file(tensors, str(out / "model.safetensors"))
    with pytest.raises(CheckpointError, match=f"tensor '{name}' holds NaN"):
        AutoModelForCausalLM.from_pretrained(out)
