"""Publishing a folder atomically (results.publish_dir) and the mini-suite generation that uses it: a new folder
appears whole in one rename, a failed generation leaves nothing, two generations racing leave a complete suite."""

from __future__ import annotations

import os

import pytest

from mmmamba_bench.data import minisuite
from mmmamba_bench.results import atomic_write, publish_dir


def _folder(path, files: dict[str, str]):
    path.mkdir(parents=True)
    for name, text in files.items():
        (path / name).write_text(text)
    return path


def test_a_new_folder_appears_in_one_rename(tmp_path):
    src = _folder(tmp_path / ".new.tmp", {"a": "1", "manifest.json": "m"})
    inode = src.stat().st_ino
    assert publish_dir(src, tmp_path / "new", last="manifest.json") is True
    assert (tmp_path / "new").stat().st_ino == inode  # the very folder, renamed: never seen half-filled
    assert not src.exists() and (tmp_path / "new" / "a").read_text() == "1"
    assert (tmp_path / "new").stat().st_mode & 0o777 == 0o755


def test_an_existing_folder_gets_each_file_replaced_the_last_one_last(tmp_path, monkeypatch):
    dst = _folder(tmp_path / "dst", {"a": "old", "manifest.json": "old", "keep": "mine"})
    src = _folder(tmp_path / ".dst.tmp", {"manifest.json": "new", "a": "new", "z": "new"})
    order = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda s, d: (order.append(os.path.basename(d)), real_replace(s, d)))
    assert publish_dir(src, dst, last="manifest.json") is False
    assert order == ["a", "z", "manifest.json"]
    assert {p.name: p.read_text() for p in dst.iterdir()} == {"a": "new", "manifest.json": "new", "z": "new",
                                                              "keep": "mine"}
    assert not src.exists()


def test_publishing_over_a_file_is_an_error(tmp_path):
    (tmp_path / "dst").write_text("a file")
    with pytest.raises(OSError):
        publish_dir(_folder(tmp_path / "src", {"a": "1"}), tmp_path / "dst")


def test_atomic_write_leaves_the_old_file_when_the_writer_fails(tmp_path):
    path = tmp_path / "f.json"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_write(path) as f:
        f.write("half")
        raise RuntimeError("killed")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_a_failed_generation_leaves_nothing(tmp_path, monkeypatch):
    def broken(canvas, n):
        raise RuntimeError("source image unreadable")

    monkeypatch.setitem(minisuite.BUILDERS, "mini_gqa", broken)
    with pytest.raises(RuntimeError, match="source image unreadable"):
        minisuite.generate(tmp_path / "suite")
    assert list(tmp_path.iterdir()) == []  # neither the suite nor its temporary folder


def test_a_generation_that_loses_the_race_completes_the_winners_folder(tmp_path, monkeypatch):
    out = tmp_path / "suite"

    def write_suite(folder, seed):  # while we generate, another run publishes the same (deterministic) suite
        (folder / "mini_mme_test.parquet").write_bytes(b"rows")
        (folder / "manifest.json").write_text("manifest")
        _folder(out, {"mini_mme_test.parquet": "rows", "manifest.json": "manifest"})
        return {"seed": seed}

    monkeypatch.setattr(minisuite, "_write_suite", write_suite)
    assert minisuite.generate(out) == {"seed": 0}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["suite"]  # no temporary folder left behind
    assert {p.name: p.read_text() for p in out.iterdir()} == {"mini_mme_test.parquet": "rows",
                                                              "manifest.json": "manifest"}


def test_ensure_suite_generates_only_where_there_is_none(tmp_path, monkeypatch):
    made = []
    monkeypatch.setattr(minisuite, "generate", lambda d, seed=0: made.append(d))
    assert minisuite.ensure_suite(tmp_path / "absent") is True and made == [tmp_path / "absent"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert minisuite.ensure_suite(empty) is True
    partial = _folder(tmp_path / "partial", {minisuite.file_name("mini_gqa", "train"): "x"})  # broken, not absent
    assert minisuite.ensure_suite(partial) is False
    assert made == [tmp_path / "absent", empty]
