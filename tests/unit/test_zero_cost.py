"""Each zero-cost proxy equals its definition, computed by hand on a tiny network."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from utils.search import zero_cost

A = np.array([1.5, -0.5, 2.0])            # conv 1 -> 3 channels, 1x1, no bias
W = np.array([[0.3, -1.2, 0.7, -0.4, 0.9, 0.2],     # linear 6 -> 2, no bias (6 = 3
              [1.1, -0.3, -0.8, 0.5, 0.6, -1.0]])  # channels x 2 pixels)
X = np.array([[1.0, -2.0], [0.5, 0.25], [-1.0, 3.0], [2.0, -0.1]])  # 4 samples x 2 pixels
Y = np.array([0, 1, 1, 0])


def _net(bn: bool = False, act: type[nn.Module] = nn.ReLU) -> nn.Module:
    conv = nn.Conv2d(1, 3, 1, bias=False)
    fc = nn.Linear(6, 2, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor(A, dtype=torch.float32).view(3, 1, 1, 1))
        fc.weight.copy_(torch.tensor(W, dtype=torch.float32))
    layers = [conv] + ([nn.BatchNorm2d(3)] if bn else []) + [act(), nn.Flatten(), fc]
    return nn.Sequential(*layers)


def _images() -> torch.Tensor:
    return torch.tensor(X, dtype=torch.float32).view(4, 1, 1, 2)


def _forward_by_hand():
    pre = A[None, :, None] * X[:, None, :]          # [n, channel, pixel]
    h = np.maximum(pre, 0).reshape(4, 6)             # channel-major flatten, as torch
    z = h @ W.T
    return pre, h, z


def _grads_by_hand():
    pre, h, z = _forward_by_hand()
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    dz = (p - np.eye(2)[Y]) / len(Y)                 # mean cross-entropy
    d_w = dz.T @ h
    d_pre = (dz @ W).reshape(4, 3, 2) * (pre > 0)
    d_a = (d_pre * X[:, None, :]).sum((0, 2))
    return d_a, d_w


def test_synflow_by_hand():
    # |theta|, input of ones: h_j = |a_j| on both pixels, R = sum_ij |W_ij| h_j, and
    # sum(theta * dR/dtheta) = R (linear part) + R (conv part) = 2R.
    h = np.repeat(np.abs(A), 2)
    expected = 2 * (np.abs(W) @ h).sum()
    assert zero_cost.synflow(_net(), _images()) == pytest.approx(expected, rel=1e-6)
    # BN is removed and ReLU6 computed as ReLU: the same value, although 2*|a| > 6 would
    # saturate a real ReLU6 when a's are scaled up
    big = _net(bn=True, act=nn.ReLU6)
    with torch.no_grad():
        big[0].weight.mul_(4)
    assert zero_cost.synflow(big, _images()) == pytest.approx(4 * expected, rel=1e-6)


def test_naswot_by_hand():
    pre, _, _ = _forward_by_hand()
    c = (pre.reshape(4, 6) > 0).astype(float)
    k = c @ c.T + (1 - c) @ (1 - c).T
    agree = np.array([[int((c[i] == c[j]).sum()) for j in range(4)] for i in range(4)])
    assert np.array_equal(k, agree)  # K counts the units where two samples agree
    expected = np.linalg.slogdet(k)[1]
    assert zero_cost.naswot(_net(), _images()) == pytest.approx(expected, rel=1e-9)


def test_grad_norm_and_snip_by_hand():
    d_a, d_w = _grads_by_hand()
    labels = torch.tensor(Y)
    expected_norm = np.linalg.norm(d_a) + np.linalg.norm(d_w)
    expected_snip = np.abs(A * d_a).sum() + np.abs(W * d_w).sum()
    assert zero_cost.grad_norm(_net(), _images(), labels) == pytest.approx(expected_norm, rel=1e-5)
    assert zero_cost.snip(_net(), _images(), labels) == pytest.approx(expected_snip, rel=1e-5)


def test_proxies_leave_the_network_untouched():
    net = _net(bn=True)
    for p in net.parameters():
        p.requires_grad_(False)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    for name in zero_cost.PROXIES:
        zero_cost.score_network(name, net, _images(), torch.tensor(Y))
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN stats included
    assert not any(p.requires_grad for p in net.parameters())
    assert all(p.grad is None for p in net.parameters())
    with pytest.raises(KeyError, match="unknown zero-cost proxy"):
        zero_cost.score_network("nope", net, _images(), torch.tensor(Y))
