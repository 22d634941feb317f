"""Multi-scale Gaussian anomaly generator (MGAG): noise on inputs, features and adapted features (torch)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

Modality = Literal["both", "rgb", "depth"]


@dataclass(frozen=True)
class MgagConfig:
    """Noise levels of the three MGAG stages (σ in the units of the tensor they are added to).

    `sigma_input`: ImageNet-normalised input images (G1). `sigma_features`: per-modality patch
    features before the fusion adaptor (G2). `sigma_adapted`: fused adaptor output (G3). The reference
    values 0.12 / 0.04 / 0.02 were set for WideResNet-50 feature scales. `alpha`: selective-modality
    split (both / RGB only / depth only); 1/3 makes the three equally likely.
    """

    sigma_input: float = 0.12
    sigma_features: float = 0.04
    sigma_adapted: float = 0.02
    enable_input: bool = True
    enable_features: bool = True
    enable_adapted: bool = True
    alpha: float = 1.0 / 3.0

    def __post_init__(self) -> None:
        for name in ("sigma_input", "sigma_features", "sigma_adapted"):
            value = getattr(self, name)
            if not value >= 0.0:
                raise ValueError(f"MgagConfig.{name} must be >= 0, got {value}")
        if not 0.0 < self.alpha <= 0.5:
            raise ValueError(f"MgagConfig.alpha must be in (0, 0.5], got {self.alpha}")


def make_generator(device: torch.device | str, seed: int) -> torch.Generator:
    """A seeded torch.Generator that lives on `device`, so noise is drawn there directly."""
    generator = torch.Generator(device=torch.device(device))
    generator.manual_seed(int(seed))
    return generator


def choose_modalities(rng: np.random.Generator | torch.Generator, alpha: float = 1.0 / 3.0) -> Modality:
    """Which modalities get the anomaly: u > 2α → both, α < u ≤ 2α → RGB only, u ≤ α → depth only.

    `rng`: numpy Generator (data pipeline, per sample) or torch.Generator (training loop, per batch; a
    device generator draws on its device, which costs one synchronisation).
    """
    if not 0.0 < alpha <= 0.5:
        raise ValueError(f"choose_modalities: alpha must be in (0, 0.5], got {alpha}")
    if isinstance(rng, np.random.Generator):
        u = float(rng.random())
    elif isinstance(rng, torch.Generator):
        u = float(torch.rand((), generator=rng, device=rng.device).item())
    else:
        raise TypeError(f"choose_modalities: rng must be numpy.random.Generator or torch.Generator, got {type(rng)}")
    if u > 2.0 * alpha:
        return "both"
    if u > alpha:
        return "rgb"
    return "depth"


def _check_generator(x: Tensor, generator: torch.Generator | None) -> None:
    if generator is None:
        return
    gen_device = generator.device
    same = gen_device.type == x.device.type and (
        gen_device.index is None or x.device.index is None or gen_device.index == x.device.index
    )
    if not same:
        raise ValueError(
            f"MGAG noise: generator lives on {gen_device} but the tensor is on {x.device}; "
            "use a generator for the tensor's device (make_generator(tensor.device, seed))"
        )


def add_noise(x: Tensor, sigma: float, generator: torch.Generator | None = None) -> Tensor:
    """x + N(0, σ²), i.i.d. per element, drawn on x's device with `generator` (None: torch's default
    generator of that device). `x`: any shape, floating point. σ = 0 returns `x` itself."""
    if not x.is_floating_point():
        raise TypeError(f"add_noise: x must be a floating-point tensor, got {x.dtype}")
    if not sigma >= 0.0:
        raise ValueError(f"add_noise: sigma must be >= 0, got {sigma}")
    if sigma == 0.0:
        return x
    _check_generator(x, generator)
    # One allocation, filled in place on the device: no CPU draw and no host-to-device copy.
    noise = torch.empty_like(x).normal_(0.0, float(sigma), generator=generator)
    return x + noise


def add_selective_noise(
    rgb: Tensor,
    depth: Tensor,
    sigma: float,
    which: Modality,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Add N(0, σ²) to the modalities named by `which`; the other one is returned unchanged (the same
    tensor object). `rgb`, `depth`: same-shaped float tensors (images (B, 3, S, S) or features)."""
    if which not in ("both", "rgb", "depth"):
        raise ValueError(f"add_selective_noise: which must be 'both', 'rgb' or 'depth', got {which!r}")
    if rgb.shape != depth.shape:
        raise ValueError(f"add_selective_noise: rgb {tuple(rgb.shape)} and depth {tuple(depth.shape)} differ")
    if which in ("both", "rgb"):
        rgb = add_noise(rgb, sigma, generator)
    if which in ("both", "depth"):
        depth = add_noise(depth, sigma, generator)
    return rgb, depth


def _selective_level(
    rgb: Tensor, depth: Tensor, sigma: float, enabled: bool, alpha: float, generator: torch.Generator | None
) -> tuple[Tensor, Tensor, Modality | None]:
    if not enabled:
        return rgb, depth, None
    # One draw per call (per batch): the whole batch shares the modality choice, as in the reference.
    chooser = generator if generator is not None else torch.default_generator
    which = choose_modalities(chooser, alpha)
    noisy_rgb, noisy_depth = add_selective_noise(rgb, depth, sigma, which, generator)
    return noisy_rgb, noisy_depth, which


def noise_inputs(
    rgb: Tensor, depth: Tensor, config: MgagConfig, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor, Modality | None]:
    """G1: selective noise on the normalised input images (B, 3, S, S). Modality None = level disabled
    (inputs returned unchanged)."""
    return _selective_level(rgb, depth, config.sigma_input, config.enable_input, config.alpha, generator)


def noise_features(
    rgb_features: Tensor, depth_features: Tensor, config: MgagConfig, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor, Modality | None]:
    """G2: selective noise on the per-modality patch features, drawn independently of G1's choice."""
    return _selective_level(
        rgb_features, depth_features, config.sigma_features, config.enable_features, config.alpha, generator
    )


def noise_adapted(features: Tensor, config: MgagConfig, generator: torch.Generator | None = None) -> Tensor:
    """G3: noise on the fused adaptor output, always on both halves (no modality selection)."""
    if not config.enable_adapted:
        return features
    return add_noise(features, config.sigma_adapted, generator)
