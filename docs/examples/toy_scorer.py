"""A worked example of a plug-in scorer (docs/extending.md): the root-mean-square gamma.

    python3 search/ea.py --plugin docs/examples/toy_scorer.py --score toy

BN-NAS scores an op by the mean |gamma| of its last BN. This scorer takes the root mean
square of the same gammas instead: still one number per (layer, op), so the score of an
architecture is a sum over its layers (`additive = True`) and the exact search can solve
it too. Registering the class under its `name` is all it takes to make it a `--score`
choice; the search log records "toy" as its score_kind.
"""
import numpy as np

from utils.search.scorers import SCORERS, Scorer


@SCORERS.register
class ToyScorer(Scorer):
    name = "toy"
    label = "RMS gamma"                                    # eval.py's header, progress lines
    axis_label = "sum of RMS gamma of each op's last BN"   # plots
    description = "RMS gamma (toy example), higher is better"  # ea.py's top-k header
    help = "root-mean-square BN gamma (docs/examples/toy_scorer.py)"
    additive = True  # one entry per layer: score = sum of matrix()[layer, op]

    def prepare(self, ctx):
        super().prepare(ctx)
        space, state = ctx.space, ctx.state_dict
        m = np.zeros((space.num_layers, space.num_ops + 1))  # last column: skip, scores 0
        for i, row in enumerate(space.indicator_param_names()):
            for op, prefix in enumerate(row):
                gamma = state[prefix + ".weight"].double()
                m[i, op] = float(gamma.pow(2).mean().sqrt())
        self._matrix = m

    def matrix(self):
        return self._matrix
    # score(archs) comes from the base class for an additive scorer: offset() plus one
    # matrix entry per layer. A scorer that is not a sum over layers overrides score().
