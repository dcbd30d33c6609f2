"""The BN indicator: mean |gamma| of each candidate op's last BN, layers x ops.

An architecture's score is the sum over layers of its op's entry (a skip scores 0), so a
matrix with an extra zero column scores any batch of architectures with one gather.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
from torch import nn

from utils.spaces import SearchSpace, Supernet, op_columns


def indicator_matrix(space: SearchSpace, supernet: Supernet | Mapping[str, torch.Tensor]) -> np.ndarray:
    """float64 [layers, ops + 1]; column -1 (the last) is the skip and holds 0."""
    state = supernet.state_dict() if isinstance(supernet, nn.Module) else supernet
    names = space.indicator_param_names()
    m = np.zeros((space.num_layers, space.num_ops + 1), dtype=np.float64)
    for i, row in enumerate(names):
        for op, prefix in enumerate(row):
            key = prefix + ".weight"
            if key not in state:
                raise KeyError(f"indicator BN '{key}' is missing from the supernet weights")
            m[i, op] = state[key].detach().abs().double().mean().item()
    if not np.isfinite(m).all():
        # A diverged supernet: every score would be nan/inf and the search meaningless.
        i, op = (int(v) for v in np.argwhere(~np.isfinite(m))[0])
        from utils.cli.common import UserError
        raise UserError(f"the supernet's BN indicator is not finite ({m[i, op]} at layer {i} "
                        f"op {op}, '{names[i][op]}.weight'): its training diverged; retrain "
                        f"it (lower --learning_rate)")
    return m


def score(matrix: np.ndarray, archs) -> np.ndarray | float:
    """BN-indicator score of one architecture (float) or of a [N, layers] batch."""
    a = op_columns(archs, matrix.shape[1])
    if a.ndim == 1:
        return float(matrix[np.arange(a.shape[0]), a].sum())
    return matrix[np.arange(a.shape[1]), a].sum(axis=1)
