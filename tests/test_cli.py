"""The command line: every demo step is a valid invocation of a real subcommand; clear errors for bad input."""

from pathlib import Path

import pytest

from mmmamba_bench.cli import build_parser, main
from mmmamba_bench.demo import plan


def test_every_demo_step_parses(tmp_path):
    parser = build_parser()
    for step in plan(tmp_path / "out", tmp_path / "data") + plan(tmp_path / "out", tmp_path / "data", "train"):
        args = parser.parse_args(step.argv)  # SystemExit (a test failure) on an unknown flag or subcommand
        assert args.command == step.argv[0]


def test_demo_uses_the_embedded_teacher_unless_asked_to_train_one(tmp_path):
    from mmmamba_bench.cards import resolve_model

    embedded = plan(tmp_path, tmp_path / "d")
    assert "train-teacher" not in [s.name for s in embedded]
    convert = next(s for s in embedded if s.name == "convert")
    assert convert.argv[convert.argv.index("--teacher") + 1] == str(resolve_model("demo-teacher"))
    trained = plan(tmp_path, tmp_path / "d", teacher="train")
    step = next(s for s in trained if s.name == "train-teacher")
    assert step.argv[step.argv.index("--recipe") + 1].endswith("teacher-demo.yaml")
    assert all(str(tmp_path / "models" / "teacher") in s.argv for s in trained if s.name in ("convert", "eval-teacher"))
    with pytest.raises(ValueError, match="teacher must be one of"):
        plan(tmp_path, tmp_path / "d", teacher="nope")


def test_demo_refuses_to_resume_with_another_teacher(tmp_path):
    from mmmamba_bench.demo import run_demo

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "demo_settings.json").write_text('{"teacher": "train"}')
    with pytest.raises(RuntimeError, match="other settings"):
        run_demo(tmp_path / "out", data_dir=tmp_path / "d", teacher="embedded")


def test_demo_chains_eval_over_all_four_models(tmp_path):
    evals = [s for s in plan(tmp_path, tmp_path / "d") if s.name.startswith("eval-")]
    assert [s.argv[s.argv.index("--label") + 1] for s in evals] == ["teacher", "seeded-linear", "linear", "hybrid"]
    assert all(s.argv[s.argv.index("--tasks") + 1] == "mini" for s in evals)


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
