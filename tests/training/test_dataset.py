"""training.data.dataset: splits preprocessed once, the UTAG training items and the synthetic validation set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.preprocessing import PreprocessConfig
from training.anomalies.textures import load_textures
from training.config import TrainConfig
from training.data.dataset import AnomalyOptions, TextureAnomalySet, synthetic_validation
from training.data.prepared import PreparedSplit, prepare_split, resize_gt
from training.synth.generate import generate

SIZE = 32


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    generate(root, ["puck"], seed=1, size=64, n_train=3, n_validation=2, n_test_per_defect=1, progress=False)
    return root


@pytest.fixture(scope="module")
def train(data: Path) -> PreparedSplit:
    return prepare_split(data, "puck", "train", PreprocessConfig(image_size=SIZE), progress=False)


@pytest.fixture(scope="module")
def textures() -> list[np.ndarray]:
    return load_textures(None, max_images=2)


def options(**changes: object) -> AnomalyOptions:
    base = {"grid": (SIZE // 8, SIZE // 8), "seed": 4, "modalities": ("rgb", "depth")}
    return AnomalyOptions(**(base | changes))  # type: ignore[arg-type]


def test_resize_gt_keeps_thin_defects_and_uses_the_area_rule() -> None:
    gt = np.zeros((64, 64), bool)
    gt[10, 5:60] = True  # one pixel thin: under half of every 4×4 cell it touches
    small = resize_gt(gt, 16)
    assert small.any() and small[2].any() and not small[:2].any()
    block = np.zeros((64, 64), bool)
    block[:32, :32] = True
    assert resize_gt(block, 16).sum() == 64  # exactly the top-left quarter
    assert not resize_gt(np.zeros((64, 64), bool), 16).any()


def test_prepare_split_holds_normalised_inputs_labels_and_masks(data: Path, train: PreparedSplit) -> None:
    assert len(train) == 3 and train.rgb.shape == (3, 3, SIZE, SIZE) and train.depth.shape == (3, 3, SIZE, SIZE)
    assert train.rgb.dtype == np.float32 and train.foreground.dtype == bool and train.foreground.any()
    assert not train.labels.any() and train.defects == ["good"] * 3
    test = prepare_split(data, "puck", "test", PreprocessConfig(image_size=SIZE), progress=False)
    assert test.labels.sum() == len(test) - 1  # one good part, one of each defect type
    assert all(test.gt[i].any() for i in np.flatnonzero(test.labels))
    sub = train.subset([2, 0])
    assert [s.stem for s in sub.samples] == [train.samples[2].stem, train.samples[0].stem]
    np.testing.assert_array_equal(sub.rgb[1], train.rgb[0])
    with pytest.raises(ValueError, match="unknown category"):
        prepare_split(data, "nothing", "train", PreprocessConfig(image_size=SIZE), progress=False)


def test_training_items_are_reproducible_per_epoch_and_index(train: PreparedSplit, textures: list[np.ndarray]) -> None:
    dataset = TextureAnomalySet(train, [0, 1, 2, 1], textures, options())
    assert len(dataset) == 4
    dataset.set_epoch(3)
    item = dataset[1]
    assert set(item) == {"rgb", "depth", "aug_rgb", "aug_depth", "patch_mask"}
    assert item["aug_rgb"].shape == (3, SIZE, SIZE) and item["patch_mask"].shape == (SIZE // 8, SIZE // 8)
    np.testing.assert_array_equal(item["rgb"].numpy(), train.rgb[1])
    again = TextureAnomalySet(train, [0, 1, 2, 1], textures, options())
    again.set_epoch(3)
    for key, value in again[1].items():
        np.testing.assert_array_equal(value.numpy(), item[key].numpy())
    dataset.set_epoch(4)
    changed = dataset[1]
    assert any(not np.array_equal(changed[k].numpy(), item[k].numpy()) for k in ("aug_rgb", "aug_depth"))
    plain = TextureAnomalySet(train, [0], textures, options(), utag=False)
    assert set(plain[0]) == {"rgb", "depth"}


def test_validation_set_uses_every_option(train: PreparedSplit, textures: list[np.ndarray]) -> None:
    opts = options(modalities=("depth",), depth_anomaly="smooth", beta_mean=0.2, beta_std=0.0)
    val = synthetic_validation(train, textures, opts)
    n = len(train)
    assert val.rgb.shape == (2 * n, 3, SIZE, SIZE) and val.masks.shape == (2 * n, SIZE, SIZE)
    assert val.labels.tolist() == [False] * n + [True] * n
    assert not val.masks[:n].any() and all(m.any() for m in val.masks[n:])
    # A depth-only model: the anomalies go into depth only, smooth (no texture): RGB is the clean part.
    np.testing.assert_array_equal(val.rgb[n:], train.rgb)
    assert not np.array_equal(val.depth[n:], train.depth)
    # Each anomalous copy is exactly what the options make from the fixed validation seed.
    for i in range(n):
        made = opts.make(train, i, textures, np.random.default_rng((opts.seed, 10_007, i)))
        np.testing.assert_array_equal(val.depth[n + i], made.depth)
        assert made.beta == pytest.approx(0.2)  # beta_mean/std reached the generator


def test_options_from_a_training_config() -> None:
    config = TrainConfig(data="d", category="c", image_size=64, seed=7, modality="rgb", beta_mean=0.4, alpha=0.25)
    opts = AnomalyOptions.from_config(config)
    assert opts == AnomalyOptions(
        grid=(8, 8), seed=7, modalities=("rgb",), beta_mean=0.4, beta_std=0.3, alpha=0.25, depth_anomaly="mixed"
    )
