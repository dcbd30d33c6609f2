"""Export a subnet for deployment: ONNX, TorchScript and an architecture card.

    loaded = utils.export.hub.build_subnet(checkpoint="eval-x/best.pth.tar")
    report = export_subnet(loaded, "exported/")

writes into the folder

    model.onnx    input "images" (N x 3 x S x S float32, N dynamic), output "logits" (N x C)
    model.ts.pt   TorchScript (traced), same input and output
    arch.json     the architecture card: space config, architecture, FLOPs and params (the
                  lookup table of utils/flops/table.py), input size, format and normalisation
                  (the trained-on dataset's mean/std), validation resize and crop fraction,
                  class names, top-1 when recorded, source checkpoint, versions, and the
                  check below

Everything is first written into a temp folder beside the output, reloaded from there and
run with ONNX Runtime and TorchScript on a seeded random batch: both must agree with the
PyTorch model within `atol` (max absolute difference of the logits), else the export is
refused in one line and nothing is left behind. Only then are the files renamed into the
output folder (the whole temp folder when the output does not exist yet).
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
import platform
import shutil
import sys
import tempfile
import warnings
from dataclasses import dataclass

import torch

from utils.cli.common import UserError
from utils.export.hub import BGR255, LoadedSubnet, describe_input

EXPORT_VERSION = 1
CARD_FORMAT = "bnnas-arch-card"
OPSET = 17
ONNX_NAME, TS_NAME, CARD_NAME = "model.onnx", "model.ts.pt", "arch.json"
FILES = (ONNX_NAME, TS_NAME, CARD_NAME)
INPUT_NAME, OUTPUT_NAME = "images", "logits"
REQUIREMENTS = "requirements-export.txt"
# (import name, pip name) of what the export needs beyond requirements.txt.
DEPENDENCIES = (("onnx", "onnx"), ("onnxruntime", "onnxruntime"))
TMP_MARK = ".tmp-"
TRACE_BATCH = 2  # the traced / exported example batch; the check uses another size


@dataclass
class ExportReport:
    out_dir: str
    files: tuple[str, ...]
    onnx_max_diff: float
    torchscript_max_diff: float
    card: dict


def require_dependencies() -> dict:
    """The export's optional packages, imported; a missing one is a one-line UserError."""
    mods = {}
    for name, pip_name in DEPENDENCIES:
        try:
            mods[name] = importlib.import_module(name)
        except ImportError as e:
            raise UserError(f"the export needs the '{pip_name}' package ({e}): pip install "
                            f"-r {REQUIREMENTS}") from None
    return mods


def check_out_dir(path: str | None, flag: str = "--out") -> str:
    """Refuse, before any work, an output that is not (or cannot become) a folder."""
    if path is None or not str(path).strip():
        raise UserError(f"{flag} is empty (an unset variable?): give a folder")
    path = os.path.abspath(path)
    if os.path.lexists(path) and not os.path.isdir(path):
        raise UserError(f"{flag} {path} is a file, not a folder")
    parent = path
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise UserError(f"{flag} {path} is under {parent}, a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path}: cannot write in {parent} (permission denied)")
    return path


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sample_batch(loaded: LoadedSubnet, batch: int, seed: int) -> torch.Tensor:
    """A seeded random batch in the value range the network expects."""
    g = torch.Generator().manual_seed(seed)
    size = loaded.config.input_size
    if loaded.input_format == BGR255:
        return torch.rand(batch, 3, size, size, generator=g) * 255.0
    return torch.randn(batch, 3, size, size, generator=g)


@contextlib.contextmanager
def _quiet():
    """The exporters' deprecation chatter (the TorchScript-based paths) is not news."""
    with warnings.catch_warnings():
        for category in (DeprecationWarning, FutureWarning, UserWarning):
            warnings.simplefilter("ignore", category)
        try:
            from torch.jit import TracerWarning
            warnings.simplefilter("ignore", TracerWarning)
        except ImportError:
            pass
        yield


def export_onnx(net: torch.nn.Module, example: torch.Tensor, path: str, opset: int = OPSET) -> None:
    """The classic (TorchScript-based) exporter, with a dynamic batch axis."""
    import inspect
    kwargs = dict(input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=opset,
                  dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                  do_constant_folding=True)
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kwargs["dynamo"] = False
    try:
        with _quiet():
            torch.onnx.export(net, (example,), path, **kwargs)
    except Exception as e:  # noqa: BLE001 - the exporter's errors are many and varied
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"ONNX export failed (opset {opset}, torch {torch.__version__}): "
                        f"{type(e).__name__}: {first}") from None


def export_torchscript(net: torch.nn.Module, example: torch.Tensor, path: str) -> None:
    try:
        with _quiet():
            traced = torch.jit.trace(net, example, check_trace=False)
            traced.save(path)
    except Exception as e:  # noqa: BLE001
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"TorchScript export failed: {type(e).__name__}: {first}") from None


def onnx_outputs(path: str, x: torch.Tensor) -> torch.Tensor:
    """Check the written ONNX model and run it with ONNX Runtime (CPU)."""
    import onnx
    import onnxruntime as ort
    model = onnx.load(path)
    onnx.checker.check_model(model)
    inputs = [i.name for i in model.graph.input]
    outputs = [o.name for o in model.graph.output]
    if inputs != [INPUT_NAME] or outputs != [OUTPUT_NAME]:
        raise UserError(f"{path}: inputs {inputs} / outputs {outputs}, not "
                        f"['{INPUT_NAME}'] / ['{OUTPUT_NAME}']")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, torch.get_num_threads())
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
    (out,) = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})
    return torch.from_numpy(out)


def torchscript_outputs(path: str, x: torch.Tensor) -> torch.Tensor:
    with _quiet():
        module = torch.jit.load(path, map_location="cpu")
    module.eval()
    with torch.no_grad():
        return module(x)


def _max_diff(name: str, got: torch.Tensor, want: torch.Tensor) -> float:
    if tuple(got.shape) != tuple(want.shape):
        raise UserError(f"the {name} model gives logits of shape {tuple(got.shape)}, not "
                        f"{tuple(want.shape)}")
    if not torch.isfinite(got).all():
        raise UserError(f"the {name} model gives non-finite logits")
    return float((got.double() - want.double()).abs().max())


def _versions() -> dict:
    out = dict(export=EXPORT_VERSION, torch=torch.__version__, python=platform.python_version())
    for name, _ in DEPENDENCIES:
        mod = sys.modules.get(name)
        out[name] = getattr(mod, "__version__", None) if mod else None
    return out


def card_dataset(loaded: LoadedSubnet) -> str:
    """The dataset whose mean/std the card gives; one the checkpoint records but this
    process has not registered (a plug-in's, its file not loaded) is a one-line UserError."""
    from utils.data.datasets import recorded_dataset
    return recorded_dataset(dict(dataset=loaded.dataset),
                            loaded.checkpoint or "the network")


def architecture_card(loaded: LoadedSubnet, flops: int, params: int, diffs: dict,
                      batch: int, seed: int, atol: float, opset: int) -> dict:
    from utils.data.transforms import val_resize_size
    cfg, size = loaded.config, loaded.config.input_size
    source = dict(checkpoint=None, kind=None, weights="random init (PyTorch's default)",
                  iters=None, sha256=None)
    if loaded.checkpoint is not None:
        source = dict(checkpoint=os.path.abspath(loaded.checkpoint), kind=loaded.kind,
                      weights=("this project's retrained checkpoint" if loaded.kind == "subnet"
                               else "the original BN-NAS release's retrained checkpoint"),
                      iters=loaded.iters, sha256=_sha256(loaded.checkpoint))
    return dict(
        format=CARD_FORMAT, export_version=EXPORT_VERSION,
        space=cfg.space, config=cfg.to_dict(),
        arch=loaded.space.format(loaded.arch), arch_list=list(loaded.arch),
        arch_source=loaded.arch_source,
        op_names=[None if op < 0 else loaded.space.op_names[op] for op in loaded.arch],
        flops=int(flops), params=int(params),
        flops_note=(f"multiply-accumulates of one {size}x{size} image and parameter count, "
                    f"from the FLOPs lookup table (utils/flops/table.py)"),
        input=dict(name=INPUT_NAME, shape=["batch", 3, size, size], dtype="float32",
                   layout="NCHW", input_size=size,
                   **describe_input(loaded.input_format, card_dataset(loaded)),
                   dataset=loaded.dataset, resize_mode=loaded.resize_mode,
                   crop_pct=loaded.crop_pct,
                   resize_shorter_side=val_resize_size(size, loaded.crop_pct),
                   center_crop=size),
        output=dict(name=OUTPUT_NAME, shape=["batch", cfg.classes],
                    note="unnormalised class scores (apply softmax for probabilities)"),
        num_classes=cfg.classes, classes=loaded.class_names,
        top1=loaded.top1,
        top1_note=(None if loaded.top1 is None else
                   "valid_acc_top1 (%) of these weights as the checkpoint records it"),
        source=source,
        files=dict(onnx=ONNX_NAME, torchscript=TS_NAME),
        onnx_opset=opset,
        check=dict(batch=batch, seed=seed, atol=atol,
                   max_abs_diff=dict(onnxruntime=diffs["onnxruntime"],
                                     torchscript=diffs["torchscript"])),
        versions=_versions(),
    )


def card_json(obj, indent: int = 0) -> str:
    """JSON with one key per line and lists of plain values on one line (readable cards)."""
    pad, inner = " " * indent, " " * (indent + 2)
    if isinstance(obj, dict) and obj:
        items = [f"{inner}{json.dumps(str(k))}: {card_json(v, indent + 2)}"
                 for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    if isinstance(obj, list) and any(isinstance(v, (dict, list)) for v in obj):
        items = [f"{inner}{card_json(v, indent + 2)}" for v in obj]
        return "[\n" + ",\n".join(items) + f"\n{pad}]"
    return json.dumps(obj, allow_nan=False)


def _publish(stage: str, out_dir: str) -> None:
    """Move the checked files from the temp folder into `out_dir`."""
    if not os.path.exists(out_dir):
        try:
            os.rename(stage, out_dir)  # atomic: the folder appears complete
            return
        except OSError:
            if not os.path.isdir(out_dir):
                raise
    for name in FILES:  # an existing folder: each file replaced atomically, card last
        os.replace(os.path.join(stage, name), os.path.join(out_dir, name))
    shutil.rmtree(stage, ignore_errors=True)


def export_subnet(loaded: LoadedSubnet, out_dir: str, *, batch: int = 4, seed: int = 0,
                  atol: float = 1e-4, opset: int = OPSET, log=print) -> ExportReport:
    """Write, check and publish model.onnx, model.ts.pt and arch.json (module docstring)."""
    from utils.flops.table import load_table
    require_dependencies()
    out_dir = check_out_dir(out_dir)
    card_dataset(loaded)  # the card's normalisation needs it: refuse before any work
    net = loaded.net.cpu().float().eval()
    table = load_table(loaded.config)
    flops, params = table.flops_of(loaded.arch), table.params_of(loaded.arch)
    size = loaded.config.input_size
    example = torch.zeros(TRACE_BATCH, 3, size, size)
    x = sample_batch(loaded, batch, seed)
    with torch.no_grad():
        want = net(x)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    stage = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(out_dir)}{TMP_MARK}")
    try:
        mask = os.umask(0)  # mkdtemp makes it private; the output gets the usual mode
        os.umask(mask)
        os.chmod(stage, 0o777 & ~mask)
        onnx_path, ts_path = (os.path.join(stage, n) for n in (ONNX_NAME, TS_NAME))
        with torch.no_grad():
            export_onnx(net, example, onnx_path, opset)
            export_torchscript(net, example, ts_path)
        diffs = dict(onnxruntime=_max_diff("ONNX Runtime", onnx_outputs(onnx_path, x), want),
                     torchscript=_max_diff("TorchScript", torchscript_outputs(ts_path, x), want))
        log(f"check on a random batch of {batch} (seed {seed}): max |logit difference| vs "
            f"PyTorch: ONNX Runtime {diffs['onnxruntime']:.3g}, TorchScript "
            f"{diffs['torchscript']:.3g} (tolerance {atol:g})")
        bad = [f"{k} {v:.3g}" for k, v in diffs.items() if not v <= atol]
        if bad:
            raise UserError(f"the exported model disagrees with PyTorch ({', '.join(bad)} > "
                            f"{atol:g} max abs difference): nothing written to {out_dir}")
        card = architecture_card(loaded, flops, params, diffs, batch, seed, atol, opset)
        with open(os.path.join(stage, CARD_NAME), "w") as f:
            f.write(card_json(card) + "\n")
            f.flush()
            os.fsync(f.fileno())
        _publish(stage, out_dir)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return ExportReport(out_dir, FILES, diffs["onnxruntime"], diffs["torchscript"], card)
