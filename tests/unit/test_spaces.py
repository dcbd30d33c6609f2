"""Search spaces: shapes, supernet/subnet equivalence, architecture codec errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import randomise_bn
from utils.spaces import ArchError, ConfigError, get_space, make_config, parse_skips

SMALL = dict(input_size=32, width_mult=0.5, classes=10)
BNNAS = "3 -1 0 4 0 -1 -1 0 4 -1 4 4 1 4 2 0 0 4 0 2 2"


@pytest.mark.parametrize("space_name", ["mobilenet", "shufflenet"])
@pytest.mark.parametrize("kw", [dict(), dict(SMALL, stem_stride=1), SMALL], ids=["224", "32s1", "32"])
def test_supernet_path_equals_inherited_subnet(space_name, kw):
    space = get_space(make_config(space_name, **kw))
    supernet = space.supernet().eval()
    randomise_bn(supernet, 1)
    rng = np.random.default_rng(7)
    x = torch.randn(2, 3, space.config.input_size, space.config.input_size)
    for _ in range(1 if kw == {} else 3):
        arch = space.random_arch(rng)
        subnet = space.subnet(arch, supernet=supernet).eval()
        with torch.no_grad():
            a, b = supernet(x, arch), subnet(x)
        assert a.shape == (2, space.config.classes)
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        # Inheritance copies exactly the path: every subnet tensor is the supernet's.
        sup = supernet.state_dict()
        for key, value in subnet.state_dict().items():
            parts = key.split(".")
            if parts[0] == "layers":
                key = ".".join(parts[:2] + ["ops", str(arch[int(parts[1])])] + parts[2:])
            assert torch.equal(sup[key], value), key


@pytest.mark.parametrize("space_name", ["mobilenet", "shufflenet"])
@pytest.mark.parametrize("size", [224, 32])
def test_every_op_runs_forward_and_backward(space_name, size):
    space = get_space(make_config(space_name, input_size=size, classes=10))
    batch = 1 if size == 224 else 2
    for spec in space.layers:
        out_res = (spec.resolution - 1) // spec.stride + 1
        for op in range(space.num_ops):
            block = space.make_op(spec, op)
            x = torch.randn(batch, spec.inp, spec.resolution, spec.resolution, requires_grad=True)
            y = block(x)
            assert y.shape == (batch, spec.out, out_res, out_res), (spec, op)
            y.square().mean().backward()
            assert x.grad is not None and torch.isfinite(x.grad).all()
            assert all(p.grad is not None for p in block.parameters()), (spec.index, op)
    # The last layer's output is what the head expects: a whole path runs end to end.
    net = space.supernet()
    arch = space.random_arch(np.random.default_rng(size))
    out = net(torch.randn(batch, 3, size, size), arch)
    assert out.shape == (batch, 10)


def test_layer_plan_matches_spec():
    space = get_space("mobilenet")
    got = [(s.inp, s.out, s.resolution, s.stride) for s in space.layers]
    want = ([(24, 32, 112, 2)] + [(32, 32, 56, 1)] * 3 + [(32, 56, 56, 2)] + [(56, 56, 28, 1)] * 3
            + [(56, 112, 28, 2)] + [(112, 112, 14, 1)] * 3 + [(112, 128, 14, 1)]
            + [(128, 128, 14, 1)] * 3 + [(128, 256, 14, 2)] + [(256, 256, 7, 1)] * 3
            + [(256, 432, 7, 1)])
    assert got == want
    assert [i for i in range(21) if space.skip_possible(i)] == [
        1, 2, 3, 5, 6, 7, 9, 10, 11, 13, 14, 15, 17, 18, 19]
    shuffle = get_space("shufflenet")
    assert [s.stride for s in shuffle.layers].count(2) == 4
    assert [s.out for s in shuffle.layers] == [64] * 4 + [160] * 4 + [320] * 8 + [640] * 4
    assert shuffle.layers[0].resolution == 112 and shuffle.layers[-1].resolution == 7


def test_indicator_bn_is_last_bn_of_each_op():
    for name in ("mobilenet", "shufflenet"):
        space = get_space(make_config(name, **SMALL))
        net = space.supernet()
        for layer, bns in zip(net.layers, space.indicator_modules(net)):
            for op, bn in zip(layer.ops, bns):
                main = getattr(op, "main", op)  # shufflenet: last BN of the main branch
                last = [m for m in main.modules() if isinstance(m, torch.nn.BatchNorm2d)][-1]
                assert bn is last


def test_random_archs_are_valid_and_uniform():
    space = get_space("mobilenet")
    rng = np.random.default_rng(0)
    archs = np.array([space.random_arch(rng) for _ in range(3000)])
    for i in (1, 5, 6, 9):
        assert (archs[:, i] == -1).all()
    counts = np.bincount(archs[:, 0], minlength=6)
    assert counts.min() > 400  # uniform over 6 ops: ~500 each
    for a in archs[:50]:
        space.validate(a)


@pytest.mark.parametrize("text,needle", [
    ("3 -1 0", "needs 21 layer choices, got 3"),
    ("3 -1 0 4 0 -1 -1 0 4 -1 4 4 1 4 2 0 0 4 0 2 9", "layer 20 op 9 is out of range (allowed: 0 1 2 3 4 5)"),
    ("-1 -1 0 4 0 -1 -1 0 4 -1 4 4 1 4 2 0 0 4 0 2 2", "layer 0 cannot be skipped (allowed: 0 1 2 3 4 5)"),
    ("3 0 0 4 0 -1 -1 0 4 -1 4 4 1 4 2 0 0 4 0 2 2", "layer 1 is a forced skip and must be -1, got 0"),
    ("3 -1 0 x 0", "token 'x' is not an integer"),
])
def test_invalid_architectures_have_clear_errors(text, needle):
    space = get_space("mobilenet")
    with pytest.raises(ArchError) as e:
        space.parse(text)
    assert needle in str(e.value)
    assert "\n" not in str(e.value)


def test_arch_string_forms_parse_alike():
    space = get_space("mobilenet")
    want = space.parse(BNNAS)
    assert space.parse(BNNAS.replace(" ", ",")) == want
    assert space.parse("[" + BNNAS.replace(" ", ", ") + "]") == want
    assert space.parse(list(want)) == want
    assert space.format(want) == BNNAS


def test_config_validation_and_skips():
    with pytest.raises(ConfigError, match="layer 0 cannot be skipped"):
        get_space(make_config("mobilenet", fixed_skips=(0,)))
    with pytest.raises(ConfigError, match="unknown search space 'resnet'"):
        make_config("resnet")
    with pytest.raises(ConfigError, match="stem stride"):
        get_space(make_config("mobilenet", stem_stride=3))
    assert parse_skips("none") == () and parse_skips("1, 5") == (1, 5) and parse_skips(None) is None
    # Without forced skips the depth becomes fixed at full: every layer takes an op.
    free = get_space(make_config("mobilenet", fixed_skips=()))
    assert all(-1 not in free.allowed(i) for i in range(21))
    cfg = make_config("shufflenet", input_size=64)
    assert type(cfg).from_dict(cfg.to_dict()) == cfg
