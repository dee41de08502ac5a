"""Wide-ResNet-38 A2 (issue 12): layout, output stride, stage features, the InPlace-ABN checkpoint conversion, the
segmenter on top of it, BN folding of its pre-activation blocks, and the COCO-to-VOC preset that uses it.

Numerical tests run a reduced-width net (``width_divisor``: every width ÷ 16 or ÷ 32); the real widths are checked
on the meta device (shapes only, no memory, no compute)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from wilson_ray import fast
from wilson_ray.config import resolve_config
from wilson_ray.errors import UserError
from wilson_ray.models.backbone import build_backbone
from wilson_ray.models.head import DeepLabV3Head
from wilson_ray.models.segmenter import Segmenter, build_segmenter
from wilson_ray.models.weights import convert_iabn_checkpoint, load_backbone_weights
from wilson_ray.models.wideresnet import WideResNet38

# The authors' layout, written out independently of the module: module -> (blocks, conv widths, first-block stride
# at OS 8, dilation at OS 8, Dropout2d p). Widths of a two-conv block are two 3x3 convs; of three, 1x1-3x3-1x1.
LAYOUT = {
    2: (3, (128, 128), 1, 1, None),
    3: (3, (256, 256), 1, 1, None),
    4: (6, (512, 512), 2, 1, None),
    5: (3, (512, 1024), 1, 2, None),
    6: (1, (512, 1024, 2048), 1, 4, 0.3),
    7: (1, (1024, 2048, 4096), 1, 4, 0.5),
}
BN_KEYS = ("weight", "bias", "running_mean", "running_var")


def iabn_wrn38_shapes(divisor: int) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the authors' ``wide_resnet38_ipabn_lr_256.pth.tar`` (widths ÷ ``divisor``): ``module.``
    prefix, InPlace-ABN names (block-level bn1, convs.convK / convs.bnK, proj_conv, bn_out, classifier.fc)."""
    shapes: dict[str, tuple[int, ...]] = {}

    def conv(key, cout, cin, k):
        shapes[f"module.{key}.weight"] = (cout, cin, k, k)

    def bn(key, c):
        shapes.update({f"module.{key}.{name}": (c,) for name in BN_KEYS})

    cin = 64 // divisor
    conv("mod1.conv1", cin, 3, 3)
    for mod, (blocks, widths, _, _, _) in LAYOUT.items():
        widths = [c // divisor for c in widths]
        for b in range(1, blocks + 1):
            p = f"mod{mod}.block{b}"
            bn(f"{p}.bn1", cin)
            kernels = (3, 3) if len(widths) == 2 else (1, 3, 1)
            prev = cin
            for i, (w, k) in enumerate(zip(widths, kernels), start=1):
                if i > 1:
                    bn(f"{p}.convs.bn{i}", prev)
                conv(f"{p}.convs.conv{i}", w, prev, k)
                prev = w
            if b == 1:  # every first block changes the width here
                conv(f"{p}.proj_conv", widths[-1], cin, 1)
            cin = widths[-1]
    bn("bn_out", cin)
    shapes["module.classifier.fc.weight"] = (1000, cin)
    shapes["module.classifier.fc.bias"] = (1000,)
    return shapes


def iabn_wrn38_state(divisor: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """A synthetic InPlace-ABN WRN-38 checkpoint state dict with random values (running_var positive)."""
    return {
        k: torch.rand(shape, generator=generator) + (0.5 if k.endswith("running_var") else -0.5)
        for k, shape in iabn_wrn38_shapes(divisor).items()
    }


@pytest.fixture(scope="module")
def small_wrn():
    torch.manual_seed(0)
    return WideResNet38(output_stride=8, width_divisor=16)


def test_full_width_layout_matches_the_checkpoint_layout():
    with torch.device("meta"):
        body = build_backbone("wideresnet38", output_stride=8)
    assert (body.arch, body.out_channels, body.output_stride) == ("wideresnet38", 4096, 8)
    assert body.stage_channels == {"conv3": 256, "conv4": 512, "conv5": 1024, "conv6": 2048, "out": 4096}
    expected = {
        k.removeprefix("module."): shape for k, shape in iabn_wrn38_shapes(1).items() if ".classifier." not in k
    }
    got = {k: tuple(v.shape) for k, v in body.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert got == expected
    # per two-conv block bn1 (4 tensors) + conv1 + bn2 (4) + conv2 = 10, bottleneck 15, proj_conv on each first
    # block (6), mod1.conv1, bn_out (4)
    assert len(got) == 15 * 10 + 2 * 15 + 6 + 1 + 4


def test_strides_dilations_and_dropout_of_every_module(small_wrn):
    for mod, (blocks, _, stride, dilation, drop) in LAYOUT.items():
        stage = getattr(small_wrn, f"mod{mod}")
        assert len(stage) == blocks
        for b, block in enumerate(stage):
            convs = [m for m in block.convs if isinstance(m, nn.Conv2d)]
            assert convs[0].stride == ((stride, stride) if b == 0 else (1, 1))
            k3 = [c for c in convs if c.kernel_size == (3, 3)]
            assert all(c.dilation == (dilation, dilation) and c.padding == (dilation, dilation) for c in k3)
            drops = [m.p for m in block.convs if isinstance(m, nn.Dropout2d)]
            assert drops == ([drop] if drop else [])
            assert isinstance(list(block.convs)[-1], nn.Conv2d)  # dropout sits before the last conv
    assert all(
        isinstance(m, nn.LeakyReLU) and m.negative_slope == 0.01
        for m in small_wrn.modules()
        if isinstance(m, (nn.ReLU, nn.LeakyReLU))
    )


@pytest.mark.parametrize("output_stride", [8, 16])
def test_forward_and_stage_features_at_the_output_stride(small_wrn, output_stride):
    torch.manual_seed(1)
    body = copy.deepcopy(small_wrn) if output_stride == 8 else WideResNet38(output_stride=16, width_divisor=16)
    body.eval()
    x = torch.randn(2, 3, 32, 48)
    out = body(x)
    h, w = 32 // output_stride, 48 // output_stride
    assert out.shape == (2, 4096 // 16, h, w)
    feats = body.forward_features(x)
    strides = {"conv3": 4, "conv4": 8, "conv5": output_stride, "conv6": output_stride, "out": output_stride}
    for name, stride in strides.items():
        assert feats[name].shape == (2, body.stage_channels[name], 32 // stride, 48 // stride), name
    assert torch.allclose(feats["out"], out)
    # convN is the next module's bn1 + act of modN's output: recompute conv4 from the raw stage outputs
    raw = body.mod4(body.mod3(body.pool3(body.mod2(body.pool2(body.mod1(x))))))
    assert torch.allclose(feats["conv4"], body.mod5.block1.act1(body.mod5.block1.bn1(raw)))
    assert (feats["conv4"] >= 0).float().mean() < 1  # leaky: negative values kept (scaled), not clipped


def test_bn_relu_and_sync_batchnorm_conversion_keep_the_activations():
    body = WideResNet38(norm="bn_relu", width_divisor=32)
    acts = [m for m in body.modules() if isinstance(m, (nn.ReLU, nn.LeakyReLU))]
    assert acts and all(type(m) is nn.ReLU for m in acts)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in body.modules())
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(body)
    assert (
        sum(isinstance(m, nn.SyncBatchNorm) for m in synced.modules()) == n_bn == 17 + (15 + 2 * 2) + 1
    )  # bn1 per block, inner BNs, bn_out
    assert sum(isinstance(m, nn.ReLU) for m in synced.modules()) == len(acts)
    with pytest.raises(UserError, match="width_divisor: found 3"):
        WideResNet38(width_divisor=3)
    with pytest.raises(UserError, match="model.output_stride: found 32"):
        WideResNet38(output_stride=32)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_convert_and_load_a_synthetic_inplace_abn_checkpoint(tmp_path, small_wrn):
    iabn = iabn_wrn38_state(16, _gen())
    path = tmp_path / "wide_resnet38_ipabn_lr_256.pth.tar"
    torch.save({"state_dict": iabn}, path)

    converted = convert_iabn_checkpoint(path)
    reference = {k.removeprefix("module."): v for k, v in iabn.items() if ".classifier." not in k}
    assert converted.keys() == reference.keys() and "bn_out.running_var" in converted
    assert all(torch.equal(converted[k], reference[k]) for k in reference)

    for source in (f"iabn:{path}", str(path)):  # explicit prefix and auto-detected layout
        target = copy.deepcopy(small_wrn)
        load_backbone_weights(target, source)
        loaded = target.state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in reference.items())
        assert {k for k in loaded if not k.endswith("num_batches_tracked")} == reference.keys()


def _error(fn) -> str:
    with pytest.raises(UserError) as err:
        fn()
    message = str(err.value)
    assert "\n" not in message
    return message


def test_bad_checkpoints_give_one_line_naming_file_and_key(tmp_path, small_wrn):
    def save(state, name):
        path = tmp_path / name
        torch.save({"state_dict": state}, path)
        return path

    missing = iabn_wrn38_state(16, _gen())
    del missing["module.mod4.block6.convs.conv2.weight"]
    path = save(missing, "missing.pth.tar")
    message = _error(lambda: convert_iabn_checkpoint(path))
    assert str(path) in message and "mod4.block6.convs.conv2.weight" in message and "1 keys" in message

    unknown = iabn_wrn38_state(16, _gen())
    unknown["module.mod6.block1.convs.bn4.weight"] = torch.ones(4)
    path = save(unknown, "unknown.pth.tar")
    message = _error(lambda: load_backbone_weights(copy.deepcopy(small_wrn), f"iabn:{path}"))
    assert str(path) in message and "mod6.block1.convs.bn4.weight" in message

    unexpected = iabn_wrn38_state(16, _gen())
    unexpected["module.mod5.block4.proj_conv.weight"] = torch.ones(64, 64, 1, 1)  # fits the rules, not the net
    path = save(unexpected, "extra.pth.tar")
    message = _error(lambda: load_backbone_weights(copy.deepcopy(small_wrn), str(path)))
    assert str(path) in message and "mod5.block4.proj_conv.weight" in message and "1 unexpected" in message

    path = save(iabn_wrn38_state(16, _gen()), "w16.pth.tar")
    message = _error(lambda: load_backbone_weights(WideResNet38(width_divisor=32), str(path)))
    assert str(path) in message and "wrong shape" in message and "mod1.conv1.weight (4, 3, 3, 3)" in message

    message = _error(lambda: load_backbone_weights(build_backbone("small"), str(path)))  # WRN file, ResNet body
    assert "does not match backbone 'small'" in message and str(path) in message


def test_segmenter_on_wideresnet38_gives_logits_of_the_right_shape(small_wrn):
    torch.manual_seed(2)
    body = copy.deepcopy(small_wrn)
    model = Segmenter(body, DeepLabV3Head(body.out_channels, 32, output_stride=8, pooling_size=48), [3, 2]).train()
    x = torch.randn(2, 3, 48, 40)
    out = model(x, upsample=False)
    assert out.logits.shape == (2, 5, 6, 5) and out.features.shape == (2, 256, 6, 5)
    out.logits.square().mean().backward()
    assert all(p.grad is not None for p in model.backbone_parameters())
    assert model(x).logits.shape == (2, 5, 48, 40)

    with torch.device("meta"):  # the real widths through build_segmenter (COCO-to-VOC: 61 + 20 classes, crop 448)
        full = build_segmenter("wideresnet38", [61, 20], output_stride=8, pooling_size=448).eval()
        logits = full(torch.empty(1, 3, 448, 448), upsample=False).logits
    assert full.head.in_channels == 4096 and [c.dilation[0] for c in full.head.map_convs[1:]] == [12, 24, 32]
    assert logits.shape == (1, 81, 56, 56)


def test_frozen_old_model_folds_only_the_conv_bn_pairs(small_wrn):
    torch.manual_seed(3)
    model = Segmenter(copy.deepcopy(small_wrn), DeepLabV3Head(256, 32, output_stride=8), [3]).eval()
    for m in model.modules():  # non-trivial running statistics, so a wrong fold shows
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        reference = model(x).logits
    frozen = fast.freeze_old_model(model)
    # one conv->bn pair per two-conv block (conv1->bn2), two per bottleneck (conv1->bn2, conv2->bn3); bn1 precedes
    # the convs and bn_out follows a sum: they stay (the head has no conv->bn pair: its BNs follow sums)
    assert frozen.folded == (3 + 3 + 6 + 3) + 2 * 2
    assert torch.allclose(frozen(x).logits, reference, rtol=1e-4, atol=1e-4 * reference.abs().max().item())


def test_small_and_resnet_bodies_expose_the_same_stage_names():
    body = build_backbone("small", output_stride=8, small_width=4)
    feats = body.forward_features(torch.randn(1, 3, 32, 32))
    assert {k: tuple(v.shape) for k, v in feats.items()} == {
        "conv3": (1, 4, 8, 8),
        "conv4": (1, 8, 4, 4),
        "conv5": (1, 16, 4, 4),
        "conv6": (1, 32, 4, 4),
        "out": (1, 32, 4, 4),
    }
    assert body.stage_channels == {"conv3": 4, "conv4": 8, "conv5": 16, "conv6": 32, "out": 32}
    with torch.device("meta"):
        assert build_backbone("resnet101").stage_channels == WideResNet38().stage_channels | {"out": 2048}


def test_coco_voc_preset_uses_wideresnet38_and_resnet101_stays_selectable():
    cfg = resolve_config("coco-voc")
    assert (cfg.model.backbone, cfg.model.output_stride) == ("wideresnet38", 8)
    assert cfg.model.pretrained == "iabn:pretrained/wide_resnet38_ipabn_lr_256.pth.tar"
    r101 = resolve_config("coco-voc", overrides={"model.backbone": "resnet101", "model.pretrained": "torchvision"})
    assert (r101.model.backbone, r101.model.output_stride, r101.model.pretrained) == ("resnet101", 8, "torchvision")
    message = _error(lambda: resolve_config("coco-voc", overrides={"model.backbone": "wrn38"}))
    assert "field 'model.backbone' is 'wrn38'" in message and "wideresnet38" in message
