"""Training is bit-reproducible on one machine with the same kernels and threads."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import ROOT, run_env

pytestmark = pytest.mark.slow  # repeated training runs in subprocesses

SCRIPT = os.path.join(ROOT, "tools", "determinism_check.py")


def _fingerprint(**extra_env) -> str:
    env = run_env()
    env.update(extra_env)
    out = subprocess.run([sys.executable, SCRIPT], env=env, capture_output=True, text=True,
                         timeout=300, check=True).stdout.strip()
    assert out.count("\n") == 0 and "weights " in out, out
    return out


def test_same_settings_give_the_same_weights():
    a, b = _fingerprint(), _fingerprint()
    assert a == b
    # pinning the kernels to AVX2 is deterministic too (the cross-machine recipe)
    pinned = dict(ATEN_CPU_CAPABILITY="avx2", ONEDNN_MAX_CPU_ISA="AVX2")
    c, d = _fingerprint(**pinned), _fingerprint(**pinned)
    assert c == d and "AVX2" in c
