"""``mmmamba-bench demo``: the whole harness, offline, on the embedded default.

It chains the very commands a researcher runs on real checkpoints, only on a tiny HoVLE-architecture teacher
trained on the offline mini-suite:

    data -> [train-teacher] -> convert (seeded, undistilled) -> distill linear -> distill hybrid
         -> eval (x4, lmms-eval) -> profile -> report

The teacher is by default the embedded one (``models/demo-teacher/``, card ``models/demo-teacher.yaml``): trained by
``mmmamba-bench train-teacher --recipe distill/teacher-demo.yaml`` (11,000 steps: minutes on a GPU, about an hour
on 2 CPU cores). ``--teacher train`` retrains it with that recipe as the chain's second step.

Each step writes its output atomically and is skipped when that output already exists, so an interrupted demo
resumes where it stopped (``--fresh`` starts over).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from mmmamba_bench.assets import recipes_dir
from mmmamba_bench.results import write_json_atomic

MODELS = ("teacher", "seeded-linear", "linear", "hybrid")
EMBEDDED_TEACHER = "demo-teacher"  # model card of the teacher shipped in the repository
TEACHER_MODES = ("embedded", "train")


@dataclass
class Step:
    name: str
    argv: list[str]
    done_when: Path  # the step is skipped if this exists


def embedded_teacher() -> Path:
    from mmmamba_bench.cards import resolve_model

    return resolve_model(EMBEDDED_TEACHER)


def plan(out: Path, data_dir: Path, teacher: str = "embedded") -> list[Step]:
    if teacher not in TEACHER_MODES:
        raise ValueError(f"teacher must be one of {TEACHER_MODES}, got {teacher!r}")
    m = {name: out / "models" / name for name in MODELS}
    results = out / "results"
    steps = [Step("data", ["data", "--out", str(data_dir)], data_dir / "manifest.json")]
    if teacher == "embedded":
        m["teacher"] = embedded_teacher()
    else:
        steps.append(Step("train-teacher", ["train-teacher", "--recipe", str(recipes_dir() / "teacher-demo.yaml"), "--data",
                                             str(data_dir), "--out", str(m["teacher"])], m["teacher"]))
    steps += [
        Step("convert", ["convert", "--teacher", str(m["teacher"]), "--out", str(m["seeded-linear"]), "--layout",
                         "linear", "--init", "mimic", "--seed", "0"], m["seeded-linear"]),
        Step("distill-linear", ["distill", "--recipe", str(recipes_dir() / "linear-demo.yaml"), "--teacher",
                                str(m["teacher"]), "--data", str(data_dir), "--out", str(m["linear"])], m["linear"]),
        Step("distill-hybrid", ["distill", "--recipe", str(recipes_dir() / "hybrid-demo.yaml"), "--teacher",
                                str(m["teacher"]), "--data", str(data_dir), "--out", str(m["hybrid"])], m["hybrid"]),
    ]
    for name in MODELS:
        steps.append(Step(f"eval-{name}", ["eval", "--model", str(m[name]), "--tasks", "mini", "--output",
                                           str(results), "--label", name, "--device", "cpu", "--dtype", "float32",
                                           "--batch-size", "32"], results / name))
    steps.append(Step("profile", ["profile", "--models", ",".join(str(m[n]) for n in ("teacher", "linear", "hybrid")),
                                  "--contexts", "128,256,512,1024", "--device", "cpu", "--dtype", "float32",
                                  "--steps", "20",
                                  "--out", str(out / "profile.json")], out / "profile.json"))
    steps.append(Step("report", ["report", "--results", str(results), "--profile", str(out / "profile.json"),
                                 "--out", str(out / "report"), "--title", "mmmamba-bench demo (offline mini-suite)"],
                      out / "report" / "report.md"))
    return steps


def check_teacher_data(teacher_dir: Path, data_dir: Path) -> None:
    """Warn when the teacher's record names other mini-suite data than ``data_dir`` holds (e.g. other Pillow /
    scikit-image versions re-encoding the images): its scores may then differ from the recorded ones."""
    from mmmamba_bench.data.minisuite import MANIFEST, sha256_file
    from mmmamba_bench.train.state import read_stage_record

    want = (read_stage_record(teacher_dir) or {}).get("data_manifest_sha256")
    have = sha256_file(data_dir / MANIFEST) if (data_dir / MANIFEST).is_file() else None
    if want and have != want:
        print(f"[demo] warning: the teacher in {teacher_dir} was trained on mini-suite data with manifest sha256 "
              f"{want[:12]}..., but {data_dir / MANIFEST} has {str(have)[:12]}... (other package versions?); its "
              f"scores may differ from its record. `mmmamba-bench demo --teacher train` retrains it on this data.")


def run_demo(out: Path, data_dir: Path | None = None, fresh: bool = False, teacher: str = "embedded") -> Path:
    from mmmamba_bench.cli import main as cli_main
    from mmmamba_bench.data.minisuite import default_data_dir

    data_dir = data_dir or default_data_dir()
    if fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    settings_file = out / "demo_settings.json"
    settings = {"teacher": teacher}
    if settings_file.is_file() and json.loads(settings_file.read_text()) != settings:
        raise RuntimeError(f"{out} holds a demo run with other settings ({settings_file.read_text().strip()}); "
                           f"rerun with --fresh or choose another --out")
    write_json_atomic(settings_file, settings)
    timings_file = out / "timings.json"
    timings: dict[str, float] = json.loads(timings_file.read_text()) if timings_file.is_file() else {}
    t_all = time.perf_counter()
    for step in plan(out, data_dir, teacher):
        if step.name == "convert" and teacher == "embedded":
            check_teacher_data(embedded_teacher(), data_dir)
        if step.done_when.exists():
            print(f"[demo] {step.name}: done already ({step.done_when})")
            continue
        print(f"[demo] {step.name}: mmmamba-bench {' '.join(step.argv)}", flush=True)
        t0 = time.perf_counter()
        rc = cli_main(step.argv)
        if rc != 0:
            raise RuntimeError(f"demo step {step.name!r} failed (exit {rc}); rerun to resume from this step")
        timings[step.name] = round(time.perf_counter() - t0, 1)
        write_json_atomic(timings_file, timings)
    report = out / "report" / "report.md"
    print(f"[demo] finished in {time.perf_counter() - t_all:.0f} s this run "
          f"({sum(timings.values()):.0f} s over all runs); report: {report}")
    return report
