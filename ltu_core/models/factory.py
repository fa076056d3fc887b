"""Model construction (only through `timm.create_model`) and safetensors checkpoints.

`ArchConfig` names a timm architecture plus what this library adds to it. Two names get a
small-image adaptation because timm's defaults target 224 px inputs:

- `resnet*` with `small_stem=True`: the 7×7/2 stem conv and its max-pool are replaced by a 3×3/1
  conv (CIFAR-style), so 8–32 px images keep their resolution; `width` scales every stage's
  channels (0.25 gives the ~0.7M-parameter quarter-width ResNet-18).
- `vit_micro`: timm's `vit_tiny_patch16_224` at `img_size` with 4 px patches, 4 blocks of width
  96 — a ViT that trains on a CPU at 28–32 px.

Any other timm name is passed through with `num_classes`, `in_chans` and `kwargs`.

A checkpoint's header is input the service takes from clients, so an `ArchConfig` holds only what
the allow-list below admits: a plain timm name (no pretrained tag, no `hf-hub:` or `local-dir:`
source), bounded sizes, and keyword arguments that shape the network. Nothing names a file
(`checkpoint_path`, `pretrained_cfg`) or downloads (`pretrained`). api/uploads.py refuses the same
at upload; a test keeps the two lists equal.

A checkpoint is one safetensors file: the full state dict (buffers included, so BatchNorm
statistics survive) and, in the header metadata, the `ArchConfig` as JSON, so a file alone
rebuilds its model. Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import numbers
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import timm
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from ltu_core.errors import CheckpointError

CHECKPOINT_FORMAT = "ltu-model/1"
_VIT_MICRO = dict(patch_size=4, embed_dim=96, depth=4, num_heads=3, mlp_ratio=2.0)
ARCH_NAME_PATTERN = r"[a-z][a-z0-9_]{0,63}"
ARCH_BOUNDS = {"num_classes": (2, 100_000), "in_chans": (1, 16), "img_size": (1, 1024), "width": (1 / 64, 4.0)}
ARCH_KWARGS = {  # vit_micro's geometry and dropout rates; an int bound admits integers only
    "patch_size": (1, 64),
    "embed_dim": (8, 1024),
    "depth": (1, 48),
    "num_heads": (1, 16),
    "mlp_ratio": (0.25, 8.0),
    "drop_rate": (0.0, 0.9),
    "drop_path_rate": (0.0, 0.9),
}


@dataclass(frozen=True)
class ArchConfig:
    """Everything needed to rebuild a model's architecture."""

    name: str
    num_classes: int
    in_chans: int = 1
    img_size: int = 28
    width: float = 1.0
    small_stem: bool = True
    kwargs: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        problem = _outside_allow_list(self)
        if problem:
            raise CheckpointError(f"architecture {self.name!r}: {problem}")

    def to_json(self) -> str:
        """Stable JSON form (sorted keys), as stored in checkpoints."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ArchConfig:
        """Inverse of to_json; unknown keys are an error."""
        try:
            data = json.loads(text)
            return cls(**data)
        except (ValueError, TypeError, RecursionError) as exc:  # ValueError: JSONDecodeError, 5,000-digit ints
            raise CheckpointError(f"invalid architecture config in checkpoint: {exc}") from exc


def _outside_allow_list(arch: ArchConfig) -> str | None:
    if not isinstance(arch.name, str) or not re.fullmatch(ARCH_NAME_PATTERN, arch.name):
        return f"the name must be a timm model name matching {ARCH_NAME_PATTERN}"
    if not isinstance(arch.small_stem, bool):
        return "small_stem must be True or False"
    for key, bounds in ARCH_BOUNDS.items():
        if not _within(getattr(arch, key), bounds):
            return f"{key} must be a number in [{bounds[0]}, {bounds[1]}]"
    if not isinstance(arch.kwargs, dict):
        return "kwargs must be a dict"
    for key, value in arch.kwargs.items():
        if key not in ARCH_KWARGS:
            return f"keyword argument {key!r} is not allowed (allowed: {', '.join(sorted(ARCH_KWARGS))})"
        if not _within(value, ARCH_KWARGS[key]):
            return f"keyword argument {key!r} must be a number in [{ARCH_KWARGS[key][0]}, {ARCH_KWARGS[key][1]}]"
    return None


def _within(value: object, bounds: tuple[float, float]) -> bool:
    low, high = bounds
    kind = numbers.Real if isinstance(low, float) else numbers.Integral
    # NaN compares false and the infinities fall outside: no separate finiteness check.
    return isinstance(value, kind) and not isinstance(value, bool) and low <= value <= high


def build_model(arch: ArchConfig, *, seed: int = 0) -> nn.Module:
    """A freshly initialised model; the same (arch, seed) always gives the same weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            return _create(arch)
        except (RuntimeError, TypeError, ValueError, AssertionError) as exc:
            # timm: an unknown model name, or allowed keyword arguments this model does not take or
            # cannot combine (embed_dim not divisible by num_heads).
            raise CheckpointError(f"architecture {arch.name!r}: {exc}") from exc


def _create(arch: ArchConfig) -> nn.Module:
    common = dict(pretrained=False, num_classes=arch.num_classes, in_chans=arch.in_chans)
    if arch.name == "vit_micro":
        return timm.create_model(
            "vit_tiny_patch16_224", img_size=arch.img_size, **common, **{**_VIT_MICRO, **arch.kwargs}
        )
    if arch.name.startswith("resnet"):
        channels = tuple(max(1, int(round(c * arch.width))) for c in (64, 128, 256, 512))
        model = timm.create_model(arch.name, channels=channels, **common, **arch.kwargs)
        if arch.small_stem:
            # timm fixes the plain stem's output at 64 channels (bn1 and layer1 expect that),
            # so only the kernel, stride and pooling change.
            stem_out = model.conv1.out_channels
            model.conv1 = nn.Conv2d(arch.in_chans, stem_out, kernel_size=3, stride=1, padding=1, bias=False)
            model.maxpool = nn.Identity()
        return model
    return timm.create_model(arch.name, **common, **arch.kwargs)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def save_model(model: nn.Module, arch: ArchConfig, path: str | os.PathLike, *, metadata: dict | None = None) -> Path:
    """Write weights + architecture to one safetensors file (bit-exact on reload)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    header = {"format": CHECKPOINT_FORMAT, "arch": arch.to_json()}
    if metadata:
        header["extra"] = json.dumps(metadata, sort_keys=True)
    save_file(state, str(path), metadata=header)
    return path


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], ArchConfig, dict]:
    """(state dict, arch, extra metadata) of a checkpoint; CheckpointError if it is not ours."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not iterable
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a safetensors checkpoint ({exc})") from exc
    if meta.get("format") != CHECKPOINT_FORMAT or "arch" not in meta:
        raise CheckpointError(f"{path}: safetensors file without an ltu architecture header")
    try:
        extra = json.loads(meta["extra"]) if "extra" in meta else {}
    except (ValueError, RecursionError) as exc:
        raise CheckpointError(f"{path}: the 'extra' header is not JSON ({exc.__class__.__name__})") from exc
    return state, ArchConfig.from_json(meta["arch"]), extra


def load_model(path: str | os.PathLike) -> tuple[nn.Module, ArchConfig]:
    """Rebuild the model a checkpoint describes and load its weights exactly."""
    state, arch, _ = read_checkpoint(path)
    model = build_model(arch)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit architecture {arch.name!r}: {exc}") from exc
    return model, arch
