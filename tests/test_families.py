"""What config.json says for each released family (HoVLE / mmMamba), and the fields we refuse.

The expected values are the released code's (``checkpoint_format.md``, hustvl/mmMamba ``convert_weight.py`` and
``hovle/configuration_*.py``), written out here rather than read from :mod:`mmmamba_bench.families`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mmmamba_bench.checkpoint import CheckpointError, load_model, save_model
from mmmamba_bench.config import ChatConfig, ConfigError, preset
from mmmamba_bench.seeding import convert
from tests.helpers import random_model

REPO = Path(__file__).resolve().parents[1]

HOVLE_TOP = {"model_type": "internvl_chat", "architectures": ["InternVLChatModel"],
             "auto_map": {"AutoConfig": "configuration_internvl_chat.InternVLChatConfig",
                          "AutoModel": "modeling_internvl_chat.InternVLChatModel",
                          "AutoModelForCausalLM": "modeling_internvl_chat.InternVLChatModel"}}
HOVLE_LLM = {"model_type": "internlm2", "architectures": ["InternLM2ForCausalLM"], "bias": False,
             "attention_bias": False, "mlp_bias": False,
             "auto_map": {"AutoConfig": "configuration_internlm2.InternLM2Config",
                          "AutoModel": "modeling_internlm2.InternLM2ForCausalLM",
                          "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM"}}
MMMAMBA_TOP = {"model_type": "mmMamba_chat", "architectures": "mmMambaChatModel",
               "auto_map": {"AutoConfig": "configuration_mmMamba_chat.mmMambaChatConfig",
                            "AutoModel": "modeling_mmMamba_chat.mmMambaChatModel",
                            "AutoModelForCausalLM": "modeling_mmMamba_chat.mmMambaChatModel"}}
MMMAMBA_LLM = {"model_type": "mmMamba", "architectures": "mmMambaForCausalLM", "bias": False,
               "attention_bias": False, "mlp_bias": False,
               "auto_map": {"AutoConfig": "configuration_mmMamba.mmMambaConfig",
                            "AutoModel": "modeling_mmMamba.mmMambaForCausalLM",
                            "AutoModelForCausalLM": "modeling_mmMamba.mmMambaForCausalLM"}}


def _written(path) -> dict:
    return json.loads((path / "config.json").read_text())


def _assert_subset(expected: dict, got: dict, where: str) -> None:
    for key, value in expected.items():
        assert got.get(key) == value, (where, key, got.get(key), value)


def _assert_embedding(emb: dict, model_type: str) -> None:
    _assert_subset({"model_type": model_type, "use_ls": False, "attention_bias": False, "mlp_bias": False},
                   emb, "embedding_config")
    assert emb["llm_hidden_size"] == emb["hidden_size"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A HoVLE-family (all attention) checkpoint written by save_model, dynamic RoPE scaling as in HoVLE-2.6B."""
    model = random_model("transformer", torch.float32)
    for sub in (model.config.embedding_config, model.config.llm_config):
        sub.rope_scaling = {"type": "dynamic", "factor": 2}  # an int factor: InternLM2Config wants a float
    return save_model(model, tmp_path_factory.mktemp("families") / "teacher")


def test_teacher_is_written_as_hovle(teacher):
    cfg = _written(teacher)
    _assert_subset(HOVLE_TOP, cfg, "top")
    _assert_subset(HOVLE_LLM, cfg["llm_config"], "llm_config")
    _assert_embedding(cfg["embedding_config"], "holistic_embedding")
    assert cfg["torch_dtype"] == "float32"
    assert "layers_block_type" not in cfg["embedding_config"] and "layers_block_type" not in cfg["llm_config"]
    for sub in ("embedding_config", "llm_config"):  # InternLM2Config: exactly {type, factor} with a float factor
        scaling = cfg[sub]["rope_scaling"]
        assert scaling == {"type": "dynamic", "factor": 2.0} and isinstance(scaling["factor"], float)
    assert ChatConfig.from_json_file(teacher / "config.json").family.name == "HoVLE"


@pytest.mark.parametrize("layout", ["linear", "hybrid", "mha,mha,mha,mha"])
def test_converted_student_is_mmmamba_whatever_its_layout(teacher, tmp_path, layout):
    out = convert(teacher, tmp_path / "student", layout=layout)
    cfg = _written(out)
    _assert_subset(MMMAMBA_TOP, cfg, "top")
    _assert_subset(MMMAMBA_LLM, cfg["llm_config"], "llm_config")
    _assert_embedding(cfg["embedding_config"], "mmMamba_embedding")
    types = layout.split(",") if "," in layout else None
    got = cfg["embedding_config"]["layers_block_type"] + cfg["llm_config"]["layers_block_type"]
    assert len(got) == 4 and (types is None or got == types)
    assert cfg["torch_dtype"] == "float32"


def test_torch_dtype_is_the_dtype_written(tmp_path):
    out = save_model(random_model("linear", torch.float32), tmp_path / "bf16", dtype=torch.bfloat16)
    assert _written(out)["torch_dtype"] == "bfloat16"
    assert {t.dtype for t in load_file(str(out / "model.safetensors")).values()} == {torch.bfloat16}


def test_rewriting_keeps_unknown_fields_and_the_family_values(teacher, tmp_path):
    cfg = _written(teacher)
    cfg["auto_map"]["AutoProcessor"] = "processing_x.XProcessor"  # an entry we do not own survives
    cfg["llm_config"]["pad_token_id"] = 0
    cfg["embedding_config"]["rope_scaling"] = {"rope_type": "linear", "factor": 4}
    path = tmp_path / "edited"
    shutil.copytree(teacher, path)
    (path / "config.json").write_text(json.dumps(cfg))
    again = _written(save_model(load_model(path), tmp_path / "again"))
    assert again["auto_map"]["AutoProcessor"] == "processing_x.XProcessor"
    _assert_subset(HOVLE_TOP["auto_map"], again["auto_map"], "auto_map")
    assert again["llm_config"]["pad_token_id"] == 0
    assert again["embedding_config"]["rope_scaling"] == {"type": "linear", "factor": 4.0}


def test_legacy_hovle_model_type_reads_as_hovle_and_is_written_as_internvl_chat(teacher, tmp_path):
    cfg = _written(teacher)
    cfg["model_type"], cfg["architectures"] = "hovle", "mmMambaChatModel"  # what this project wrote before
    path = tmp_path / "legacy"
    shutil.copytree(teacher, path)
    (path / "config.json").write_text(json.dumps(cfg))
    model = load_model(path)
    assert model.config.family.name == "HoVLE" and model.config.applies_rope_scaling
    _assert_subset(HOVLE_TOP, _written(save_model(model, tmp_path / "out")), "top")


def test_presets_and_demo_teacher_carry_the_released_hovle_values():
    for name in ("hovle-2.6b", "tiny", "demo"):
        cfg = preset(name).to_dict()
        _assert_subset(HOVLE_TOP, cfg, name)
        _assert_subset(HOVLE_LLM, cfg["llm_config"], name)
    for name in ("mmmamba-linear", "mmmamba-hybrid"):
        _assert_subset(MMMAMBA_TOP, preset(name).to_dict(), name)
    on_disk = REPO / "models" / "demo-teacher" / "config.json"
    written = json.loads(on_disk.read_text())
    _assert_subset({**HOVLE_TOP, "torch_dtype": "float32"}, written, "demo-teacher")
    _assert_subset(HOVLE_LLM, written["llm_config"], "demo-teacher llm_config")
    _assert_embedding(written["embedding_config"], "holistic_embedding")
    assert ChatConfig.from_json_file(on_disk).to_dict() == written  # nothing left to stamp


# ---- refused fields ----------------------------------------------------------------------------------------------

REFUSED = [
    (("llm_config", "bias"), True, r"llm_config\.bias is true"),
    (("llm_config", "attention_bias"), True, r"llm_config\.attention_bias is true"),
    (("embedding_config", "attention_bias"), True, r"embedding_config\.attention_bias is true"),
    (("embedding_config", "mlp_bias"), True, r"embedding_config\.mlp_bias is true"),
    (("embedding_config", "use_ls"), True, r"embedding_config\.use_ls is true: LayerScale"),
    (("ps_version",), "v3", r"ps_version 'v3' is not supported"),
    (("use_llm_lora",), 16, r"use_llm_lora=16 wraps the model in LoRA"),
    (("llm_config", "rope_scaling"), {"type": "dynamic", "factor": 0.5}, r"llm_config\.rope_scaling factor"),
    (("llm_config", "rope_scaling"), {"type": "dynamic", "factor": "2"}, r"llm_config\.rope_scaling factor"),
    (("model_type",), "internvl_chat", r"model_type 'internvl_chat' \(HoVLE\) but layers_block_type lists Mamba-2"),
]


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    return save_model(random_model("hybrid", torch.float32), tmp_path_factory.mktemp("families") / "student")


@pytest.mark.parametrize("keys, value, message", REFUSED, ids=[".".join(r[0]) + "=" + str(r[1]) for r in REFUSED])
def test_unimplemented_fields_are_refused_naming_file_and_field(student, tmp_path, keys, value, message):
    cfg = _written(student)
    target = cfg
    for key in keys[:-1]:
        target = target[key]
    target[keys[-1]] = value
    path = tmp_path / "bad"
    shutil.copytree(student, path)
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match=message) as err:
        load_model(path)
    assert str(path / "config.json") in str(err.value)


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_both_pixel_shuffle_versions_load_and_compute_the_same(student, tmp_path, version):
    """The released code applies the v2 shuffle whatever ps_version says; so do we."""
    cfg = _written(student)
    cfg["ps_version"] = version
    path = tmp_path / version
    shutil.copytree(student, path)
    (path / "config.json").write_text(json.dumps(cfg))
    ref = load_model(student)
    model = load_model(path)
    cfg_e = model.config.embedding_config
    ids = torch.tensor([[cfg_e.special_token_maps["<img>"]] + [cfg_e.img_context_token_id] * cfg_e.tokens_per_tile
                        + [cfg_e.special_token_maps["</img>"], 5, 6]])
    pv = torch.randn(1, 3, cfg_e.image_size, cfg_e.image_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(ids, pv).logits, ref(ids, pv).logits)


def test_a_bias_tensor_of_a_bias_free_module_is_refused(student, tmp_path):
    """A mislabelled checkpoint (biases on disk, config without ``bias``) must not load without its biases."""
    path = tmp_path / "with_bias"
    shutil.copytree(student, path)
    state = load_file(str(path / "model.safetensors"))
    name = "language_model.model.layers.1.attention.wqkv.bias"  # the hybrid's LM layers: mamba2, mha
    state[name] = torch.zeros(state[name.replace(".bias", ".weight")].shape[0])
    state["language_model.model.layers.1.attention.rotary_emb.inv_freq"] = torch.ones(4)  # a released extra: fine
    save_file(state, str(path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"wqkv\.bias'\] belong to modules this config builds without them"):
        load_model(path)
