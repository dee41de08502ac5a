"""Per-step Dataset: selection, mask remapping, image-level labels, transforms, summary, argument errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from wilson_ray import protocol
from wilson_ray.data import transforms, voc
from wilson_ray.data.dataset import build_dataset, label_matrix, summary
from wilson_ray.errors import UserError

TASK = protocol.get_task("15-5")


def raw_mask(ds, item):
    return np.asarray(Image.open(ds.manifest.root / ds.manifest.masks[int(ds.indices[item])]))


def test_train_step0_selection_and_remap(synth_root):
    ds = build_dataset(synth_root, TASK, 0, "train", crop_size=32)
    presence = voc.voc_manifest(synth_root, "train").presence()
    assert np.array_equal(ds.indices, TASK.select(presence, 0, overlap=False))
    assert ds.num_classes == 16 and ds.class_names == list(protocol.VOC_CLASSES[:16])
    for i in range(len(ds)):
        raw = raw_mask(ds, i)
        _, mask = ds.load(i)
        expected = np.where((raw >= 16) | (raw == 255), 0, raw)  # future classes and void -> background
        assert np.array_equal(mask, expected)


def test_overlap_step0_maps_future_classes_to_background(synth_root):
    ds = build_dataset(synth_root, TASK, 0, "train", overlap=True, crop_size=32)
    future = [i for i in range(len(ds)) if (raw_mask(ds, i)[..., None] == np.arange(16, 21)).any()]
    assert future, "overlap selection should contain images with future classes"
    for i in future:
        _, mask = ds.load(i)
        assert mask.max() <= 15 and not (mask == 255).any()


def test_val_keeps_void_and_all_images(synth_root):
    ds = build_dataset(synth_root, TASK, 0, "val", crop_size=32)
    assert np.array_equal(ds.indices, np.arange(10))
    raw = raw_mask(ds, 0)
    _, mask = ds.load(0)
    assert np.array_equal(mask == 255, raw == 255)
    assert np.array_equal(mask, np.where((raw >= 16) & (raw != 255), 0, raw))
    ds1 = build_dataset(synth_root, TASK, 1, "val", crop_size=32)
    for i in range(len(ds1)):
        assert np.array_equal(ds1.load(i)[1], raw_mask(ds1, i))  # at the last step VOC ids = internal ids


def test_labels_step0_are_present_seen_classes(synth_root):
    ds = build_dataset(synth_root, TASK, 0, "train", crop_size=32)
    presence = voc.voc_manifest(synth_root, "train").presence()[ds.indices]
    assert ds.labels.shape == (len(ds), 15)
    assert np.array_equal(ds.labels.numpy() > 0, presence[:, :15])


def test_labels_step1_only_new_classes_and_no_mask(synth_root):
    ds = build_dataset(synth_root, TASK, 1, "train", crop_size=32)
    presence = voc.voc_manifest(synth_root, "train").presence()[ds.indices]
    labels = ds.labels.numpy()
    assert labels.shape == (len(ds), 20)
    assert not labels[:, :15].any()
    assert np.array_equal(labels[:, 15:] > 0, presence[:, 15:])
    assert labels[:, 15:].any(axis=1).all()  # every step-1 image has a new class
    relaxed = build_dataset(synth_root, TASK, 1, "train", no_mask=True, crop_size=32).labels.numpy()
    assert np.array_equal(relaxed > 0, presence)
    assert relaxed[:, :15].any()  # old classes are visible with no_mask


def test_label_matrix_multi_step_order():
    task = protocol.get_task("10-5")
    presence = np.zeros((2, 20), bool)
    presence[0, [0, 11, 17]] = True  # aeroplane(1), dog(12), sheep(18)
    presence[1, [12]] = True  # horse(13)
    lab = label_matrix(task, 1, presence)
    assert lab.shape == (2, 15)
    assert lab[0].tolist() == [0] * 10 + [0, 1, 0, 0, 0]
    assert lab[1].tolist() == [0] * 10 + [0, 0, 1, 0, 0]


def test_items_shapes_and_types(synth_root):
    ds = build_dataset(synth_root, TASK, 0, "train", crop_size=32)
    torch.manual_seed(0)
    image, mask, labels = ds[0]
    assert type(image) is torch.Tensor and image.dtype == torch.float32 and image.shape == (3, 32, 32)
    assert mask.dtype == torch.int64 and mask.shape == (32, 32)
    assert labels.dtype == torch.float32 and labels.shape == (15,)
    assert set(mask.unique().tolist()) <= set(range(16))
    full = build_dataset(synth_root, TASK, 1, "val", eval_mode="full")
    image, mask, _ = full[0]
    assert image.shape == (3, 64, 64) and mask.shape == (64, 64)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch[0].shape == (4, 3, 32, 32) and batch[1].shape == (4, 32, 32) and batch[2].shape == (4, 15)


def test_train_transform_keeps_mask_values_and_pairs_geometry():
    img = np.zeros((40, 60, 3), np.uint8)
    img[:, :30] = 255  # left half white
    mask = np.zeros((40, 60), np.uint8)
    mask[:, :30] = 7
    mask[0] = 255
    t = transforms.train_transform(24)
    for seed in range(20):
        torch.manual_seed(seed)
        image, m = t(*transforms.to_tv_tensors(Image.fromarray(img), mask))
        assert image.shape == (3, 24, 24) and m.shape == (24, 24)
        assert set(m.unique().tolist()) <= {0, 7, 255}  # nearest: no interpolated labels
        white = transforms.denormalise(image.as_subclass(torch.Tensor)).mean(0) > 0.9
        # image and mask were cropped/flipped together: label 7 where the image is white (away from the edge)
        agree = (white == (m == 7)) | (m == 255)
        assert agree.float().mean() > 0.9


def test_eval_crop_resizes_short_side_then_center_crops():
    img = Image.fromarray(np.zeros((30, 60, 3), np.uint8))
    mask = np.zeros((30, 60), np.uint8)
    mask[:, :15] = 3  # left quarter: cut off by the center crop
    mask[:, 15:45] = 5
    image, m = transforms.eval_transform(20, "crop")(*transforms.to_tv_tensors(img, mask))
    assert image.shape == (3, 20, 20)
    assert set(m.unique().tolist()) == {5}
    image, m = transforms.eval_transform(20, "full")(*transforms.to_tv_tensors(img, mask))
    assert image.shape == (3, 30, 60) and isinstance(m, tv_tensors.Mask)
    assert torch.allclose(
        image[:, 0, 0], -torch.tensor(transforms.IMAGENET_MEAN) / torch.tensor(transforms.IMAGENET_STD)
    )


def test_summary(synth_root):
    steps = summary(synth_root, TASK, overlap=False)
    presence = voc.voc_manifest(synth_root, "train").presence()
    assert [s["step"] for s in steps] == [0, 1]
    assert steps[0]["classes"][0] == "background" and len(steps[0]["classes"]) == 16
    assert steps[1]["classes"] == ["pottedplant", "sheep", "sofa", "train", "tvmonitor"]
    for s in steps:
        assert s["indices"] == TASK.select(presence, s["step"], False).tolist()
        assert s["count"] == len(s["indices"])


def test_argument_errors(synth_root):
    with pytest.raises(UserError, match=r"split: got 'test'"):
        build_dataset(synth_root, TASK, 0, "test")
    with pytest.raises(UserError, match=r"eval_mode: got 'multi'"):
        build_dataset(synth_root, TASK, 0, "val", eval_mode="multi")
    with pytest.raises(UserError, match=r"step: got 2 for task '15-5'"):
        build_dataset(synth_root, TASK, 2, "train")
    with pytest.raises(UserError, match=r"--overlap: task 'offline' has a single step"):
        build_dataset(synth_root, protocol.get_task("offline"), 0, "train", overlap=True)
    with pytest.raises(UserError, match=r"source: 'coco' holds coco labels but task '15-5' uses voc ids"):
        build_dataset(synth_root, TASK, 0, "train", source="coco")
    with pytest.raises(UserError, match=r"source: unknown data source 'ade'"):
        build_dataset(synth_root, TASK, 0, "train", source="ade")
    with pytest.raises(UserError, match=r"crop_size: got 0"):
        build_dataset(synth_root, TASK, 0, "train", crop_size=0)
    with pytest.raises(UserError, match=r"data root: .*/missing does not exist"):
        build_dataset(synth_root / "missing", TASK, 0, "train")
