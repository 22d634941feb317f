"""Multi-scale Gaussian anomaly generator (MGAG): the three noise levels the trainer adds (torch).

The trainer asks one `GaussianAnomalies` per run for each level, in this order per batch:
- G1 `inputs`: noise on the normalised input images, in the modalities drawn by `choose_modalities`;
- G2 `features`: noise on the per-modality patch features before the adaptor, a fresh modality draw;
- G3 `adapted`: noise on the fused adaptor output, always on all of it.
A level switched off in `MgagConfig` is not asked for. Noise is drawn on the tensors' device with one
torch generator, the modality choice from a numpy generator, both re-seeded from (seed, epoch) at the
start of every epoch, so a resumed run draws what an uninterrupted one would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, cast

import numpy as np
import torch
from torch import Tensor

# Which modalities one anomaly goes into (per batch for MGAG, per sample for UTAG). Not the same as
# `training.config.Modality`, which names the inputs a model uses.
AnomalyTarget = Literal["both", "rgb", "depth"]


@dataclass(frozen=True)
class MgagConfig:
    """Which MGAG levels are on and their σ (in the units of the tensor each is added to).

    `sigma_input`: ImageNet-normalised input images (G1). `sigma_features`: per-modality patch
    features before the fusion adaptor (G2). `sigma_adapted`: fused adaptor output (G3). The reference
    values 0.12 / 0.04 / 0.02 were set for WideResNet-50 feature scales. `alpha`: selective-modality
    split (both / RGB only / depth only); 1/3 makes the three equally likely.
    """

    enable_input: bool
    enable_features: bool
    enable_adapted: bool
    sigma_input: float = 0.12
    sigma_features: float = 0.04
    sigma_adapted: float = 0.02
    alpha: float = 1.0 / 3.0

    def __post_init__(self) -> None:
        for name in ("sigma_input", "sigma_features", "sigma_adapted"):
            value = getattr(self, name)
            if not value >= 0.0:
                raise ValueError(f"MgagConfig.{name} must be >= 0, got {value}")
        if not 0.0 < self.alpha <= 0.5:
            raise ValueError(f"MgagConfig.alpha must be in (0, 0.5], got {self.alpha}")


def choose_modalities(rng: np.random.Generator, alpha: float = 1.0 / 3.0) -> AnomalyTarget:
    """Which modalities get the anomaly: u > 2α → both, α < u ≤ 2α → RGB only, u ≤ α → depth only.

    `rng`: the caller's numpy Generator (per sample in UTAG, per batch in `GaussianAnomalies`).
    """
    if not 0.0 < alpha <= 0.5:
        raise ValueError(f"choose_modalities: alpha must be in (0, 0.5], got {alpha}")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"choose_modalities: rng must be a numpy.random.Generator, got {type(rng)}")
    u = float(rng.random())
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
            "use a generator for the tensor's device"
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
    which: AnomalyTarget,
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


class GaussianAnomalies:
    """The MGAG noise of one training run: G1, G2, G3 as described in the module docstring.

    `modalities`: the model's inputs; with one, the selective levels perturb that one only (G1) or the
    only feature map there is (G2). `device`: where the tensors live and the noise is drawn (the
    reference draws ~135M samples per step on the CPU).
    """

    def __init__(self, config: MgagConfig, modalities: tuple[str, ...], device: torch.device, seed: int) -> None:
        self.config = config
        self.modalities = modalities
        self.seed = seed
        self.generator = torch.Generator(device=device)
        self.rng = np.random.default_rng(seed)

    def start_epoch(self, epoch: int) -> None:
        """Re-seed both generators from (seed, epoch)."""
        self.generator.manual_seed(self.seed * 1_000_003 + epoch)
        self.rng = np.random.default_rng((self.seed, epoch, 7))

    def _target(self) -> AnomalyTarget:
        # One draw per call (per batch): the whole batch shares the modality choice, as in the reference.
        if len(self.modalities) == 2:
            return choose_modalities(self.rng, self.config.alpha)
        return cast(AnomalyTarget, self.modalities[0])

    def inputs(self, rgb: Tensor, depth: Tensor) -> tuple[Tensor, Tensor]:
        """G1 on the normalised input images (B, 3, S, S); the modality not drawn is returned as is."""
        return add_selective_noise(rgb, depth, self.config.sigma_input, self._target(), self.generator)

    def features(self, rgb: Tensor | None, depth: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
        """G2 on the per-modality features (B, D, h, w); None for a modality the model does not use.

        A single-modality model has one feature map, which always gets the noise (no draw)."""
        sigma = self.config.sigma_features
        if rgb is None or depth is None:
            return (
                None if rgb is None else add_noise(rgb, sigma, self.generator),
                None if depth is None else add_noise(depth, sigma, self.generator),
            )
        return add_selective_noise(rgb, depth, sigma, self._target(), self.generator)

    def adapted(self, features: Tensor) -> Tensor:
        """G3 on the fused adaptor output, all of it (no modality selection)."""
        return add_noise(features, self.config.sigma_adapted, self.generator)
