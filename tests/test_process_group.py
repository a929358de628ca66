"""Every entry point a launcher starts leaves its torch.distributed group before the interpreter ends
(mmmamba_bench.process_group says why: a rank of `mmmamba-bench eval --num-processes 2` once aborted at exit).

Each test joins a real one-process gloo group (a file store under tmp_path) in this process."""

from __future__ import annotations

import pytest
import torch.distributed as dist

from mmmamba_bench import cli
from mmmamba_bench.eval import launched
from mmmamba_bench.process_group import leave


@pytest.fixture
def group(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    if dist.is_initialized():  # a failed test must not leave it to the next
        dist.destroy_process_group()


def test_without_a_group_there_is_nothing_to_leave():
    assert not dist.is_initialized()
    assert leave(wait_for_others=True) is False


@pytest.mark.parametrize("wait", [True, False])
def test_leave_destroys_the_group(group, wait):
    assert dist.is_initialized()
    assert leave(wait_for_others=wait) is True
    assert not dist.is_initialized()


def test_the_cli_leaves_the_group_after_a_command(group, tmp_path, capsys):
    """A command that ends in a user error (a missing teacher checkpoint) still leaves the group."""
    assert cli.main(["convert", "--teacher", str(tmp_path / "absent"), "--out", str(tmp_path / "out")]) == 2
    assert "absent/config.json" in capsys.readouterr().err
    assert not dist.is_initialized()


def test_a_launched_evaluation_leaves_the_group_when_it_fails(group, tmp_path):
    with pytest.raises(Exception, match="plan.json"):
        launched.main([str(tmp_path / "plan.json")])  # no such plan
    assert not dist.is_initialized()
