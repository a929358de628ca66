"""The command line: flags parse; clear one-line errors for bad input (the demo's chain: tests/test_demo.py)."""

import json
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
    assert "not a checkpoint directory, nor a model card name" in err
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


@pytest.mark.parametrize("argv, flag", [
    (["eval", "--model", "m", "--output", "o", "--batch-size", "0"], "--batch-size"),
    (["eval", "--model", "m", "--output", "o", "--limit", "-3"], "--limit"),
    (["eval", "--model", "m", "--output", "o", "--batch-size", "eight"], "--batch-size"),
    (["speed", "--models", "tiny", "--output-tokens", "-5"], "--output-tokens"),
    (["profile", "--models", "tiny", "--steps", "0"], "--steps"),
    (["regress", "--baseline", "a", "--candidate", "b", "--out", "o", "--tolerance", "nan"], "--tolerance"),
    (["regress", "--baseline", "a", "--candidate", "b", "--out", "o", "--resamples", "10"], "--resamples"),
])
def test_bad_numbers_are_refused_naming_the_flag(argv, flag, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert f"argument {flag}" in capsys.readouterr().err


def test_eval_output_that_is_a_file_or_a_bad_label_is_refused_before_any_work(tmp_path, capsys):
    target = tmp_path / "results.json"
    target.write_text("{}")
    assert main(["eval", "--model", "demo-teacher", "--tasks", "mini", "--output", str(target)]) == 2
    assert f"--output {target}: is a file" in capsys.readouterr().err
    assert main(["eval", "--model", "demo-teacher", "--tasks", "mini", "--output", str(tmp_path / "o"),
                 "--label", "../escape"]) == 2
    assert "--label '../escape': must be one folder name" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_report_and_speed_outputs_are_checked_before_work(tmp_path, capsys):
    target = tmp_path / "f"
    target.write_text("")
    assert main(["report", "--results", str(tmp_path), "--out", str(target)]) == 2
    assert f"--out {target}: is a file" in capsys.readouterr().err
    assert main(["speed", "--models", "tiny", "--device", "cpu", "--out", str(tmp_path)]) == 2
    assert f"--out {tmp_path}: is a folder" in capsys.readouterr().err


def test_regress_exit_codes(tmp_path, capsys):
    """0: nothing regressed; 1: a task regressed; 2: the runs cannot be compared (named)."""
    import random

    from tests.test_regress import sqa_samples, write_run

    rng = random.Random(1)
    good = [rng.random() < 0.8 for _ in range(300)]
    bad = [ok and rng.random() < 0.6 for ok in good]
    base = write_run(tmp_path / "base", {"mini_sqa": sqa_samples(good)})
    cand = write_run(tmp_path / "cand", {"mini_sqa": sqa_samples(bad)})
    other = write_run(tmp_path / "other", {"mini_seed": sqa_samples(good)})
    common = ["--resamples", "1000"]
    assert main(["regress", "--baseline", str(base), "--candidate", str(base), "--out", str(tmp_path / "r0"),
                 *common]) == 0
    assert "no significant change" in (tmp_path / "r0" / "regress.md").read_text()
    assert main(["regress", "--baseline", str(base), "--candidate", str(cand), "--out", str(tmp_path / "r1"),
                 *common]) == 1
    assert "regressed: mini_sqa" in capsys.readouterr().err
    assert json.loads((tmp_path / "r1" / "regress.json").read_text())["regressed"] == ["mini_sqa"]
    assert main(["regress", "--baseline", str(base), "--candidate", str(other), "--out", str(tmp_path / "r2"),
                 *common]) == 2
    assert "not comparable: the runs evaluated different tasks" in capsys.readouterr().err
    assert not (tmp_path / "r2").exists() or not any((tmp_path / "r2").iterdir())
