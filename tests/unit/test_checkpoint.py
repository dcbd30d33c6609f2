"""utils.checkpoints.io: atomic writes leave no temp files, keep normal permissions, and
loading refuses what is not a checkpoint in one line."""
from __future__ import annotations

import json
import os
import stat

import pytest
import torch

from utils import files
from utils.checkpoints import io as ckpt
from utils.cli.common import UserError


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_atomic_writes_get_umask_permissions_and_leave_no_temp(tmp_path, umask_022):
    j, t = str(tmp_path / "a.json"), str(tmp_path / "c.pth.tar")
    files.write_json_atomic({"x": 1}, j)
    ckpt.save_atomic({"w": torch.ones(2)}, t)
    for path in (j, t):
        # mkstemp alone would leave 0600: unreadable to the rest of a team
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o644, path
    assert sorted(os.listdir(tmp_path)) == ["a.json", "c.pth.tar"]
    with open(j) as f:
        assert json.load(f) == {"x": 1}
    assert torch.equal(ckpt.load(t)["w"], torch.ones(2))


def test_load_refuses_non_checkpoints_in_one_line(tmp_path):
    bad = tmp_path / "bad.pth.tar"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError) as e:
        ckpt.load(str(bad))
    assert str(bad) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UserError, match="not found"):
        ckpt.load(str(tmp_path / "missing.pth.tar"))
    torch.save([1, 2], str(tmp_path / "list.pth"))
    with pytest.raises(UserError, match="not a checkpoint"):
        ckpt.load(str(tmp_path / "list.pth"))
