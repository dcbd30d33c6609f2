"""Shared pieces of the search tests: a tiny space, a private FLOPs-table folder, and
supernet checkpoints built directly (no dependency on stage 1)."""
from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from utils.checkpoints.io import save_atomic
from utils.spaces import get_space, make_config

TINY = dict(input_size=32, width_mult=0.25, classes=4)
TINY_ARGS = ["--input-size", "32", "--width-mult", "0.25", "--classes", "4"]
REPO_TABLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "data", "flops_tables")


def tiny_config(space: str = "mobilenet", **kw):
    return make_config(space, **{**TINY, **kw})


@pytest.fixture(scope="session")
def search_table_dir(tmp_path_factory) -> str:
    """FLOPs tables of the test configs go here, not into the repository's data/."""
    d = str(tmp_path_factory.mktemp("flops_tables"))
    for name in os.listdir(REPO_TABLES):  # the published ImageNet tables (default limits)
        shutil.copy(os.path.join(REPO_TABLES, name), d)
    return d


@pytest.fixture(autouse=True)
def _tables_env(search_table_dir, monkeypatch):
    monkeypatch.setenv("BNNAS_TABLE_DIR", search_table_dir)
    torch.set_num_threads(1)


def hand_gammas(space) -> list[list[float]]:
    """A distinct mean |gamma| per (layer, op)."""
    return [[0.01 * (i + 1) + 0.1 * op for op in range(space.num_ops)]
            for i in range(space.num_layers)]


def save_supernet(path: str, cfg, *, train_all: bool = False, gammas=None, seed: int = 0,
                  args: dict | None = None) -> torch.nn.Module:
    """A supernet checkpoint in the agreed format; `gammas[i][op]` sets mean |gamma|
    (alternating signs, so the indicator must take absolute values)."""
    torch.manual_seed(seed)
    space = get_space(cfg)
    net = space.supernet()
    if gammas is not None:
        for i, row in enumerate(space.indicator_modules(net)):
            for op, bn in enumerate(row):
                signs = torch.ones(bn.weight.numel())
                signs[1::2] = -1
                bn.weight.data = gammas[i][op] * signs
    save_atomic(dict(kind="supernet", config=cfg.to_dict(), state_dict=net.state_dict(),
                     train_all=train_all, iter=0, epoch=0, seed=seed, args=args or {}), path)
    return net


def read_json(log_dir: str) -> dict:
    with open(os.path.join(log_dir, "ea_results.json")) as f:
        return json.load(f)
