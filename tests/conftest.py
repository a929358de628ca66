"""Session fixtures shared by several test files (built once per test run)."""

from __future__ import annotations

import pytest

from tests.tiny_suite import TINY_TEACHER, write_tiny_suite


@pytest.fixture(scope="session")
def mini_suite(tmp_path_factory):
    """The offline mini-suite, freshly generated (seed 0): (folder, manifest)."""
    from mmmamba_bench.data import minisuite

    out = tmp_path_factory.mktemp("minisuite")
    return out, minisuite.generate(out, seed=0)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_suite")
    write_tiny_suite(out)
    return out


@pytest.fixture(scope="session")
def tiny_teacher(tiny_data, tmp_path_factory):
    from mmmamba_bench.train.teacher import train_teacher

    out = tmp_path_factory.mktemp("teacher") / "teacher"
    return train_teacher(TINY_TEACHER, tiny_data, out, progress=False)
