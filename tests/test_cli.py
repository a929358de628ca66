"""The command line: flags parse; clear one-line errors for bad input (the demo's chain: tests/test_demo.py)."""

from pathlib import Path

import pytest

from mmmamba_bench.cli import build_parser, main


def test_demo_flags_parse():
    args = build_parser().parse_args(["demo", "--smoke", "--fresh", "--out", "o", "--teacher", "train"])
    assert (args.smoke, args.fresh, args.out, args.teacher) == (True, True, Path("o"), "train")
    assert build_parser().parse_args(["demo"]).out is None  # the budget's own default folder


def test_eval_of_a_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    assert main(["eval", "--model", str(tmp_path / "nope"), "--tasks", "mini", "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "neither a checkpoint directory nor a model card" in err
    assert not any(Path(tmp_path).iterdir())  # nothing written


def test_model_card_without_weights_env_is_a_clear_error(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("MMMAMBA_BENCH_WEIGHTS", raising=False)
    assert main(["eval", "--model", "mmmamba-linear", "--tasks", "mini", "--output", str(tmp_path)]) == 2
    assert "MMMAMBA_BENCH_WEIGHTS" in capsys.readouterr().err


def test_convert_without_teacher_config_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["convert"])  # required arguments missing: argparse exits
    assert main(["convert", "--teacher", str(tmp_path), "--out", str(tmp_path / "o"), "--layout", "x"]) == 2
    assert "config.json not found" in capsys.readouterr().err


def test_two_distillations_in_one_process(tmp_path, tiny_data, tiny_teacher):
    """The demo runs `distill` twice in one process; the second call once found a module, not the function."""
    import yaml

    from tests.test_distill import TINY_DISTILL

    for layout in ("linear", "hybrid"):
        recipe = tmp_path / f"{layout}.yaml"
        recipe.write_text(yaml.safe_dump({**TINY_DISTILL, "layout": layout}))
        out = tmp_path / layout
        assert main(["distill", "--recipe", str(recipe), "--teacher", str(tiny_teacher), "--data", str(tiny_data),
                     "--out", str(out), "--no-progress"]) == 0
        assert (out / "config.json").is_file()
