"""Checkpoint I/O: round trips in the released layout and clear errors on bad input."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from mmmamba_bench.checkpoint import CheckpointError, load_model, save_model
from mmmamba_bench.config import ConfigError
from tests.helpers import random_model


@pytest.fixture
def saved(tmp_path):
    model = random_model("hybrid", torch.float32)
    return model, save_model(model, tmp_path / "ckpt")


@pytest.mark.parametrize("shard", [None, 20_000])
def test_round_trip_is_bit_exact(tmp_path, shard):
    model = random_model("hybrid", torch.float32)
    out = save_model(model, tmp_path / "ckpt", max_shard_bytes=shard)
    if shard:
        assert (out / "model.safetensors.index.json").is_file() and len(list(out.glob("*.safetensors"))) > 2
    loaded = load_model(out)
    ref = model.state_dict()
    assert set(loaded.state_dict()) == set(ref)
    assert all(torch.equal(t, ref[n]) for n, t in loaded.state_dict().items())
    # written back again, the files hold the same tensors and the config the same JSON
    again = save_model(loaded, tmp_path / "again", max_shard_bytes=shard)
    assert json.loads((again / "config.json").read_text()) == json.loads((out / "config.json").read_text())


def test_bf16_on_disk_loads_as_float32(tmp_path):
    model = random_model("linear", torch.float32)
    out = save_model(model, tmp_path / "bf16", dtype=torch.bfloat16)
    assert next(iter(load_file(str(out / "model.safetensors")).values())).dtype == torch.bfloat16
    loaded = load_model(out, dtype=torch.float32)
    for n, t in loaded.state_dict().items():
        assert t.dtype == torch.float32 and torch.equal(t, model.state_dict()[n].bfloat16().float())


def test_unknown_config_fields_survive(tmp_path, saved):
    _, out = saved
    cfg = json.loads((out / "config.json").read_text())
    cfg["architectures"] = ["mmMambaChatModel"]
    cfg["some_future_field"] = {"a": 1}
    cfg["llm_config"]["bias"] = False
    (out / "config.json").write_text(json.dumps(cfg))
    loaded = load_model(out)
    back = save_model(loaded, tmp_path / "back")
    again = json.loads((back / "config.json").read_text())
    assert again["some_future_field"] == {"a": 1} and again["llm_config"]["bias"] is False
    assert again["architectures"] == ["mmMambaChatModel"]


def test_missing_config_field_is_named(saved):
    _, out = saved
    cfg = json.loads((out / "config.json").read_text())
    del cfg["llm_config"]["num_key_value_heads"]
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="llm_config: missing field 'num_key_value_heads'"):
        load_model(out)


def test_layout_length_mismatch_in_config(saved):
    _, out = saved
    cfg = json.loads((out / "config.json").read_text())
    cfg["llm_config"]["layers_block_type"] = ["mha"]
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="layers_block_type has 1 entries but num_hidden_layers is 2"):
        load_model(out)


def _rewrite(out, edit):
    tensors = load_file(str(out / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(out / "model.safetensors"))


def test_misshaped_tensor_is_named(saved):
    _, out = saved
    name = "language_model.model.layers.0.attention.wvkqgdt.weight"
    _rewrite(out, lambda t: t.__setitem__(name, t[name][:-1]))
    with pytest.raises(CheckpointError, match=f"tensor '{name}' has shape"):
        load_model(out)


def test_missing_tensor_is_named(saved):
    _, out = saved
    name = "embedding_model.encoder.1.attention.dt_bias"
    _rewrite(out, lambda t: t.pop(name))
    with pytest.raises(CheckpointError, match=f"missing tensor\\(s\\) for this config: {name}"):
        load_model(out)


def test_truncated_safetensors_names_the_file(saved):
    _, out = saved
    f = out / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors: cannot read safetensors file"):
        load_model(out)


def test_missing_shard_and_directory(tmp_path):
    model = random_model("linear", torch.float32)
    out = save_model(model, tmp_path / "sharded", max_shard_bytes=20_000)
    next(out.glob("model-00002-*.safetensors")).unlink()
    with pytest.raises(CheckpointError, match="names shard\\(s\\) that do not exist"):
        load_model(out)
    with pytest.raises(FileNotFoundError, match="checkpoint directory not found"):
        load_model(tmp_path / "nope")


def test_existing_output_refused_and_overwrite_is_atomic(tmp_path, saved):
    model, out = saved
    with pytest.raises(FileExistsError, match="already exists"):
        save_model(model, out)
    save_model(model, out, overwrite=True)
    assert load_model(out) is not None
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp / backup dirs left


def test_interrupted_save_leaves_nothing(tmp_path, monkeypatch):
    model = random_model("linear", torch.float32)
    import mmmamba_bench.checkpoint as ck

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(ck, "save_file", boom)
    with pytest.raises(KeyboardInterrupt):
        save_model(model, tmp_path / "x")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("bad", ["nan", "inf", "int"])
def test_non_finite_or_integer_weights_are_refused(saved, bad):
    _, out = saved
    name = "language_model.model.layers.1.feed_forward.w2.weight"

    def edit(t):
        if bad == "int":
            t[name] = t[name].round().to(torch.int32)
        else:
            t[name][3, 5] = float(bad)
    _rewrite(out, edit)
    message = "dtype int32; weights must be floating point" if bad == "int" else "holds 1 NaN / inf value"
    with pytest.raises(CheckpointError, match=f"model.safetensors: tensor '{name}' .*{message}"):
        load_model(out)


def test_convert_validates_its_teacher_as_load_model_does(tmp_path):
    from mmmamba_bench.seeding import convert

    teacher = save_model(random_model("transformer", torch.float32), tmp_path / "teacher")
    missing = "language_model.model.layers.1.feed_forward.w1.weight"
    _rewrite(teacher, lambda t: t.pop(missing))
    with pytest.raises(CheckpointError, match=f"missing tensor\\(s\\) for this config: {missing}"):
        convert(teacher, tmp_path / "student")
    assert not (tmp_path / "student").exists()
    teacher = save_model(random_model("transformer", torch.float32), tmp_path / "teacher", overwrite=True)
    wqkv = "embedding_model.encoder.0.attention.wqkv.weight"
    _rewrite(teacher, lambda t: t.__setitem__(wqkv, t[wqkv].T.contiguous()))  # transposed
    with pytest.raises(CheckpointError, match=f"tensor '{wqkv}' has shape"):
        convert(teacher, tmp_path / "student")
