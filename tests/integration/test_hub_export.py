"""torch.hub entries (hubconf.py) and the exporter (retrain/export.py, utils/export/writers.py).

The retrained checkpoint is made by the retrain script itself (2 iterations on the tiny
data), so the hub and the exporter read exactly what retraining writes. Exported files are
re-loaded here with ONNX Runtime and TorchScript, independently of the exporter's check.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from conftest import ROOT, randomise_bn, run_env
from utils.checkpoints.io import load, save_atomic
from utils.cli.common import UserError
from utils.flops.table import load_table
from utils.spaces import get_space, make_config

MOBILENET = "3 -1 0 4 0 -1 -1 0 4 -1 4 4 1 4 2 0 0 4 0 2 2"  # BN-NAS, published
SHUFFLENET = "2 1 0 1 2 0 2 0 2 0 2 3 0 0 0 0 3 2 3 3"  # SPOS, published
TINY = dict(input_size=32, width_mult=0.25, classes=4, stem_stride=1)
CFG = make_config("mobilenet", **TINY)
TINY_FLAGS = ["--input-size", "32", "--width-mult", "0.25", "--stem-stride", "1"]


def _load_script(name: str, path: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, path))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


EXPORT = _load_script("retrain_export", "retrain/export.py")


def hub(entry: str, **kwargs):
    return torch.hub.load(ROOT, entry, source="local", **kwargs)


def n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def run_export(args: list[str], capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        rc = EXPORT.main(args)
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    """FLOPs tables built for these tests go to a temp folder, not the user's cache."""
    d = str(tmp_path_factory.mktemp("tables"))
    old = os.environ.get("BNNAS_TABLE_DIR")
    os.environ["BNNAS_TABLE_DIR"] = d
    yield d
    if old is None:
        os.environ.pop("BNNAS_TABLE_DIR", None)
    else:
        os.environ["BNNAS_TABLE_DIR"] = old


@pytest.fixture(scope="module")
def retrained(tiny_data, tmp_path_factory, tables):
    """eval-tiny/best.pth.tar of a 2-iteration retrain of the published architecture."""
    work = tmp_path_factory.mktemp("retrain")
    script = _load_script("retrain_for_export", "retrain/train_from_scratch.py")
    here = os.getcwd()
    os.chdir(work)
    state = torch.get_rng_state()
    try:
        rc = script.main(["--train_dir", os.path.join(tiny_data, "train"),
                          "--test_dir", os.path.join(tiny_data, "val"), *TINY_FLAGS,
                          "--batch_size", "8", "--workers", "0", "--total_iters", "2",
                          "--eval-freq", "2", "--report_freq", "1", "--learning_rate", "0.1",
                          "--device", "cpu", "--save", "tiny"])
    finally:
        os.chdir(here)
        torch.set_rng_state(state)
    assert rc == 0
    path = str(work / "eval-tiny" / "best.pth.tar")
    assert os.path.exists(path)
    return path


def own_net(path: str) -> torch.nn.Module:
    """The checkpoint's network, built from its own record (not through utils/export/hub.py)."""
    ck = load(path)
    net = get_space(ck["config"]).subnet(ck["arch"])
    net.load_state_dict({k.removeprefix("module."): v for k, v in ck["state_dict"].items()})
    return net.eval()


# ---- torch.hub ----------------------------------------------------------------------

def test_hub_default_is_published_bnnas():
    net = hub("subnet")
    assert n_params(net) == 5_228_536
    assert net.arch == get_space("mobilenet").parse(MOBILENET)
    assert not net.training and net.input_format == "rgb" and net.class_names is None
    with torch.no_grad():
        assert net(torch.randn(1, 3, 224, 224)).shape == (1, 1000)
    sn = hub("subnet", space="shufflenet")
    assert n_params(sn) == 3_558_464
    assert sn.arch == get_space("shufflenet").parse(SHUFFLENET)


def test_hub_supernet_forward_and_checkpoint(tmp_path):
    sn = hub("supernet", **TINY)
    space = get_space(CFG)
    arch = space.random_arch(np.random.default_rng(0))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert sn(x, arch).shape == (2, 4)
    randomise_bn(sn, 1)
    path = str(tmp_path / "supernet.pth.tar")
    save_atomic(dict(kind="supernet", config=CFG.to_dict(), state_dict=sn.state_dict(),
                     classes=["a", "b", "c", "d"]), path)
    again = hub("supernet", checkpoint=path)  # config from the checkpoint
    assert again.class_names == ["a", "b", "c", "d"]
    with torch.no_grad():
        assert torch.equal(again(x, arch), sn(x, arch))
    with pytest.raises(UserError, match="another search space config"):
        hub("supernet", checkpoint=path, classes=10)


def test_hub_loads_our_checkpoint_like_its_own_net(retrained):
    net = hub("subnet", checkpoint=retrained)
    ref = own_net(retrained)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(net(x), ref(x))
    assert net.config == CFG and net.arch == ref.arch and not net.training
    assert net.class_names == [f"class_{i}" for i in range(4)]
    # The same architecture given (as a list) is fine; another one is refused.
    hub("subnet", checkpoint=retrained, arch=list(ref.arch))
    other = list(ref.arch)
    other[0] = (other[0] + 1) % 6
    with pytest.raises(UserError, match="is for architecture"):
        hub("subnet", checkpoint=retrained, arch=other)
    with pytest.raises(UserError, match="another search space config"):
        hub("subnet", checkpoint=retrained, classes=10)


def test_hub_loads_an_original_retrained_checkpoint(tmp_path):
    from test_retrain_interop import to_reference_names
    space = get_space(CFG)
    arch = space.parse(MOBILENET)
    native = space.subnet(arch).eval()
    randomise_bn(native, 2)
    path = str(tmp_path / "ref.pth.tar")
    save_atomic(dict(iters=10, best_acc_top1=12.5,
                     state_dict=to_reference_names(native.state_dict(), arch)), path)
    net = hub("subnet", checkpoint=path, **TINY)  # arch: the published one (default)
    x = torch.rand(2, 3, 32, 32) * 255
    with torch.no_grad():
        assert torch.equal(net(x), native(x))
    assert net.input_format == "bgr255"


def test_hub_refusals():
    with pytest.raises(UserError, match="unknown space config argument 'width'"):
        hub("subnet", width=0.5)
    with pytest.raises(UserError, match="no BN-NAS weights are published"):
        hub("subnet", pretrained=True)
    with pytest.raises(ValueError, match="architecture needs 21 layer choices"):
        hub("subnet", arch="3 -1 0", **TINY)


def test_hubconf_is_cheap_and_independent_of_cwd(tmp_path):
    """Importing hubconf imports neither torch nor the library; called from a folder
    whose own `utils` package the caller imported first, the entries still use ours and
    leave the caller's in place."""
    foreign = tmp_path / "utils"
    foreign.mkdir()
    (foreign / "__init__.py").write_text("FOREIGN = True\n")
    script = textwrap.dedent(f"""
        import importlib.util, sys
        import utils
        assert utils.FOREIGN
        hubconf = {os.path.join(ROOT, "hubconf.py")!r}
        spec = importlib.util.spec_from_file_location("hubconf", hubconf)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        assert mod.dependencies == ["torch", "numpy"]
        assert "torch" not in sys.modules and "utils.spaces" not in sys.modules
        import torch
        net = torch.hub.load({ROOT!r}, "subnet", source="local", input_size=32,
                             width_mult=0.25, classes=4)
        import utils
        assert utils.FOREIGN and "utils.spaces" not in sys.modules
        print(sum(p.numel() for p in net.parameters()))
    """)
    env = run_env()
    env.pop("PYTHONPATH", None)
    r = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    space = get_space(make_config("mobilenet", input_size=32, width_mult=0.25, classes=4))
    assert int(r.stdout.strip()) == n_params(space.subnet(space.parse(MOBILENET)))


# ---- export -------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_export_retrained_checkpoint(retrained, tmp_path, capsys, tables):
    import onnxruntime as ort
    out = str(tmp_path / "exported")
    rc, stdout, err = run_export(["--checkpoint", retrained, "--out", out], capsys)
    assert rc == 0, err
    assert "ONNX Runtime" in stdout and "TorchScript" in stdout
    assert sorted(os.listdir(out)) == ["arch.json", "model.onnx", "model.ts.pt"]
    assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n]

    ref = own_net(retrained)
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        want = ref(x)
        untrained = get_space(CFG).subnet(ref.arch).eval()(x)
    assert (want - untrained).abs().max() > 1e-2  # so the comparisons below mean something
    session = ort.InferenceSession(os.path.join(out, "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    assert [o.name for o in session.get_outputs()] == ["logits"]
    (got,) = session.run(None, {"images": x.numpy()})  # batch 5: the batch axis is dynamic
    assert np.abs(got - want.numpy()).max() <= 1e-4
    ts = torch.jit.load(os.path.join(out, "model.ts.pt"))
    with torch.no_grad():
        assert (ts(x) - want).abs().max().item() <= 1e-4

    with open(os.path.join(out, "arch.json")) as f:
        card = json.load(f)
    ck = load(retrained)
    table = load_table(CFG, tables)
    assert card["config"] == CFG.to_dict() and card["space"] == "mobilenet"
    assert card["arch"] == MOBILENET and card["arch_list"] == list(ck["arch"])
    assert card["flops"] == table.flops_of(ref.arch) == ck["flops"]
    assert card["params"] == table.params_of(ref.arch) == n_params(ref)
    assert card["input"]["input_size"] == 32 and card["input"]["format"] == "rgb"
    assert card["input"]["mean"] == [0.485, 0.456, 0.406]
    assert card["classes"] == [f"class_{i}" for i in range(4)] and card["num_classes"] == 4
    assert card["top1"] == pytest.approx(ck["best_acc_top1"])
    assert card["source"]["checkpoint"] == os.path.abspath(retrained)
    assert card["source"]["kind"] == "subnet" and card["source"]["iters"] == 2
    assert card["versions"]["export"] == 1 and card["check"]["batch"] == 4
    assert max(card["check"]["max_abs_diff"].values()) <= 1e-4


def test_export_random_init_into_existing_folder(tmp_path, capsys, tables):
    out = tmp_path / "try"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    rc, stdout, err = run_export(["--space", "shufflenet", "--model_id", SHUFFLENET,
                                  *TINY_FLAGS, "--classes", "3", "--out", str(out)], capsys)
    assert rc == 0, err
    assert sorted(os.listdir(out)) == ["arch.json", "keep.txt", "model.onnx", "model.ts.pt"]
    card = json.loads((out / "arch.json").read_text())
    assert card["space"] == "shufflenet" and card["arch"] == SHUFFLENET
    assert card["source"]["checkpoint"] is None and card["classes"] is None
    assert card["top1"] is None and card["config"]["classes"] == 3


def test_export_refusals(tmp_path, capsys, monkeypatch, tables):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    rc, out, err = run_export(["--model_id", MOBILENET, *TINY_FLAGS, "--classes", "4",
                               "--out", str(a_file)], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("error: ") and "is a file, not a folder" in err
    assert a_file.read_text() == "x"

    # Outputs that disagree with PyTorch: one line, and no folder (nor temp) left behind.
    import utils.export.writers as export
    real = export.onnx_outputs
    monkeypatch.setattr(export, "onnx_outputs", lambda p, x: real(p, x) + 1e-3)
    target = tmp_path / "bad"
    rc, out, err = run_export(["--model_id", MOBILENET, *TINY_FLAGS, "--classes", "4",
                               "--out", str(target)], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert "disagrees with PyTorch" in err and "onnxruntime" in err
    assert not target.exists()
    assert sorted(os.listdir(tmp_path)) == ["a_file"]
    monkeypatch.undo()

    # A missing export dependency names the package and the requirements file.
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    rc, out, err = run_export(["--out", str(tmp_path / "x")], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "'onnxruntime'" in err and "requirements-export.txt" in err
    assert not (tmp_path / "x").exists()
