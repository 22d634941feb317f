"""One training step (`Trainer.step`): MGAG and UTAG variants of a batch, one backbone pass, the losses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from training import runs
from training.anomalies.mgag import GaussianAnomalies, MgagConfig
from training.config import TrainConfig
from training.model.bridgenet import BridgeNet
from training.model.losses import bce_pair, focal_loss


@dataclass(frozen=True)
class Features:
    """Per-modality patch features (B, D, h, w) of one input variant; None for a modality the model lacks."""

    rgb: Tensor | None
    depth: Tensor | None


@dataclass(frozen=True)
class VariantFeatures:
    """Backbone features of every input variant of one batch; a variant that is switched off is None."""

    clean: Features
    input_noise: Features | None  # MGAG G1: noise on the input images
    texture: Features | None  # UTAG: the texture-anomalous images the dataset made


def mgag_config(config: TrainConfig) -> MgagConfig:
    """The MGAG part of a training configuration."""
    return MgagConfig(
        enable_input=bool(config.mgag_input),
        enable_features=config.mgag_features,
        enable_adapted=config.mgag_adapted,
        sigma_input=config.sigma_input,
        sigma_features=config.sigma_features,
        sigma_adapted=config.sigma_adapted,
        alpha=config.alpha,
    )


class Trainer:
    """One training iteration as the reference (§4.1), with the backbone run once per batch."""

    def __init__(self, model: BridgeNet, config: TrainConfig, device: torch.device) -> None:
        self.model = model
        self.config = config
        self.device = device
        self.opt_adaptor = torch.optim.Adam(
            model.adaptor_parameters(), lr=config.lr_adaptor, weight_decay=config.weight_decay_adaptor
        )
        self.opt_discriminator = torch.optim.AdamW(
            model.discriminator_parameters(),
            lr=config.lr_discriminator,
            weight_decay=config.weight_decay_discriminator,
        )
        self.mgag = GaussianAnomalies(mgag_config(config), config.modalities, device, config.seed)

    def start_epoch(self, epoch: int) -> None:
        self.mgag.start_epoch(epoch)

    def embed_variants(self, batch: dict[str, Tensor]) -> VariantFeatures:
        """Make the input variants (G1 noise, UTAG, clean) and run the frozen backbone once over all."""
        rgb = batch["rgb"].to(self.device, non_blocking=True)
        depth = batch["depth"].to(self.device, non_blocking=True)
        images: dict[str, tuple[Tensor, Tensor]] = {}  # this order is the order of the backbone's batch
        if self.mgag.config.enable_input:
            images["input_noise"] = self.mgag.inputs(rgb, depth)
        if self.config.utag:
            images["texture"] = (batch["aug_rgb"].to(self.device), batch["aug_depth"].to(self.device))
        images["clean"] = (rgb, depth)
        with torch.no_grad():  # the backbone is frozen
            fr, fd = self.model.embed(
                torch.cat([r for r, _ in images.values()]), torch.cat([d for _, d in images.values()])
            )
        b, n = rgb.shape[0], len(images)
        chunks_r = list(fr.split(b)) if fr is not None else [None] * n
        chunks_d = list(fd.split(b)) if fd is not None else [None] * n
        features = {name: Features(r, d) for name, r, d in zip(images, chunks_r, chunks_d, strict=True)}
        return VariantFeatures(features["clean"], features.get("input_noise"), features.get("texture"))

    def _adapt(self, features: Features) -> Tensor:
        return self.model.adapt(self.model.fuse(features.rgb, features.depth))

    def step(self, batch: dict[str, Tensor]) -> dict[str, float]:
        """One optimisation step on `batch` (the dataset's items); returns each loss and their total."""
        model, mgag = self.model, self.mgag
        variants = self.embed_variants(batch)
        clean = self._adapt(variants.clean)
        noisy: dict[str, Tensor] = {}
        if variants.input_noise is not None:
            noisy["bce_input"] = self._adapt(variants.input_noise)
        if mgag.config.enable_features:
            noisy["bce_features"] = self._adapt(Features(*mgag.features(variants.clean.rgb, variants.clean.depth)))
        if mgag.config.enable_adapted:
            noisy["bce_adapted"] = mgag.adapted(clean)

        losses: dict[str, Tensor] = {}
        b = clean.shape[0]
        for name, features in noisy.items():
            # Clean and noisy go through D together, so BN sees both in one batch (reference §4.1).
            scores = model.discriminate(torch.cat([clean, features]))
            losses[name] = bce_pair(scores[:b], scores[b:])
        if variants.texture is not None:
            scores = model.discriminate(self._adapt(variants.texture))
            losses["focal"] = focal_loss(scores.reshape(-1), batch["patch_mask"].to(self.device).reshape(-1))
        if not losses:
            raise ValueError("nothing to train: MGAG and UTAG are both switched off")
        total = torch.stack(list(losses.values())).sum()
        self.opt_adaptor.zero_grad(set_to_none=True)
        self.opt_discriminator.zero_grad(set_to_none=True)
        total.backward()
        self.opt_adaptor.step()
        self.opt_discriminator.step()
        out = {name: float(v.detach()) for name, v in losses.items()}
        out["total"] = float(total.detach())
        return out

    def state(self) -> dict[str, Any]:
        return {
            "model": runs.trainable_state(self.model),
            "opt_adaptor": self.opt_adaptor.state_dict(),
            "opt_discriminator": self.opt_discriminator.state_dict(),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        runs.load_trainable_state(self.model, state["model"])
        self.opt_adaptor.load_state_dict(state["opt_adaptor"])
        self.opt_discriminator.load_state_dict(state["opt_discriminator"])
