"""Tests for training.model: patch pooling, fusion, heads, smoothing, ONNX export."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from training.model.backbones import FeatureBackbone, build_backbone
from training.model.bridgenet import BridgeNet, adaptive_pool_matrix
from training.model.smoothing import GaussianSmoothing

SIZE = 64


@pytest.fixture(scope="module")
def lite0() -> FeatureBackbone:
    return build_backbone("tf_efficientnet_lite0")


def _model(backbone: FeatureBackbone, **kwargs: object) -> BridgeNet:
    torch.manual_seed(0)
    kwargs.setdefault("feature_dim", 64)
    kwargs.setdefault("image_size", SIZE)
    return BridgeNet(backbone, **kwargs).eval()  # type: ignore[arg-type]


def _inputs(batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, SIZE, SIZE, generator=g), torch.randn(batch, 3, SIZE, SIZE, generator=g)


def _reference_patch_features(levels: list[torch.Tensor], per_level: int, grid: int) -> torch.Tensor:
    """The reference's order (docs/METHOD.md#patch-features): unfold → bilinear upsample of each map → pool."""
    out = []
    for fmap in levels:
        b, c, h, w = fmap.shape
        unfolded = F.unfold(fmap, kernel_size=3, padding=1).reshape(b, c * 9, h, w)
        if (h, w) != (grid, grid):
            unfolded = F.interpolate(unfolded, size=(grid, grid), mode="bilinear", align_corners=False)
        rows = unfolded.permute(0, 2, 3, 1).reshape(-1, 1, c * 9)
        pooled = F.adaptive_avg_pool1d(rows, per_level).reshape(b, grid, grid, per_level)
        out.append(pooled.permute(0, 3, 1, 2))
    return torch.cat(out, dim=1)


@pytest.mark.parametrize(("length", "n"), [(360, 128), (1008, 128), (4608, 768), (10, 4)])
def test_pool_matrix_is_adaptive_avg_pool1d(length: int, n: int) -> None:
    x = torch.randn(5, length, dtype=torch.float64)
    expected = F.adaptive_avg_pool1d(x.unsqueeze(1), n).squeeze(1)
    torch.testing.assert_close(x @ adaptive_pool_matrix(length, n).double().T, expected)


def test_single_stage_pooling_equals_reference_two_stage_for_wrn() -> None:
    # Reference: each level C·9 → 1536, stack, 3072 → 1536. Ours: each level straight to 768.
    x8, x16 = torch.randn(4, 512 * 9, dtype=torch.float64), torch.randn(4, 1024 * 9, dtype=torch.float64)
    stage1 = [F.adaptive_avg_pool1d(x.unsqueeze(1), 1536) for x in (x8, x16)]
    reference = F.adaptive_avg_pool1d(torch.cat(stage1, dim=2), 1536).squeeze(1)
    ours = torch.cat(
        [x8 @ adaptive_pool_matrix(4608, 768).double().T, x16 @ adaptive_pool_matrix(9216, 768).double().T], 1
    )
    torch.testing.assert_close(ours, reference)


@pytest.mark.parametrize("name", ["tf_efficientnet_lite0", "wide_resnet50_2"])
def test_commuting_order_equals_reference(name: str, lite0: FeatureBackbone) -> None:
    backbone = lite0 if name == "tf_efficientnet_lite0" else build_backbone(name, pretrained=False)
    feature_dim = backbone.spec.feature_dim
    net = _model(backbone, feature_dim=feature_dim)
    rgb, depth = _inputs(2)
    with torch.no_grad():
        f_rgb, f_depth = net.embed(rgb, depth)
        expected = _reference_patch_features(backbone(torch.cat([rgb, depth])), feature_dim // 2, SIZE // 8)
    assert f_rgb is not None and f_depth is not None
    assert f_rgb.shape == (2, feature_dim, SIZE // 8, SIZE // 8)
    scale = float(expected.abs().max())
    torch.testing.assert_close(torch.cat([f_rgb, f_depth]), expected, atol=1e-5 * scale, rtol=1e-5)


def test_backbone_runs_once_on_both_modalities(lite0: FeatureBackbone) -> None:
    net = _model(lite0)
    batches: list[int] = []
    handle = lite0.register_forward_hook(lambda _m, args, _out: batches.append(args[0].shape[0]))
    try:
        with torch.no_grad():
            net(*_inputs(3))
    finally:
        handle.remove()
    assert batches == [6]


def test_fuse_concatenates_rgb_then_depth(lite0: FeatureBackbone) -> None:
    net = _model(lite0)
    with torch.no_grad():
        f_rgb, f_depth = net.embed(*_inputs(2))
    fused = net.fuse(f_rgb, f_depth)
    assert fused.shape == (2, 128, 8, 8) and net.channels == 128
    assert torch.equal(fused[:, :64], f_rgb) and torch.equal(fused[:, 64:], f_depth)


def test_forward_is_max_patch_score_and_smoothed_upsampled_map(lite0: FeatureBackbone) -> None:
    net = _model(lite0)
    rgb, depth = _inputs(2)
    with torch.no_grad():
        scores, maps = net(rgb, depth)
        patch = net.discriminate(net.adapt(net.fuse(*net.embed(rgb, depth))))
        rows = net.discriminate_rows(net.adapt_rows(net.to_rows(net.fuse(*net.embed(rgb, depth)))))
    assert scores.shape == (2,) and maps.shape == (2, SIZE, SIZE) and patch.shape == (2, 8, 8)
    assert float(patch.min()) >= 0.0 and float(patch.max()) <= 1.0
    torch.testing.assert_close(rows.reshape(2, 8, 8), patch)
    torch.testing.assert_close(scores, patch.flatten(1).amax(1))
    up = F.interpolate(patch.unsqueeze(1), size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    expected = np.stack([ndimage.gaussian_filter(m, sigma=4) for m in up.squeeze(1).double().numpy()])
    np.testing.assert_allclose(maps.numpy(), expected, atol=1e-5)


def test_rows_round_trip(lite0: FeatureBackbone) -> None:
    net = _model(lite0)
    maps = torch.randn(2, net.channels, 8, 8)
    rows = net.to_rows(maps)
    assert rows.shape == (2 * 64, net.channels)
    assert torch.equal(rows[8 * 3 + 5], maps[0, :, 3, 5])  # row order (b, y, x)
    assert torch.equal(net.to_maps(rows, 2), maps)
    torch.testing.assert_close(net.adapt(maps), net.to_maps(net.adaptor(rows), 2))


@pytest.mark.parametrize("modality", ["rgb", "depth"])
def test_single_modality(modality: str, lite0: FeatureBackbone) -> None:
    net = _model(lite0, modalities=(modality,))
    rgb, depth = _inputs(2)
    args = (rgb, None) if modality == "rgb" else (None, depth)
    with torch.no_grad():
        f_rgb, f_depth = net.embed(*args)
        scores, maps = net(*args)
        both = _model(lite0).embed(rgb, depth)
    present = f_rgb if modality == "rgb" else f_depth
    assert (f_depth if modality == "rgb" else f_rgb) is None
    assert present is not None and net.channels == 64
    torch.testing.assert_close(present, both[0] if modality == "rgb" else both[1])
    assert net.fuse(f_rgb, f_depth).shape == (2, 64, 8, 8)
    assert scores.shape == (2,) and maps.shape == (2, SIZE, SIZE)
    with pytest.raises(ValueError, match=f"uses modality '{modality}'"):
        net(None, None)


def test_heads_structure_and_trainable_parameters(lite0: FeatureBackbone) -> None:
    net = _model(lite0)
    c = net.channels
    assert sum(p.numel() for p in net.adaptor_parameters()) == c * c + c
    assert sum(p.numel() for p in net.discriminator_parameters()) == 2 * (c * c + c) + 2 * 2 * c + c
    # The optimisers get exactly the parameters that take gradients: the backbone is frozen.
    requires_grad = {id(p) for p in net.parameters() if p.requires_grad}
    assert {id(p) for p in [*net.adaptor_parameters(), *net.discriminator_parameters()]} == requires_grad
    assert len(list(net.adaptor_parameters())) == 2  # weight + bias
    assert net.discriminator[-2].bias is None
    # xavier_normal_: std = sqrt(2 / (fan_in + fan_out)) = 1 / sqrt(c) for a square layer
    assert abs(float(net.adaptor.weight.detach().std()) * c**0.5 - 1.0) < 0.05


def test_train_mode_keeps_backbone_statistics(lite0: FeatureBackbone) -> None:
    net = _model(lite0)
    bn = lite0.stem[1]
    before = bn.running_mean.clone()
    d_before = net.discriminator[1].running_mean.clone()
    net.train()
    assert net.training and net.discriminator.training and not lite0.training
    net(*_inputs(2))
    assert torch.equal(bn.running_mean, before)
    assert not torch.equal(net.discriminator[1].running_mean, d_before)
    net.eval()


def test_bad_arguments(lite0: FeatureBackbone) -> None:
    with pytest.raises(ValueError, match="multiple of 16"):
        _model(lite0, image_size=72)
    with pytest.raises(ValueError, match="even"):
        _model(lite0, feature_dim=65)
    with pytest.raises(ValueError, match="modalities"):
        _model(lite0, modalities=("rgb", "rgb"))
    with pytest.raises(ValueError, match="modalities"):
        _model(lite0, modalities=("normals",))
    net = _model(lite0)
    rgb, depth = _inputs(1)
    with pytest.raises(ValueError, match=r"depth must be \(B, 3, 64, 64\), got \(1, 3, 32, 32\)"):
        net(rgb, depth[..., :32, :32])


@pytest.mark.parametrize(("size", "sigma"), [(64, 4.0), (33, 1.5), (16, 4.0), (8, 4.0)])
def test_smoothing_matches_scipy(size: int, sigma: float) -> None:
    # size 8 and 16 with σ 4 (radius 16) exercise reflection beyond one mirror.
    maps = torch.from_numpy(np.random.default_rng(size).random((2, size, size), dtype=np.float32))
    expected = np.stack([ndimage.gaussian_filter(m, sigma=sigma) for m in maps.double().numpy()])
    np.testing.assert_allclose(GaussianSmoothing(sigma, size)(maps).numpy(), expected, atol=1e-5)
    assert GaussianSmoothing(sigma, size).kernel_x.numel() == 2 * int(4 * sigma + 0.5) + 1


def test_smoothing_zero_sigma_and_errors() -> None:
    maps = torch.rand(1, 16, 16)
    assert torch.equal(GaussianSmoothing(0.0, 16)(maps), maps)
    with pytest.raises(ValueError, match="sigma"):
        GaussianSmoothing(-1.0, 16)
    with pytest.raises(ValueError, match=r"\(B, 16, 16\)"):
        GaussianSmoothing(4.0, 16)(torch.rand(1, 8, 8))


def test_onnx_export_matches_torch(lite0: FeatureBackbone, tmp_path: Path) -> None:
    import onnxruntime as ort

    net = _model(lite0, feature_dim=256)
    path = tmp_path / "bridgenet.onnx"
    batch = torch.export.Dim("batch", min=1, max=64)
    start = time.perf_counter()
    torch.onnx.export(
        net,
        _inputs(2),
        path,
        dynamo=True,
        opset_version=18,
        input_names=["rgb", "depth"],
        output_names=["scores", "maps"],
        dynamic_shapes={"rgb": {0: batch}, "depth": {0: batch}},
        verbose=False,
    )
    assert time.perf_counter() - start < 120
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["rgb", "depth"]
    for n in (1, 3):
        rgb, depth = _inputs(n, seed=n)
        with torch.no_grad():
            scores, maps = net(rgb, depth)
        got_scores, got_maps = session.run(None, {"rgb": rgb.numpy(), "depth": depth.numpy()})
        assert got_scores.shape == (n,) and got_maps.shape == (n, SIZE, SIZE)
        np.testing.assert_allclose(got_scores, scores.numpy(), atol=1e-4)
        np.testing.assert_allclose(got_maps, maps.numpy(), atol=1e-4)
