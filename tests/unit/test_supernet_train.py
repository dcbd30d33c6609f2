"""Supernet training step: what is frozen stays bit-identical, what trains changes."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from utils.dist import DistEnv
from utils.spaces import SKIP, get_space, make_config
from utils.train.supernet import SupernetTrainer, freeze_for_bn_nas, sample_path

CFG = make_config("mobilenet", input_size=32, width_mult=0.25, classes=4, stem_stride=2)


def _setup(train_all: bool, seed: int = 0):
    torch.manual_seed(0)
    space = get_space(CFG)
    net = space.supernet()
    trainer = SupernetTrainer(space, net, DistEnv(), train_all=train_all, seed=seed,
                              total_iters=10, lr=0.25, weight_decay=4e-5)
    return space, net, trainer


def _batch(i: int, n: int = 8):
    g = torch.Generator().manual_seed(100 + i)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 4, (n,), generator=g)


def _clone_state(net) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.named_parameters()}


def _op_of(name: str) -> tuple[int, int] | None:
    parts = name.split(".")
    if parts[0] == "layers":
        return int(parts[1]), int(parts[3])
    return None


def test_sample_path_is_a_pure_function_of_seed_and_iteration():
    space = get_space(CFG)
    paths = [sample_path(space, 7, it) for it in range(50)]
    assert paths == [sample_path(space, 7, it) for it in range(50)]
    assert paths != [sample_path(space, 8, it) for it in range(50)]
    for p in paths:
        assert space.validate(p) == p
        assert all(p[i] == SKIP for i in CFG.fixed_skips)
    # Uniform over each free layer's 6 ops: all of them show up over 50 draws.
    assert {p[0] for p in paths} == set(range(space.num_ops))


def test_bn_nas_steps_leave_everything_but_sampled_indicator_bns_bit_identical():
    space, net, trainer = _setup(train_all=False)
    indicator = {n for row in space.indicator_param_names() for n in row}
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable == {f"{k}.{w}" for k in indicator for w in ("weight", "bias")}
    opt_ids = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert opt_ids == {id(p) for p in net.parameters() if p.requires_grad}
    assert all(g["weight_decay"] == 0 for g in trainer.optimizer.param_groups)

    before = _clone_state(net)
    sampled: set[tuple[int, int]] = set()
    for it in range(4):
        arch = sample_path(space, 0, it)
        sampled |= {(i, op) for i, op in enumerate(arch) if op != SKIP}
        trainer.step(*_batch(it), it)
        assert all(p.grad is None for p in net.parameters())
    after = dict(net.named_parameters())

    changed_indicators = 0
    for name, old in before.items():
        new = after[name]
        owner = _op_of(name)
        is_indicator = name.rsplit(".", 1)[0] in indicator
        if old.dim() == 4 or name.startswith("head.classifier") or not is_indicator:
            assert torch.equal(old, new), f"frozen parameter {name} changed"
        elif owner not in sampled:
            assert torch.equal(old, new), f"never-sampled op's {name} changed"
        else:
            changed_indicators += int(not torch.equal(old, new))
    # Every sampled op's indicator BN (gamma and beta) moved.
    assert changed_indicators == 2 * len(sampled)
    # Momentum buffers exist only for what was sampled.
    names = {id(p): n for n, p in net.named_parameters()}
    with_state = {_op_of(names[id(p)]) for p in trainer.optimizer.state}
    assert with_state == sampled


def test_an_op_not_sampled_in_a_step_gets_no_momentum_or_decay_update():
    space, net, trainer = _setup(train_all=True)
    # Two hand-made paths that differ at layer 0: op 0 trains in step 0, op 1 in step 1.
    a = list(sample_path(space, 0, 0))
    b = list(a)
    a[0], b[0] = 0, 1
    trainer.step(*_batch(0), 0, arch=a)
    op0 = {n: p.detach().clone() for n, p in net.layers[0].ops[0].named_parameters()}
    conv_w = dict(net.stem.named_parameters())["first.conv.weight"].detach().clone()
    trainer.step(*_batch(1), 1, arch=b)
    for n, p in net.layers[0].ops[0].named_parameters():
        assert torch.equal(op0[n], p), f"unsampled op 0 moved in step 1: {n}"
    # ... while the shared stem (on every path) and the sampled op kept training.
    assert not torch.equal(conv_w, dict(net.stem.named_parameters())["first.conv.weight"])
    assert all(p.grad is None for p in net.parameters())


def test_train_all_trains_convolutions_and_decays_conv_weights_and_the_classifier():
    space, net, trainer = _setup(train_all=True)
    before = _clone_state(net)
    arch = sample_path(space, 0, 0)
    trainer.step(*_batch(0), 0)
    after = dict(net.named_parameters())
    on_path = [f"layers.{i}.ops.{op}." for i, op in enumerate(arch) if op != SKIP]
    convs = [n for n in before if before[n].dim() == 4
             and (not n.startswith("layers.") or any(n.startswith(p) for p in on_path))]
    assert convs and all(not torch.equal(before[n], after[n]) for n in convs)
    decay = {id(p) for g in trainer.optimizer.param_groups if g["weight_decay"] > 0
             for p in g["params"]}
    for n, p in net.named_parameters():
        # the original's supernet decay group: 4-D conv weights, classifier weight and bias
        assert (id(p) in decay) == (p.dim() == 4 or n.startswith("head.classifier.")), n


def test_freeze_for_bn_nas_leaves_only_indicator_affine_trainable():
    space = get_space(CFG)
    net = space.supernet()
    trainable = freeze_for_bn_nas(space, net)
    assert len(trainable) == 2 * space.num_layers * space.num_ops
    assert sum(p.requires_grad for p in net.parameters()) == len(trainable)


def test_steps_repeat_bit_identically():
    results = []
    for _ in range(2):
        _, net, trainer = _setup(train_all=False)
        for it in range(3):
            trainer.step(*_batch(it), it)
        results.append(_clone_state(net))
    assert all(torch.equal(results[0][k], results[1][k]) for k in results[0])


@pytest.mark.parametrize("world", [1, 2, 3])
def test_global_batch_sampler_shards_are_disjoint_and_resume_skips_seen_steps(world):
    from utils.data.samplers import GlobalBatchSampler
    n, batch = 50, 12
    samplers = [GlobalBatchSampler(n, batch, r, world, seed=3) for r in range(world)]
    for epoch in range(2):
        seen = []
        for s in samplers:
            s.set_epoch(epoch)
            batches = list(s)
            assert len(batches) == n // batch
            assert all(len(b) == batch // world and all(e == epoch for _, e in b) for b in batches)
            seen.extend(i for b in batches for i, _ in b)
        assert len(seen) == len(set(seen)) == (n // batch) * batch
        # Mid-epoch resume yields exactly the remaining steps.
        s = samplers[0]
        full = list(s)
        s.set_epoch(epoch, 2)
        assert list(s) == full[2:]
        assert [i for i, _ in full[3]] == s.batch_indices(epoch, 3)


def test_shard_sampler_covers_exactly_once():
    from utils.data.samplers import ShardSampler
    for n, world in ((21, 2), (5, 4), (3, 8)):
        idx = [i for r in range(world) for i in ShardSampler(n, r, world)]
        assert sorted(idx) == list(range(n))


def test_augmentation_depends_only_on_seed_epoch_and_index(tiny_data):
    import os
    from utils.data.folder import SeededImageFolder, scan_image_folder
    folder = scan_image_folder(os.path.join(tiny_data, "train"))
    ds = SeededImageFolder(folder.samples, 24, train=True, seed=5)
    a = ds[(3, 1)]
    ds[(4, 1)]
    b = ds[(3, 1)]
    assert torch.equal(a[0], b[0]) and torch.equal(a[2], b[2]) and a[1] == b[1]
    c = ds[(3, 2)]
    assert not (torch.equal(a[0], c[0]) and torch.equal(a[2], c[2]))
    assert a[0].dtype == torch.uint8 and a[0].shape == (3, 24, 24)


def test_prepare_batch_formats():
    from utils.data.loaders import prepare_batch
    from utils.data.transforms import IMAGENET_MEAN, IMAGENET_STD
    img = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    y = torch.tensor([1, 2])
    light = torch.tensor([[0.01, -0.02, 0.03], [0.0, 0.0, 0.0]])
    x, _ = prepare_batch((img, y, light), torch.device("cpu"), "rgb")
    # lighting as the original: clipped to 0-255 and truncated to whole grey levels
    ref = ((img.float() / 255 + light.view(2, 3, 1, 1)) * 255).clamp(0, 255).floor() / 255
    ref = (ref - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    assert torch.allclose(x, ref, atol=1e-5)
    x, _ = prepare_batch((img, y), torch.device("cpu"), "bgr255", channels_last=True)
    assert torch.equal(x, img.float().flip(1))
    assert x.is_contiguous(memory_format=torch.channels_last)


def test_linear_schedule_and_topk():
    from utils.train.meters import topk_correct
    from utils.train.schedule import LinearSchedule
    s = LinearSchedule(0.25, 5e-4, 100)
    assert s.lr_at(0) == 0.25 and abs(s.lr_at(100) - 5e-4) < 1e-12
    assert abs(s.lr_at(50) - (5e-4 + (0.25 - 5e-4) / 2)) < 1e-12
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.3], [0.2, 0.3, 0.5]])
    assert topk_correct(logits, torch.tensor([1, 2, 0]), (1, 2)).tolist() == [1, 2]


def test_rng_state_round_trips_through_weights_only_load(tmp_path):
    import random
    from utils.train.rng import rng_state, seed_everything, set_rng_state
    seed_everything(3)
    path = tmp_path / "rng.pt"
    torch.save(rng_state(), path)
    expect = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(torch.load(path, weights_only=True))
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expect[0], got[0]) and np.array_equal(expect[1], got[1])
    assert expect[2] == got[2]


def test_folder_index_matches_torchvision_imagefolder(tiny_data, tmp_path):
    import os
    from torchvision.datasets import ImageFolder
    from utils.data.folder import scan_image_folder
    root = os.path.join(tiny_data, "train")
    ours, theirs = scan_image_folder(root), ImageFolder(root)
    assert ours.classes == theirs.classes and ours.class_to_idx == theirs.class_to_idx
    assert ours.samples == theirs.samples


def _named(net, params) -> set[str]:
    ids = {id(p) for p in params}
    return {n for n, p in net.named_parameters() if id(p) in ids}


@pytest.mark.parametrize("bn_params,train_classifier", [
    ("indicator", False), ("indicator", True), ("all", False), ("all", True)])
def test_ablation_switches_train_exactly_what_they_name(bn_params, train_classifier):
    torch.manual_seed(0)
    space = get_space(CFG)
    net = space.supernet()
    trainer = SupernetTrainer(space, net, DistEnv(), train_all=False, seed=0, total_iters=10,
                              lr=0.25, bn_params=bn_params, train_classifier=train_classifier)
    bn_modules = {n for n, m in net.named_modules()
                  if isinstance(m, torch.nn.BatchNorm2d)}
    if bn_params == "indicator":
        bn_modules = {n for row in space.indicator_param_names() for n in row}
    named = {f"{m}.{w}" for m in bn_modules for w in ("weight", "bias")}
    if train_classifier:
        named |= {"head.classifier.weight", "head.classifier.bias"}
    assert {n for n, p in net.named_parameters() if p.requires_grad} == named
    assert _named(net, [p for g in trainer.optimizer.param_groups for p in g["params"]]) == named
    before = _clone_state(net)
    arch = sample_path(space, 0, 0)
    for it in range(2):
        trainer.step(*_batch(it), it)
    after = dict(net.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    on_path = [f"layers.{i}.ops.{op}." for i, op in enumerate(arch) if op != SKIP]
    assert changed <= named  # nothing else moves
    # ... and what is named and on the first path (or shared) did move
    first = {n for n in named if not n.startswith("layers.") or any(n.startswith(p)
                                                                     for p in on_path)}
    assert first and first <= changed
