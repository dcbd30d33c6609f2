"""Shared fixtures: a tiny ImageFolder dataset and the repo's Python for subprocesses."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def write_imagefolder(root: str, classes: int = 4, train_per_class: int = 12,
                      val_per_class: int = 5, size: int = 32, seed: int = 0) -> str:
    """Class c is a noisy image whose mean colour depends on c, so it is learnable."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", train_per_class), ("val", val_per_class)):
        for c in range(classes):
            d = os.path.join(root, split, f"class_{c}")
            os.makedirs(d, exist_ok=True)
            base = np.array([(c * 67) % 256, (c * 131 + 40) % 256, (c * 29 + 90) % 256])
            for i in range(n):
                img = np.clip(base + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(os.path.join(d, f"{i:03d}.png"))
    return root


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: tiny nets gain nothing from more, and a busy 2-core machine
    stalls multi-threaded kernels badly."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def keep_global_rng():
    """Leave torch's global RNG as found (loaders and torchvision's transforms draw from
    it), so tests that run after these see the same random numbers either way."""
    state = torch.get_rng_state()
    yield
    torch.set_rng_state(state)


def randomise_bn(net: torch.nn.Module, seed: int) -> None:
    """Non-trivial BN statistics and affine terms, so eval-mode equality means something."""
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> str:
    """ImageFolder with train/ and val/, 4 classes, 32x32 RGB PNGs (val: 5 per class)."""
    return write_imagefolder(str(tmp_path_factory.mktemp("tiny_data")))


@pytest.fixture(scope="session")
def python() -> str:
    return sys.executable


@pytest.fixture(scope="session")
def repo_root() -> str:
    return ROOT


def run_env() -> dict:
    """Environment for subprocess runs: repo importable, one thread, no GPU."""
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    env["CUDA_VISIBLE_DEVICES"] = ""
    return env
