"""The original's initialisation and weight-decay choices, in both training stages."""
from __future__ import annotations

import math

import torch
from torch import nn

from utils.dist import DistEnv
from utils.spaces import get_space, make_config
from utils.train.subnet import SubnetTrainer
from utils.train.supernet import SupernetTrainer

PUBLISHED = "3 -1 0 4 0 -1 -1 0 4 -1 4 4 1 4 2 0 0 4 0 2 2"


def _cpu_env() -> DistEnv:
    return DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"),
                   backend=None)


def _depthwise(net: nn.Module) -> list[nn.Conv2d]:
    return [m for m in net.modules() if isinstance(m, nn.Conv2d)
            and m.groups == m.in_channels and m.kernel_size[0] > 1]


def _decayed(optimizer) -> set[int]:
    return {id(p) for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}


def test_retrained_network_keeps_pytorch_default_init():
    torch.manual_seed(0)
    space = get_space(make_config("mobilenet"))  # ImageNet: 144-channel dw convs exist
    net = space.subnet(space.parse(PUBLISHED))
    convs = _depthwise(net)
    assert {m.kernel_size[0] for m in convs} == {3, 5, 7}
    for m in convs:
        k = m.kernel_size[0]
        # kaiming_uniform(a=sqrt(5)) on fan_in k*k: uniform +-1/k, std 1/(k*sqrt(3))
        expected = 1.0 / (k * math.sqrt(3.0))
        assert abs(m.weight.std().item() / expected - 1) < 0.10, (m, m.weight.std().item())
        assert m.weight.abs().max().item() <= 1.0 / k + 1e-6
    fc = net.head.classifier
    assert fc.bias.abs().sum() > 0
    bound = 1.0 / math.sqrt(fc.in_features)
    assert fc.weight.abs().max().item() <= bound + 1e-6
    assert abs(fc.weight.std().item() / (bound / math.sqrt(3.0)) - 1) < 0.05


def test_supernet_init_normal_convs_default_classifier():
    torch.manual_seed(0)
    space = get_space(make_config("mobilenet", input_size=32))  # width 1, 1000 classes
    net = space.supernet()
    for m in net.modules():
        if isinstance(m, nn.Conv2d) and m.weight.numel() > 2000:
            n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            assert abs(m.weight.std().item() / math.sqrt(2.0 / n) - 1) < 0.10, m
        elif isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
    # e.g. a 5x5 depthwise conv on 144 channels: std sqrt(2/(25*144)) = 0.024 here, where
    # a freshly built retrain network has PyTorch's 1/(5*sqrt(3)) = 0.115
    fc = net.head.classifier
    assert fc.bias.abs().sum() > 0
    bound = 1.0 / math.sqrt(fc.in_features)
    assert fc.weight.abs().max().item() <= bound + 1e-6
    assert abs(fc.weight.std().item() / (bound / math.sqrt(3.0)) - 1) < 0.05


def test_retrain_decays_exactly_the_conv_weights():
    space = get_space(make_config("mobilenet", input_size=32, width_mult=0.5, classes=10))
    net = space.subnet(space.parse(PUBLISHED))
    trainer = SubnetTrainer(net, _cpu_env(), total_iters=10)
    conv = {id(p) for p in net.parameters() if p.ndim == 4}
    assert _decayed(trainer.optimizer) == conv
    # the other choice stays available
    trainer = SubnetTrainer(net, _cpu_env(), total_iters=10, decay_policy="conv+linear-weight")
    assert _decayed(trainer.optimizer) == conv | {id(net.head.classifier.weight)}


def test_spos_supernet_decays_conv_and_classifier_weight_and_bias():
    space = get_space(make_config("mobilenet", input_size=32, width_mult=0.5, classes=10))
    net = space.supernet()
    trainer = SupernetTrainer(space, net, _cpu_env(), train_all=True, seed=0, total_iters=10)
    fc = net.head.classifier
    expected = {id(p) for p in net.parameters() if p.ndim == 4} | {id(fc.weight), id(fc.bias)}
    assert _decayed(trainer.optimizer) == expected
