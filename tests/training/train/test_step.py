"""training.train.step: the named input variants of a batch, one backbone pass, and the losses they feed."""

from __future__ import annotations

import pytest
import torch

from training import runs
from training.config import TrainConfig
from training.train.step import Trainer

SIZE = 32


def _trainer(**changes: object) -> Trainer:
    config = TrainConfig(data="d", category="c", image_size=SIZE, feature_dim=16, **changes)  # type: ignore[arg-type]
    torch.manual_seed(0)
    return Trainer(runs.build_model(config), config, torch.device("cpu"))


def _batch(b: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    images = {k: torch.randn(b, 3, SIZE, SIZE, generator=g) for k in ("rgb", "depth", "aug_rgb", "aug_depth")}
    return {**images, "patch_mask": (torch.rand(b, SIZE // 8, SIZE // 8, generator=g) > 0.8).float()}


def test_variants_are_named_and_each_is_the_backbone_features_of_its_images() -> None:
    trainer = _trainer(mgag_input=True)
    trainer.start_epoch(1)
    batch = _batch()
    variants = trainer.embed_variants(batch)
    assert variants.input_noise is not None and variants.texture is not None
    model = trainer.model
    with torch.no_grad():
        clean = model.embed(batch["rgb"], batch["depth"])
        texture = model.embed(batch["aug_rgb"], batch["aug_depth"])
    # One pass over all variants gives each variant's own features (up to float rounding of a bigger batch).
    for got, want in ((variants.clean, clean), (variants.texture, texture)):
        torch.testing.assert_close(got.rgb, want[0], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(got.depth, want[1], rtol=1e-4, atol=1e-4)
    noisy_differs = [
        not torch.allclose(n, c, atol=1e-3)
        for n, c in ((variants.input_noise.rgb, clean[0]), (variants.input_noise.depth, clean[1]))
    ]
    assert any(noisy_differs)  # G1 noise went into the drawn modality (or both)


def test_switched_off_variants_are_none_and_their_losses_absent() -> None:
    trainer = _trainer(mgag_input=False, utag=False)
    trainer.start_epoch(1)
    variants = trainer.embed_variants(_batch())
    assert variants.input_noise is None and variants.texture is None
    losses = trainer.step(_batch())
    assert set(losses) == {"bce_features", "bce_adapted", "total"}
    assert losses["total"] == pytest.approx(losses["bce_features"] + losses["bce_adapted"], rel=1e-5)


def test_a_step_trains_the_heads_only_with_every_loss() -> None:
    trainer = _trainer(mgag_input=True)
    trainer.start_epoch(1)
    backbone = {k: v.clone() for k, v in trainer.model.backbone.state_dict().items()}
    adaptor = trainer.model.adaptor.weight.detach().clone()
    losses = trainer.step(_batch())
    assert set(losses) == {"bce_input", "bce_features", "bce_adapted", "focal", "total"}
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    assert not torch.equal(trainer.model.adaptor.weight, adaptor)
    for key, value in trainer.model.backbone.state_dict().items():
        assert torch.equal(value, backbone[key]), key  # frozen: weights and BN statistics unchanged


def test_nothing_to_train_is_an_error() -> None:
    trainer = _trainer(mgag_input=False, mgag_features=False, mgag_adapted=False, utag=False)
    trainer.start_epoch(1)
    with pytest.raises(ValueError, match="nothing to train"):
        trainer.step(_batch())
