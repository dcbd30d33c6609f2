"""torch.hub entries of BN-NAS.

    import torch
    net = torch.hub.load("path/to/this/repo", "subnet", source="local")  # published BN-NAS
    net = torch.hub.load(repo, "subnet", source="local", checkpoint="eval-x/best.pth.tar")
    net = torch.hub.load(repo, "subnet", source="local", space="shufflenet")
    sn = torch.hub.load(repo, "supernet", source="local", input_size=32, classes=10)
    y = sn(x, arch)

Importing this file is cheap (the standard library only); the library under utils/ is
imported when an entry is called, from this file's folder whatever the working directory
(an unrelated `utils` package the caller imported first is set aside for the call and
put back afterwards).
"""
from __future__ import annotations

import contextlib
import os
import sys

dependencies = ["torch", "numpy"]

_HERE = os.path.dirname(os.path.abspath(__file__))
_PKG = "utils"
_OURS: dict = {}  # our utils modules, kept while a foreign `utils` is imported


def _is_ours(module) -> bool:
    path = getattr(module, "__file__", None)
    if not path:
        return False
    ours = os.path.realpath(os.path.join(_HERE, _PKG))
    return os.path.realpath(path).startswith(ours + os.sep)


def _pkg_names() -> list:
    return [n for n in list(sys.modules) if n == _PKG or n.startswith(_PKG + ".")]


@contextlib.contextmanager
def _repo_imports():
    """`utils` is this repository's for the duration of an entry call."""
    before = {n: sys.modules[n] for n in _pkg_names()}
    foreign = [n for n, m in before.items() if not _is_ours(m)]
    added = _HERE not in sys.path
    if added:
        sys.path.insert(0, _HERE)
    if foreign:
        for n in foreign:
            del sys.modules[n]
        for n, m in _OURS.items():
            sys.modules.setdefault(n, m)
    try:
        yield
    finally:
        if foreign:  # put the caller's modules back; keep ours aside for the next call
            for n in _pkg_names():
                if n not in before or n in foreign:
                    _OURS[n] = sys.modules.pop(n)
            sys.modules.update(before)
        if added and _HERE in sys.path:
            sys.path.remove(_HERE)


def subnet(space=None, arch=None, checkpoint=None, pretrained=False, dropout=None,
           **space_config):
    """A BN-NAS subnet (a torch.nn.Module in eval mode).

    space: "mobilenet" (default; the BN-NAS space), "shufflenet" (SPOS), or a space a
        plug-in registered (utils.plugins.load_plugin("my_space.py") first); default the
        checkpoint's.
    arch: "3 -1 0 4 ..." or a list of ints (-1 = skip); default the checkpoint's, else the
        space's published architecture (mobilenet: BN-NAS, 5,228,536 parameters at the
        ImageNet setting; shufflenet: SPOS, 3,558,464).
    checkpoint: a path to this project's retrained checkpoint (eval-NAME/best.pth.tar;
        config and architecture come from it, a different given arch is refused) or the
        original BN-NAS release's retrained one (module names translated; give arch if it
        is not the published architecture; it expects BGR 0-255 input).
    pretrained: no weights are published for download; True requires `checkpoint`.
    dropout: before the classifier (default: the checkpoint's, else the space's).
    space_config: input_size, width_mult, classes, stem_stride, fixed_skips (default the
        checkpoint's, else 224, 1.0, 1000, 2, the space's).

    Without a checkpoint the weights are PyTorch's default init. The module also carries
    `arch`, `config`, `input_format` ("rgb": ImageNet mean/std; "bgr255": the original's)
    and `class_names` (or None).
    """
    with _repo_imports():
        from utils.export.hub import build_subnet
        if pretrained and checkpoint is None:
            from utils.cli.common import UserError
            raise UserError("no BN-NAS weights are published for download: pass "
                            "checkpoint= (this project's eval-NAME/best.pth.tar or the "
                            "original's retrained checkpoint)")
        loaded = build_subnet(space=space, arch=arch, checkpoint=checkpoint, dropout=dropout,
                              **space_config)
    net = loaded.net
    net.input_format, net.class_names = loaded.input_format, loaded.class_names
    return net


def supernet(space=None, checkpoint=None, dropout=None, **space_config):
    """A BN-NAS supernet (eval mode); `net(x, arch)` runs the path of one architecture.

    space, space_config: as for `subnet` (default the checkpoint's config); checkpoint:
    this project's supernet checkpoint (supernet/main.py's checkpoint.pth.tar,
    kind="supernet") or the original release's supernet, whose weights are loaded.
    """
    with _repo_imports():
        from utils.export.hub import build_supernet
        loaded = build_supernet(space=space, checkpoint=checkpoint, dropout=dropout,
                                **space_config)
    net = loaded.net
    net.input_format, net.class_names = loaded.input_format, loaded.class_names
    return net
