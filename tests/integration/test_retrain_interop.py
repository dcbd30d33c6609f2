"""Retrain stage: reading the reference's retrained checkpoints and refusing wrong ones."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from utils.checkpoints.io import save_atomic
from utils.cli.common import UserError
from utils.spaces import get_space, make_config
from utils.checkpoints.subnet import (load_subnet_state, read_subnet_checkpoint, resolve_config,
                             subnet_state)



CFG = make_config("mobilenet", input_size=32, width_mult=0.25, classes=4, stem_stride=1)


def _randomise(net: torch.nn.Module, seed: int) -> None:
    """Random weights and BN statistics, so equal outputs mean equal loading."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=g) + 0.5 if name.endswith("running_var")
                        else torch.randn(t.shape, generator=g) * 0.3)


# Our names -> the reference's (docs/method.md, "Checkpoints and logs of the original"),
# written independently of utils/interop.
_PAIR = {"conv": "0", "bn": "1"}
_FIXED = {"depthwise.conv": "0", "depthwise.bn": "1", "project.conv": "3", "project.bn": "4"}
_OP = {"expand.conv": "0", "expand.bn": "1", "depthwise.conv": "3", "depthwise.bn": "4",
       "project.conv": "6", "project.bn": "7"}


def to_reference_names(state: dict, arch) -> dict:
    j_of = {i: j for j, i in enumerate(i for i, op in enumerate(arch) if op != -1)}
    out = {}
    for key, v in state.items():
        if m := re.fullmatch(r"stem\.first\.(conv|bn)\.(.+)", key):
            new = f"conv_bn.{_PAIR[m[1]]}.{m[2]}"
        elif m := re.fullmatch(r"stem\.fixed\.(\w+\.\w+)\.(.+)", key):
            new = f"MBConv_ratio_1.conv.{_FIXED[m[1]]}.{m[2]}"
        elif m := re.fullmatch(r"layers\.(\d+)\.(\w+\.\w+)\.(.+)", key):
            new = f"features.{j_of[int(m[1])]}.conv.{_OP[m[2]]}.{m[3]}"
        elif m := re.fullmatch(r"head\.conv\.(conv|bn)\.(.+)", key):
            new = f"conv_1x1_bn.{_PAIR[m[1]]}.{m[2]}"
        elif m := re.fullmatch(r"head\.classifier\.(weight|bias)", key):
            new = f"classifier.1.{m[1]}"
        else:
            raise AssertionError(f"unmapped key {key}")
        out["module." + new] = v.clone()
    return out


def test_reference_retrained_checkpoint_loads_like_native(tmp_path):
    space = get_space(CFG)
    arch = space.random_arch(np.random.default_rng(3))
    native = space.subnet(arch).eval()
    _randomise(native, 0)
    ref_state = to_reference_names(native.state_dict(), arch)
    # The reference profiler's leftovers must be ignored.
    ref_state["module.total_ops"] = torch.zeros(1, dtype=torch.float64)
    ref_state["module.features.0.conv.0.total_params"] = torch.zeros(1, dtype=torch.float64)
    path = str(tmp_path / "ref.pth.tar")
    save_atomic(dict(iters=123, state_dict=ref_state, best_acc_top1=75.46,
                     optimizer={"state": {}, "param_groups": []}), path)

    ckpt = read_subnet_checkpoint(path)
    assert ckpt.kind == "reference" and ckpt.iters == 123 and ckpt.best_acc_top1 == 75.46
    loaded = space.subnet(arch).eval()
    load_subnet_state(loaded, subnet_state(ckpt, space, arch), path)
    got = loaded.state_dict()
    for k, v in native.state_dict().items():
        assert torch.equal(got[k], v), k
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), native(x))

    # Another architecture (different op at the first searchable layer) is refused in one line.
    other = list(arch)
    other[0] = (arch[0] + 1) % space.num_ops
    with pytest.raises(UserError, match=r"does not fit architecture") as e:
        load_subnet_state(space.subnet(other), subnet_state(ckpt, space, other), path,
                          space.format(other))
    assert "\n" not in str(e.value)


def test_own_checkpoint_refuses_other_arch_and_config(tmp_path):
    space = get_space(CFG)
    arch = space.random_arch(np.random.default_rng(1))
    net = space.subnet(arch)
    path = str(tmp_path / "ckpt.pth.tar")
    save_atomic(dict(kind="subnet", config=CFG.to_dict(), arch=list(arch),
                     state_dict={"module." + k: v for k, v in net.state_dict().items()},
                     iters=5, best_acc_top1=50.0), path)
    ckpt = read_subnet_checkpoint(path)
    assert ckpt.kind == "subnet" and ckpt.arch == tuple(arch) and ckpt.config == CFG
    assert set(subnet_state(ckpt, space, arch)) == set(net.state_dict())  # `module.` dropped

    other = list(arch)
    other[2] = (arch[2] + 1) % space.num_ops
    with pytest.raises(UserError, match=r"is for architecture '.*', not '.*'"):
        subnet_state(ckpt, space, other)
    wider = get_space(make_config("mobilenet", input_size=32, width_mult=0.5, classes=4,
                                  stem_stride=1))
    with pytest.raises(UserError, match=r"width_mult: 0.25 vs 0.5"):
        subnet_state(ckpt, wider, arch)

    save_atomic(dict(kind="supernet", config=CFG.to_dict(), state_dict={}), path)
    with pytest.raises(UserError, match="is a supernet checkpoint, not a subnet"):
        read_subnet_checkpoint(path)


def test_resolve_config_prefers_flags_then_base():
    import argparse
    ns = argparse.Namespace(space=None, input_size=None, width_mult=None, classes=None,
                            stem_stride=None, fixed_skips=None)
    assert resolve_config(ns, None, classes=7) == make_config("mobilenet", classes=7)
    assert resolve_config(ns, CFG, classes=7) == CFG
    ns.input_size = 64
    got = resolve_config(ns, CFG, classes=7)
    assert got.input_size == 64 and got.width_mult == 0.25 and got.fixed_skips == CFG.fixed_skips
    ns.fixed_skips = "none"
    assert resolve_config(ns, CFG).fixed_skips == ()
