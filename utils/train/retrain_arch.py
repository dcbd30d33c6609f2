"""Stage 3: which architecture and space config a retrain or an evaluation uses.

    arch, space_cfg, source = choose_arch(config, data_classes, loaded=None)
    describe_arch(space, arch, space_cfg, source) -> three lines for the log
    class_names_of(loaded) -> the class names a checkpoint of ours records
"""
from __future__ import annotations

from utils.checkpoints.subnet import (SubnetCheckpoint, arch_from_log, published_arch,
                                      resolve_config)
from utils.errors import UserError
from utils.flops.table import load_table
from utils.spaces import SpaceConfig, get_space


def choose_arch(config, data_classes: int | None, loaded: SubnetCheckpoint | None = None
                ) -> tuple[tuple[int, ...], SpaceConfig, str]:
    """(architecture, space config, where the architecture came from).

    Priority: --arch-from (config from the log), --model_id, the evaluated checkpoint's
    own architecture, the space's published one. Space flags given always win.
    `config` is a RetrainConfig (or anything with its flags as attributes).
    """
    base, text, arch, source = None, None, None, ""
    if config.arch_from:
        arch, base = arch_from_log(config.arch_from)
        source = f"best of search log {config.arch_from}"
    elif config.model_id is not None:
        text, source = config.model_id, "--model_id"
    if loaded is not None and loaded.kind == "subnet":
        base = base or loaded.config
        if arch is None and text is None:
            arch, source = loaded.arch, f"checkpoint {loaded.path}"
    space_cfg = resolve_config(config, base, data_classes)
    space = get_space(space_cfg)
    if text is not None:
        arch = space.parse(text)
    elif arch is None:
        if loaded is not None:
            raise UserError(f"{loaded.path} is a reference checkpoint, which does not record "
                            f"its architecture: give it with --model_id")
        try:
            arch = space.parse(published_arch(space_cfg.space))
        except ValueError as e:
            raise UserError(f"the default architecture (the published {space_cfg.space} one) "
                            f"does not fit {space_cfg.describe()} ({e}): give --model_id or "
                            f"--arch-from") from None
        source = "published architecture (default)"
    else:
        arch = space.validate(arch)
    return tuple(arch), space_cfg, source


def describe_arch(space, arch, space_cfg: SpaceConfig, source: str) -> str:
    table = load_table(space_cfg)
    flops, params = table.flops_of(arch), table.params_of(arch)
    return (f"architecture: {space.format(arch)}  ({source})\n"
            f"space: {space_cfg.describe()}\n"
            f"FLOPs: {flops / 1e6:.2f}M  params: {params / 1e6:.2f}M (lookup table)")


def class_names_of(loaded: SubnetCheckpoint) -> list[str] | None:
    """The class names a checkpoint of ours records (output i = names[i]); None for the
    reference's checkpoints and ours from before they were recorded."""
    names = loaded.raw.get("classes") if loaded.kind == "subnet" else None
    return names if isinstance(names, list) and names and all(
        isinstance(c, str) for c in names) else None


__all__ = ["choose_arch", "describe_arch", "class_names_of"]
