"""BridgeNet as a pure, ONNX-exportable module: backbone → patch features → adaptor → discriminator."""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.model.backbones import FeatureBackbone
from training.model.smoothing import GaussianSmoothing

MODALITIES = ("rgb", "depth")


def adaptive_pool_matrix(length: int, n: int) -> Tensor:
    """The linear map of `F.adaptive_avg_pool1d` from `length` to `n` -> (n, length) float32.

    Window i averages [floor(i·L/n), ceil((i+1)·L/n)), PyTorch's rule (windows overlap when L/n is
    not whole).
    """
    if length < 1 or n < 1:
        raise ValueError(f"pool sizes must be >= 1, got length={length}, n={n}")
    m = torch.zeros(n, length, dtype=torch.float64)
    for i in range(n):
        start, end = (i * length) // n, -((-(i + 1) * length) // n)
        m[i, start:end] = 1.0 / (end - start)
    return m.float()


def patch_pool_weight(channels: int, n: int) -> Tensor:
    """Fixed conv weight (n, C, 3, 3): unfold(3×3, padding 1) + adaptive_avg_pool1d(C·9 → n) as one conv.

    The unfolded vector is channel-major then the 3×3 entries (c·9 + ky·3 + kx), which is exactly the
    flattening order of a conv weight's (C, 3, 3) dims.
    """
    return adaptive_pool_matrix(channels * 9, n).view(n, channels, 3, 3)


def _xavier_linear(in_features: int, out_features: int, *, bias: bool = True) -> nn.Linear:
    layer = nn.Linear(in_features, out_features, bias=bias)
    nn.init.xavier_normal_(layer.weight)  # the reference's init; biases keep PyTorch's default
    return layer


class BridgeNet(nn.Module):
    """Patch-level anomaly discriminator on fused RGB + depth features (docs/METHOD.md#network, #inference).

    Per-modality features are `feature_dim` wide: [stride-8 level | stride-16 level], `feature_dim/2`
    each, on the stride-8 patch grid (h, w) = (S/8, S/8). Fusion concatenates the modalities in the order
    of `modalities` ([rgb | depth] by default) into C = feature_dim·len(modalities) channels.
    Rows: `(B·h·w, C)` in (b, y, x) row-major order, the layout the adaptor and discriminator act on.
    """

    def __init__(
        self,
        backbone: FeatureBackbone,
        *,
        feature_dim: int,
        modalities: tuple[str, ...] = MODALITIES,
        image_size: int,
        smoothing_sigma: float = 4.0,
    ) -> None:
        super().__init__()
        modalities = tuple(modalities)
        if not modalities or len(set(modalities)) != len(modalities) or not set(modalities) <= set(MODALITIES):
            raise ValueError(f"modalities must be distinct names from {MODALITIES}, got {modalities}")
        if feature_dim < 2 or feature_dim % 2:
            raise ValueError(f"feature_dim must be an even number >= 2 (half per level), got {feature_dim}")
        strides = backbone.spec.strides
        if image_size < strides[-1] or image_size % strides[-1]:
            raise ValueError(f"image_size must be a positive multiple of {strides[-1]}, got {image_size}")
        self.backbone = backbone
        self.feature_dim = feature_dim
        self.modalities = modalities
        self.image_size = image_size
        self.grid = image_size // strides[0]
        self.channels = feature_dim * len(modalities)
        per_level = feature_dim // 2
        # Fixed pooling convs (not trained, derived from the backbone's channels: not checkpointed).
        for i, ch in enumerate(backbone.spec.channels):
            self.register_buffer(f"pool_weight_{i}", patch_pool_weight(ch, per_level), persistent=False)
        c = self.channels
        self.adaptor = _xavier_linear(c, c)
        self.discriminator = nn.Sequential(
            _xavier_linear(c, c),
            nn.BatchNorm1d(c),
            nn.LeakyReLU(0.3),
            _xavier_linear(c, c),
            nn.BatchNorm1d(c),
            nn.LeakyReLU(0.3),
            _xavier_linear(c, 1, bias=False),
            nn.Sigmoid(),
        )
        self.smoothing = GaussianSmoothing(smoothing_sigma, image_size)

    # ---- features ----------------------------------------------------------------------------------

    def _patch_features(self, levels: list[Tensor]) -> Tensor:
        """Backbone maps -> (N, feature_dim, h, w): pool each level on its own grid, then upsample.

        Pooling before upsampling is the cheap order; both are linear, so it equals the reference's
        unfold → upsample → pool up to float rounding (docs/METHOD.md#patch-features).
        """
        out = []
        for i, fmap in enumerate(levels):
            pooled = F.conv2d(fmap, getattr(self, f"pool_weight_{i}"), padding=1)
            if i == 0 and tuple(pooled.shape[-2:]) != (self.grid, self.grid):
                raise ValueError(f"backbone's stride-8 map is {tuple(pooled.shape[-2:])}, expected {self.grid}²")
            if i > 0:
                pooled = F.interpolate(pooled, size=(self.grid, self.grid), mode="bilinear", align_corners=False)
            out.append(pooled)
        return torch.cat(out, dim=1)

    def embed(self, rgb: Tensor | None, depth: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
        """Per-modality patch features.

        `rgb`, `depth`: (B, 3, S, S) float32, ImageNet-normalised (depth replicated to 3 channels); a
        modality the model does not use may be None (and is ignored if given).
        Returns (f_rgb, f_depth), each (B, feature_dim, S/8, S/8) float32, None for an unused modality.
        The backbone runs once on the batch of all used modalities (shared weights).
        """
        given = {"rgb": rgb, "depth": depth}
        inputs = []
        for name in self.modalities:
            x = given[name]
            if x is None:
                raise ValueError(f"model uses modality {name!r} but got None for it")
            if x.dim() != 4 or tuple(x.shape[1:]) != (3, self.image_size, self.image_size):
                raise ValueError(f"{name} must be (B, 3, {self.image_size}, {self.image_size}), got {tuple(x.shape)}")
            inputs.append(x)
        batch = inputs[0].shape[0]
        if len(inputs) > 1:
            torch._check(inputs[1].shape[0] == batch, lambda: "rgb and depth batch sizes differ")
        feats = self._patch_features(self.backbone(torch.cat(inputs) if len(inputs) > 1 else inputs[0]))
        out: dict[str, Tensor | None] = dict.fromkeys(MODALITIES)
        for k, name in enumerate(self.modalities):
            out[name] = feats[k * batch : (k + 1) * batch]
        return out["rgb"], out["depth"]

    def fuse(self, f_rgb: Tensor | None, f_depth: Tensor | None) -> Tensor:
        """Concatenate per-modality features on channels in `modalities` order -> (B, C, h, w)."""
        given = {"rgb": f_rgb, "depth": f_depth}
        parts = [given[m] for m in self.modalities]
        if any(p is None for p in parts):
            raise ValueError(f"fuse needs features for {self.modalities}")
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]  # type: ignore[arg-type,return-value]

    # ---- rows <-> maps --------------------------------------------------------------------------------

    @staticmethod
    def to_rows(maps: Tensor) -> Tensor:
        """(B, C, h, w) -> (B·h·w, C) rows in (b, y, x) order."""
        return maps.permute(0, 2, 3, 1).reshape(-1, maps.shape[1])

    def to_maps(self, rows: Tensor, batch: int) -> Tensor:
        """(B·h·w, C) rows -> (B, C, h, w); the inverse of `to_rows` on this model's grid."""
        return rows.reshape(batch, self.grid, self.grid, -1).permute(0, 3, 1, 2)

    # ---- heads ----------------------------------------------------------------------------------------

    def adapt_rows(self, rows: Tensor) -> Tensor:
        """Fusion adaptor on rows: (N, C) -> (N, C)."""
        return self.adaptor(rows)

    def adapt(self, o: Tensor) -> Tensor:
        """Fusion adaptor on maps: (B, C, h, w) -> (B, C, h, w)."""
        return self.to_maps(self.adapt_rows(self.to_rows(o)), o.shape[0])

    def discriminate_rows(self, rows: Tensor) -> Tensor:
        """Discriminator on rows: (N, C) -> (N,) scores in [0, 1], 1 = anomalous; BN sees all N rows."""
        return self.discriminator(rows).squeeze(1)

    def discriminate(self, d: Tensor) -> Tensor:
        """Discriminator on maps: (B, C, h, w) -> (B, h, w) patch scores in [0, 1]."""
        return self.discriminate_rows(self.to_rows(d)).reshape(d.shape[0], d.shape[2], d.shape[3])

    def forward(self, rgb: Tensor | None, depth: Tensor | None) -> tuple[Tensor, Tensor]:
        """Inference: `rgb`, `depth` as in `embed` -> (scores (B,), maps (B, S, S)), float32 in [0, 1].

        scores: max of the raw patch scores (docs/METHOD.md#image-score); maps: patch scores upsampled bilinearly to
        S×S, then Gaussian-smoothed (σ = smoothing_sigma px, scipy 'reflect' borders).
        """
        fused = self.fuse(*self.embed(rgb, depth))
        batch = fused.shape[0]
        patch = self.discriminate_rows(self.adapt_rows(self.to_rows(fused))).reshape(batch, self.grid, self.grid)
        return self.outputs(patch)

    def outputs(self, patch: Tensor) -> tuple[Tensor, Tensor]:
        """Raw patch scores (B, h, w) -> (scores (B,), maps (B, S, S)), as `forward` returns them."""
        batch = patch.shape[0]
        scores = patch.reshape(batch, -1).amax(dim=1)
        size = (self.image_size, self.image_size)
        maps = F.interpolate(patch.unsqueeze(1), size=size, mode="bilinear", align_corners=False)
        return scores, self.smoothing(maps.squeeze(1))

    # ---- training helpers -------------------------------------------------------------------------------

    def adaptor_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the fusion adaptor (its own optimiser in the reference: Adam)."""
        return self.adaptor.parameters()

    def discriminator_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the discriminator (its own optimiser in the reference: AdamW)."""
        return self.discriminator.parameters()
