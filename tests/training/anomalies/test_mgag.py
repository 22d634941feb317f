"""Tests for training.anomalies.mgag: selective modality choice and Gaussian noise drawn on the tensor's device."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from training.anomalies.mgag import (
    GaussianAnomalies,
    MgagConfig,
    add_noise,
    add_selective_noise,
    choose_modalities,
)

ALL_ON = MgagConfig(enable_input=True, enable_features=True, enable_adapted=True)


def make_generator(device: torch.device | str, seed: int) -> torch.Generator:
    return torch.Generator(device=torch.device(device)).manual_seed(seed)


def test_config_defaults_and_validation() -> None:
    config = ALL_ON
    assert (config.sigma_input, config.sigma_features, config.sigma_adapted) == (0.12, 0.04, 0.02)
    assert config.alpha == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="sigma_features"):
        MgagConfig(True, True, True, sigma_features=-0.1)
    with pytest.raises(ValueError, match="alpha"):
        MgagConfig(True, True, True, alpha=0.7)


def test_choose_modalities_frequencies_numpy() -> None:
    rng = np.random.default_rng(0)
    counts = Counter(choose_modalities(rng, 1 / 3) for _ in range(30_000))
    assert set(counts) == {"both", "rgb", "depth"}
    for name in ("both", "rgb", "depth"):
        assert counts[name] / 30_000 == pytest.approx(1 / 3, abs=0.015)


def test_choose_modalities_thresholds_follow_alpha() -> None:
    rng = np.random.default_rng(3)
    counts = Counter(choose_modalities(rng, 0.1) for _ in range(20_000))
    # u > 0.2 → both (80%), 0.1 < u ≤ 0.2 → rgb (10%), u ≤ 0.1 → depth (10%).
    assert counts["both"] / 20_000 == pytest.approx(0.8, abs=0.015)
    assert counts["rgb"] / 20_000 == pytest.approx(0.1, abs=0.01)
    half = Counter(choose_modalities(rng, 0.5) for _ in range(2_000))
    assert half["both"] == 0  # u > 1 never happens


def test_choose_modalities_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="alpha"):
        choose_modalities(np.random.default_rng(0), 0.0)
    with pytest.raises(TypeError, match="Generator"):
        choose_modalities(torch.Generator(), 1 / 3)  # type: ignore[arg-type]


def test_add_noise_statistics_device_and_dtype() -> None:
    x = torch.full((4, 3, 64, 64), 2.0)
    noisy = add_noise(x, 0.12, make_generator(x.device, 0))
    assert noisy.device == x.device and noisy.dtype == x.dtype and noisy.shape == x.shape
    delta = noisy - x
    assert delta.std().item() == pytest.approx(0.12, rel=0.02)
    assert abs(delta.mean().item()) < 0.005
    assert torch.equal(x, torch.full_like(x, 2.0))  # the input is not modified in place


def test_add_noise_uses_the_given_generator_not_the_global_one() -> None:
    x = torch.zeros(1000)
    global_state = torch.get_rng_state()
    a = add_noise(x, 0.5, make_generator("cpu", 42))
    assert torch.equal(torch.get_rng_state(), global_state)
    b = add_noise(x, 0.5, make_generator("cpu", 42))
    c = add_noise(x, 0.5, make_generator("cpu", 43))
    expected = torch.empty(1000).normal_(0.0, 0.5, generator=make_generator("cpu", 42))
    assert torch.equal(a, b)
    assert torch.equal(a, expected)
    assert not torch.equal(a, c)


def test_add_noise_refuses_a_generator_on_another_device() -> None:
    x = torch.empty(8, device="meta")
    with pytest.raises(ValueError, match="generator lives on cpu"):
        add_noise(x, 0.1, make_generator("cpu", 0))


def test_add_noise_zero_sigma_and_bad_arguments() -> None:
    x = torch.randn(5)
    assert add_noise(x, 0.0, make_generator("cpu", 0)) is x
    with pytest.raises(ValueError, match="sigma"):
        add_noise(x, -1.0)
    with pytest.raises(TypeError, match="floating"):
        add_noise(torch.ones(3, dtype=torch.int64), 0.1)


def test_add_noise_keeps_autograd() -> None:
    features = torch.randn(6, 4, requires_grad=True)
    noisy = add_noise(features, 0.02, make_generator("cpu", 0))
    noisy.sum().backward()
    assert features.grad is not None
    assert torch.equal(features.grad, torch.ones_like(features))


@pytest.mark.parametrize("which", ["both", "rgb", "depth"])
def test_selective_noise_leaves_unselected_modality_unchanged(which: str) -> None:
    rgb, depth = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    rgb_copy, depth_copy = rgb.clone(), depth.clone()
    out_rgb, out_depth = add_selective_noise(rgb, depth, 0.1, which, make_generator("cpu", 0))  # type: ignore[arg-type]
    assert (out_rgb is rgb) == (which == "depth")
    assert (out_depth is depth) == (which == "rgb")
    assert torch.equal(rgb, rgb_copy) and torch.equal(depth, depth_copy)
    if which != "depth":
        assert not torch.equal(out_rgb, rgb)
    if which != "rgb":
        assert not torch.equal(out_depth, depth)


def test_selective_noise_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="which"):
        add_selective_noise(torch.zeros(2), torch.zeros(2), 0.1, "none")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="differ"):
        add_selective_noise(torch.zeros(2), torch.zeros(3), 0.1, "both")


def _mgag(config: MgagConfig = ALL_ON, modalities: tuple[str, ...] = ("rgb", "depth"), seed: int = 5):
    noise = GaussianAnomalies(config, modalities, torch.device("cpu"), seed)
    noise.start_epoch(1)
    return noise


def test_levels_use_their_sigma() -> None:
    noise = _mgag(MgagConfig(True, True, True, sigma_input=0.3, sigma_features=0.1, sigma_adapted=0.02))
    rgb, depth = torch.zeros(2, 3, 32, 32), torch.zeros(2, 3, 32, 32)
    out_rgb, out_depth = noise.inputs(rgb, depth)
    noisy = [t for t in (out_rgb, out_depth) if t is not rgb and t is not depth]
    assert noisy and all(t.std().item() == pytest.approx(0.3, rel=0.05) for t in noisy)
    f_rgb, f_depth = noise.features(torch.zeros(2, 8, 16, 16), torch.zeros(2, 8, 16, 16))
    assert any(t is not None and t.abs().sum() > 0 for t in (f_rgb, f_depth))
    assert all(
        t is None or t.abs().sum() == 0 or t.std().item() == pytest.approx(0.1, rel=0.1) for t in (f_rgb, f_depth)
    )
    assert noise.adapted(torch.zeros(4, 5000)).std().item() == pytest.approx(0.02, rel=0.05)


def test_each_level_draws_its_own_modality() -> None:
    noise = _mgag(seed=9)
    feats = torch.zeros(2, 16)

    def target(pair: tuple[torch.Tensor | None, torch.Tensor | None]) -> str:
        hit_rgb, hit_depth = (t is not feats for t in pair)
        return "both" if hit_rgb and hit_depth else ("rgb" if hit_rgb else "depth")

    choices = [(target(noise.inputs(feats, feats)), target(noise.features(feats, feats))) for _ in range(200)]
    assert {a for a, _ in choices} == {"both", "rgb", "depth"}
    assert any(a != b for a, b in choices)  # independent draws: the two levels do not always agree


def test_single_modality_models_always_perturb_their_one_input() -> None:
    noise = _mgag(modalities=("depth",))
    rgb, depth = torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 8, 8)
    for _ in range(20):
        out_rgb, out_depth = noise.inputs(rgb, depth)
        assert out_rgb is rgb and out_depth is not depth
    out_rgb, out_depth = noise.features(None, torch.zeros(2, 4, 2, 2))
    assert out_rgb is None and out_depth is not None and out_depth.abs().sum() > 0


def test_epochs_reseed_both_generators() -> None:
    """A resumed run draws what an uninterrupted one would: epoch e's noise depends on (seed, e) only."""
    x = torch.zeros(2, 3, 8, 8)

    def draws(noise: GaussianAnomalies) -> list[torch.Tensor]:
        return [t for _ in range(3) for t in (*noise.inputs(x, x), noise.adapted(x))]

    straight = _mgag(seed=3)
    draws(straight)  # epoch 1 consumed
    straight.start_epoch(2)
    resumed = GaussianAnomalies(ALL_ON, ("rgb", "depth"), torch.device("cpu"), 3)
    resumed.start_epoch(2)
    assert all(torch.equal(a, b) for a, b in zip(draws(straight), draws(resumed), strict=True))
    other_epoch = _mgag(seed=3)
    assert not all(torch.equal(a, b) for a, b in zip(draws(other_epoch), draws(resumed), strict=True))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_noise_is_drawn_on_the_cuda_device() -> None:
    x = torch.zeros(3, 256, 256, device="cuda")
    generator = make_generator(x.device, 0)
    noisy = add_noise(x, 0.12, generator)
    assert noisy.device == x.device
    assert noisy.std().item() == pytest.approx(0.12, rel=0.02)
    with pytest.raises(ValueError, match="generator"):
        add_noise(x, 0.12, make_generator("cpu", 0))
