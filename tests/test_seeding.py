"""Seeding rules (paper Sec. 4.1 / checkpoint_format.md "Seeding") and layout strings."""

import math

import pytest
import torch

from mmmamba_bench.checkpoint import load_model, read_state_dict, save_model
from mmmamba_bench.cli import main as cli_main
from mmmamba_bench.layouts import LayoutError, parse_layout
from mmmamba_bench.seeding import convert, layer_prefixes
from tests.helpers import random_model


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return save_model(random_model("transformer", torch.float32, seed=3), tmp_path_factory.mktemp("t") / "teacher")


def test_layout_strings():
    assert parse_layout("hybrid", 32) == parse_layout("head-interleaved:4", 32)
    assert [i for i, t in enumerate(parse_layout("hybrid", 32)) if t == "mha"] == [0, 4, 8, 12, 16, 20, 24, 28]
    assert [i for i, t in enumerate(parse_layout("tail-interleaved:4", 8)) if t == "mha"] == [3, 7]
    assert parse_layout("head-stacked:2", 4) == ["mha", "mha", "mamba2", "mamba2"]
    assert parse_layout("tail-stacked:1", 4) == ["mamba2", "mamba2", "mamba2", "mha"]
    assert parse_layout("linear", 3) == ["mamba2"] * 3
    assert parse_layout("mha,mamba2,mha", 3) == ["mha", "mamba2", "mha"]
    with pytest.raises(LayoutError, match="unknown layout 'zigzag:2'"):
        parse_layout("zigzag:2", 4)
    with pytest.raises(LayoutError, match="lists 2 layers but the model has 4"):
        parse_layout("mha,mamba2", 4)
    with pytest.raises(LayoutError, match="unknown layer type"):
        parse_layout("mha,attn,mha,mha", 4)
    with pytest.raises(LayoutError, match="out of range"):
        parse_layout("head-stacked:9", 4)


def un_group(wqkv, nh=4, nkv=2, hd=16):
    """Independent un-grouping of wqkv rows by explicit index lists (query head g*n_rep+j, then k, then v)."""
    n_rep = nh // nkv
    q_rows, k_rows, v_rows = [], [], []
    for g in range(nkv):
        base = g * (n_rep + 2) * hd
        for j in range(n_rep):
            q_rows += list(range(base + j * hd, base + (j + 1) * hd))
        k_rows += list(range(base + n_rep * hd, base + (n_rep + 1) * hd))
        v_rows += list(range(base + (n_rep + 1) * hd, base + (n_rep + 2) * hd))
    return wqkv[q_rows], wqkv[k_rows], wqkv[v_rows]


def test_mimic_seeding_rules(teacher, tmp_path):
    out = convert(teacher, tmp_path / "hyb", layout="mha,mamba2,mamba2,mha", init="mimic", seed=7)
    t, s = read_state_dict(teacher), read_state_dict(out)
    cfg = load_model(out).config
    assert cfg.block_types == ["mha", "mamba2", "mamba2", "mha"]
    assert cfg.embedding_config.layers_block_type == ["mha", "mamba2"]
    H, nh, nkv, hd = 64, 4, 2, 16
    converted = [layer_prefixes(cfg)[i] for i in (1, 2)]
    for p in converted:
        w = s[f"{p}.attention.wvkqgdt.weight"]
        q, k, v = un_group(t[f"{p}.attention.wqkv.weight"])
        assert torch.equal(w[:nkv * hd], v) and torch.equal(w[nkv * hd:2 * nkv * hd], k)
        assert torch.equal(w[2 * nkv * hd:2 * nkv * hd + nh * hd], q)
        g_rows = w[2 * nkv * hd + nh * hd:-nh]
        bound = 2 ** -2.5 * math.sqrt(6 / (H + nh * hd))
        assert g_rows.abs().max() <= bound and g_rows.std() > bound / 4  # xavier-uniform, gain 2^-2.5
        assert torch.count_nonzero(w[-nh:]) == 0  # W_gamma rows zero
        assert torch.equal(s[f"{p}.attention.o_proj.weight"], t[f"{p}.attention.wo.weight"])
        conv = s[f"{p}.attention.conv1d.weight"]
        assert torch.all(conv[:, 0, 1] == 1) and torch.all(conv[:, 0, 0] == 0)
        assert torch.all(s[f"{p}.attention.conv1d.bias"] == 0)
        assert torch.all(s[f"{p}.attention.g_norm_swish_gate.weight"] == 1)
        dt = torch.nn.functional.softplus(s[f"{p}.attention.dt_bias"].double())
        assert torch.all((dt > 1e-3 - 1e-9) & (dt < 0.1 + 1e-9))
        decay = torch.exp(-dt * torch.exp(s[f"{p}.attention.A_log_bias"].double()))
        assert torch.all(decay > 0.76) and decay.mean() > 0.85  # starts close to 1 (A_log_bias = 1)
        assert f"{p}.attention.wqkv.weight" not in s
    untouched = [n for n in t if not any(n.startswith(p + ".attention.") for p in converted)]
    assert set(untouched) == {n for n in s if not any(n.startswith(p + ".attention.") for p in converted)}
    assert all(torch.equal(s[n], t[n]) and s[n].dtype == t[n].dtype for n in untouched)


def test_scratch_and_inherit_differ_from_mimic_as_specified(teacher, tmp_path):
    outs = {i: read_state_dict(convert(teacher, tmp_path / i, layout="linear", init=i, seed=1))
            for i in ("mimic", "inherit", "scratch")}
    t = read_state_dict(teacher)
    p = "language_model.model.layers.0.attention"
    nkv, nh, hd = 2, 4, 16
    qkv_rows = slice(0, (2 * nkv + nh) * hd)
    # inherit keeps q/k/v/o, scratch does not
    assert torch.equal(outs["inherit"][f"{p}.wvkqgdt.weight"][qkv_rows], outs["mimic"][f"{p}.wvkqgdt.weight"][qkv_rows])
    assert torch.equal(outs["inherit"][f"{p}.o_proj.weight"], t[f"{p}.wo.weight"])
    assert not torch.allclose(outs["scratch"][f"{p}.wvkqgdt.weight"][qkv_rows], outs["mimic"][f"{p}.wvkqgdt.weight"][qkv_rows])
    assert not torch.allclose(outs["scratch"][f"{p}.o_proj.weight"], t[f"{p}.wo.weight"])
    for init in ("inherit", "scratch"):
        s = outs[init]
        A = torch.exp(s[f"{p}.A_log_bias"].double())
        assert torch.all((A >= 1) & (A <= 16))  # A_log = log U(1, 16)
        assert torch.count_nonzero(s[f"{p}.wvkqgdt.weight"][-nh:]) > 0  # random W_gamma, no mimicry
        assert not torch.all(s[f"{p}.conv1d.weight"][:, 0, 1] == 1)  # not the identity conv
    assert torch.all(outs["scratch"][f"{p}.dt_bias"] == 0)
    assert not torch.all(outs["inherit"][f"{p}.dt_bias"] == 0)


def test_seed_is_reproducible_and_matters(teacher, tmp_path):
    a = read_state_dict(convert(teacher, tmp_path / "a", layout="linear", seed=5))
    b = read_state_dict(convert(teacher, tmp_path / "b", layout="linear", seed=5))
    c = read_state_dict(convert(teacher, tmp_path / "c", layout="linear", seed=6))
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert any(not torch.equal(a[n], c[n]) for n in a)


def test_converted_model_runs_and_differs_from_teacher(teacher, tmp_path):
    student = load_model(convert(teacher, tmp_path / "lin", layout="linear"))
    ids = torch.randint(0, 128, (1, 12))
    out = student.generate(input_ids=ids, max_new_tokens=3)
    assert out.shape == (1, 15)
    assert student.config.kind == "linear" and load_model(teacher).config.kind == "transformer"


def test_cli_convert_errors_and_overwrite(teacher, tmp_path, capsys):
    out = tmp_path / "o"
    assert cli_main(["convert", "--teacher", str(teacher), "--out", str(out), "--layout", "hybrid"]) == 0
    assert load_model(out).config.block_types == ["mha", "mamba2", "mamba2", "mamba2"]
    assert cli_main(["convert", "--teacher", str(teacher), "--out", str(out), "--layout", "linear"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert cli_main(["convert", "--teacher", str(teacher), "--out", str(out), "--layout", "linear",
                     "--overwrite"]) == 0
    assert load_model(out).config.kind == "linear"
    assert cli_main(["convert", "--teacher", str(teacher), "--out", str(tmp_path / "p"), "--layout", "bogus"]) == 2
    assert "unknown layout 'bogus'" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()
    assert cli_main(["convert", "--teacher", str(teacher), "--out", str(tmp_path / "q"),
                     "--layout", "mha,mamba2"]) == 2
    assert "lists 2 layers but the model has 4" in capsys.readouterr().err


def test_cannot_turn_mamba_back_into_attention(tmp_path):
    lin = save_model(random_model("linear", torch.float32), tmp_path / "lin")
    with pytest.raises(ValueError, match="is Mamba-2 in the teacher"):
        convert(lin, tmp_path / "back", layout="transformer")
    assert not (tmp_path / "back").exists()
