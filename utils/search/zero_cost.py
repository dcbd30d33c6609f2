"""Zero-cost proxies: scores of an untrained network from one fixed batch, no training.

They are the usual training-free baselines a BN-indicator study is compared with
(docs/ranking_study.md). Each takes a freshly initialised network, an input batch and
labels, and returns one float (higher = predicted better):

* `synflow` (Tanaka et al. 2020, "Pruning neural networks without any data by
  iteratively conserving synaptic flow"): with every parameter replaced by its absolute
  value, R = sum of the network's outputs on an all-ones input (one sample, in float64);
  the score is sum over conv and linear weights of theta * dR/dtheta. Synflow is defined
  for positively homogeneous networks, so BatchNorm is removed (identity) and ReLU6 is
  computed as ReLU (a ReLU6 saturates under |theta| and would zero every gradient).
* `naswot` (Mellor et al. 2021, "Neural Architecture Search without Training"): the
  binary code of a sample is which activation units are positive (every ReLU/ReLU6 input,
  concatenated); K[i, j] = number of units where samples i and j agree; score log|det K|.
* `grad_norm` (Abdelfattah et al. 2021, "Zero-Cost Proxies for Lightweight NAS"): one
  cross-entropy backward pass on the batch; sum over conv and linear layers of the L2 norm
  of the weight gradient.
* `snip` (Lee et al. 2019, as a NAS proxy in Abdelfattah et al. 2021): same backward pass;
  sum over conv and linear weights of |theta * dL/dtheta|.

The network is used in train mode (BN normalises with batch statistics, as at the first
training step), always on a copy: the caller's network, its BN statistics and its
requires_grad flags are left as they were.

    PROXIES: name -> function(net, images, labels) -> float
    score_network(name, net, images, labels) -> float
    fixed_batch(train_dir, cfg, size, seed, dataset=None) -> (images, labels): the seeded
        batch they use (the dataset registry reads train_dir and normalises)
    init_subnet(space, arch, seed): the standalone subnet at its seeded initialisation
"""
from __future__ import annotations

import copy
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

WEIGHTED = (nn.Conv2d, nn.Linear)


def _weights(net: nn.Module) -> list[nn.Parameter]:
    return [m.weight for m in net.modules() if isinstance(m, WEIGHTED)]


def _homogeneous_copy(net: nn.Module) -> nn.Module:
    """A float64 copy with BN as identity and ReLU6 as ReLU (see the module docstring)."""
    twin = copy.deepcopy(net).double()

    def swap(module: nn.Module) -> None:
        for name, child in module.named_children():
            if isinstance(child, nn.modules.batchnorm._BatchNorm):
                setattr(module, name, nn.Identity())
            elif isinstance(child, nn.ReLU6):
                setattr(module, name, nn.ReLU())
            else:
                swap(child)

    swap(twin)
    return twin


def synflow(net: nn.Module, images: torch.Tensor, labels: torch.Tensor | None = None) -> float:
    twin = _homogeneous_copy(net)
    twin.train()
    with torch.no_grad():
        for p in twin.parameters():
            p.abs_()
    for p in twin.parameters():
        p.requires_grad_(True)
        p.grad = None
    ones = torch.ones((1,) + tuple(images.shape[1:]), dtype=torch.float64,
                      device=images.device)
    twin(ones).sum().backward()
    return float(sum((w.detach() * w.grad).sum() for w in _weights(twin)))


def naswot(net: nn.Module, images: torch.Tensor, labels: torch.Tensor | None = None) -> float:
    codes: list[torch.Tensor] = []

    def record(_module, inputs, _output):
        codes.append((inputs[0].detach().flatten(1) > 0).to(torch.float64))

    net = copy.deepcopy(net).train()  # train-mode BN would update the caller's statistics
    for m in net.modules():
        if isinstance(m, (nn.ReLU, nn.ReLU6)):
            m.register_forward_hook(record)
    with torch.no_grad():
        net(images)
    if not codes:
        raise ValueError("naswot needs a network with ReLU or ReLU6 activations")
    c = torch.cat(codes, 1)
    k = c @ c.t() + (1.0 - c) @ (1.0 - c).t()  # units where i and j agree
    return float(torch.linalg.slogdet(k)[1])


def _loss_backward(net: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> list:
    """[(weight, dL/dweight)] of every conv and linear layer, on a copy of `net`."""
    net = copy.deepcopy(net).train()
    for p in net.parameters():
        p.requires_grad_(True)  # frozen supernet weights included
    weights = _weights(net)
    loss = F.cross_entropy(net(images), labels)
    return list(zip(weights, torch.autograd.grad(loss, weights)))


def grad_norm(net: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    return float(sum(g.norm() for _, g in _loss_backward(net, images, labels)))


def snip(net: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    return float(sum((w.detach() * g).abs().sum() for w, g in _loss_backward(net, images, labels)))


PROXIES: dict[str, Callable[..., float]] = {
    "synflow": synflow, "naswot": naswot, "grad_norm": grad_norm, "snip": snip}


def score_network(name: str, net: nn.Module, images: torch.Tensor,
                  labels: torch.Tensor) -> float:
    if name not in PROXIES:
        raise KeyError(f"unknown zero-cost proxy {name!r} (known: {', '.join(PROXIES)})")
    return PROXIES[name](net, images, labels)


def init_subnet(space, arch, seed: int) -> nn.Module:
    """The standalone subnet of `arch` at the initialisation `seed` gives (no dropout)."""
    torch.manual_seed(seed)
    return space.subnet(tuple(int(a) for a in arch), dropout=0.0)


def fixed_batch(train_dir: str, cfg, size: int, seed: int, *, class_names=None,
                source: str = "the supernet", input_format: str | None = None,
                device: torch.device | str = "cpu", dataset=None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """`size` training images picked with `seed` (as the ranking study picks them),
    decoded with the validation transform and prepared as in training: (input, labels).

    `dataset`: what `train_dir` holds (utils.data.datasets; None: imagefolder). Labels
    are the network's outputs of the classes (matched by `class_names` when given, else
    there must be exactly cfg.classes of them): one-line UserError if not."""
    import numpy as np

    from utils.data.datasets import get_dataset
    from utils.data.identity import label_map
    from utils.data.loaders import prepare_batch
    from utils.data.transforms import DEFAULT_INPUT_FORMAT
    spec = get_dataset(dataset)
    index = spec.index(train_dir, "train", "--train_dir")
    mapping = label_map(index.classes, class_names, cfg.classes, "--train_dir", source)
    rng = np.random.default_rng([seed, 7])
    pick = rng.choice(len(index.samples), size=min(size, len(index.samples)), replace=False)
    samples = [index.samples[i] for i in pick]
    if mapping is not None:
        samples = [(key, mapping[y]) for key, y in samples]
    ds = spec.images(index.with_samples(samples), cfg.input_size, False)
    images = torch.stack([ds[i][0] for i in range(len(ds))])
    labels = torch.tensor([ds[i][1] for i in range(len(ds))])
    return prepare_batch((images, labels), torch.device(device),
                         input_format or DEFAULT_INPUT_FORMAT, dataset=spec)


__all__ = ["PROXIES", "score_network", "synflow", "naswot", "grad_norm", "snip",
           "init_subnet", "fixed_batch"]
