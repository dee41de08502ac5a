"""Models of method.md §2: backbone dilation, head, localizer, segmenter expansion, weight loading."""

from __future__ import annotations

import math
import re
import time
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from wilson_ray.errors import UserError
from wilson_ray.models import weights as weights_mod
from wilson_ray.models.backbone import build_backbone
from wilson_ray.models.head import DeepLabV3Head
from wilson_ray.models.localizer import Localizer
from wilson_ray.models.segmenter import Segmenter, build_segmenter
from wilson_ray.models.weights import convert_iabn_checkpoint, load_backbone_weights


def _three_by_three_convs(stage: nn.Module) -> list[nn.Conv2d]:
    return [m for m in stage.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]


@pytest.fixture(scope="module")
def resnet50_os16():
    return build_backbone("resnet50", output_stride=16)


@pytest.mark.parametrize("output_stride,expected", [(16, {"layer3": 1, "layer4": 2}), (8, {"layer3": 2, "layer4": 4})])
def test_resnet_every_block_of_a_dilated_stage_is_dilated(output_stride, expected, resnet50_os16):
    body = resnet50_os16 if output_stride == 16 else build_backbone("resnet50", output_stride=8)
    for stage_name, dilation in expected.items():
        convs = _three_by_three_convs(getattr(body, stage_name))
        assert len(convs) == len(getattr(body, stage_name))  # one 3x3 per bottleneck
        for conv in convs:
            assert conv.dilation == (dilation, dilation)
            assert conv.padding == (dilation, dilation)
            if dilation > 1:
                assert conv.stride == (1, 1)
    body.eval()
    with torch.no_grad():
        out = body(torch.randn(1, 3, 64, 64))
    assert out.shape == (1, 2048, 64 // output_stride, 64 // output_stride)
    assert body.out_channels == 2048


def test_resnet101_depth_and_output_stride():
    body = build_backbone("resnet101", output_stride=16)
    assert [len(body.layer1), len(body.layer2), len(body.layer3), len(body.layer4)] == [3, 4, 23, 3]
    assert all(c.dilation == (2, 2) for c in _three_by_three_convs(body.layer4))


def test_leaky_activation_everywhere_and_plain_batchnorm(resnet50_os16):
    acts = [m for m in resnet50_os16.modules() if isinstance(m, (nn.ReLU, nn.LeakyReLU))]
    assert acts and all(isinstance(m, nn.LeakyReLU) and m.negative_slope == 0.01 for m in acts)
    norms = [m for m in resnet50_os16.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert norms and all(type(m) is nn.BatchNorm2d for m in norms)
    relu_body = build_backbone("small", norm="bn_relu")
    acts = [m for m in relu_body.modules() if isinstance(m, (nn.ReLU, nn.LeakyReLU))]
    assert acts and all(type(m) is nn.ReLU for m in acts)


def test_sync_batchnorm_conversion_covers_every_norm():
    model = build_segmenter("small", [3, 2])
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert not any(type(m) is nn.BatchNorm2d for m in converted.modules())


@pytest.mark.parametrize("output_stride", [16, 8])
def test_small_backbone_shape_and_dilation(output_stride):
    torch.manual_seed(0)
    body = build_backbone("small", output_stride=output_stride, small_width=16)
    assert body.out_channels == 128
    dil = 2 if output_stride == 16 else 4
    assert all(c.dilation == (dil, dil) and c.stride == (1, 1) for c in _three_by_three_convs(body.layer4))
    x = torch.randn(8, 3, 96, 96)
    out = body(x)
    out.sum().backward()
    assert out.shape == (8, 128, 96 // output_stride, 96 // output_stride)
    assert all(p.grad is not None for p in body.parameters())


def test_bad_model_fields_are_user_errors():
    with pytest.raises(UserError, match="model.backbone"):
        build_backbone("resnet18")
    with pytest.raises(UserError, match="model.output_stride"):
        build_backbone("small", output_stride=32)
    with pytest.raises(UserError, match="model.norm"):
        build_backbone("small", norm="gn")


@pytest.mark.parametrize("output_stride,dilations", [(16, (6, 12, 18)), (8, (12, 24, 32))])
def test_head_structure_and_init(output_stride, dilations):
    head = DeepLabV3Head(32, 24, output_stride=output_stride)
    assert [c.kernel_size for c in head.map_convs] == [(1, 1), (3, 3), (3, 3), (3, 3)]
    assert tuple(c.dilation[0] for c in head.map_convs[1:]) == dilations
    assert all(c.bias is None for c in head.map_convs)
    assert head.red_conv.in_channels == 4 * 24 and head.red_conv.out_channels == 24
    head.train()
    out = head(torch.randn(2, 32, 5, 7))
    assert out.shape == (2, 24, 5, 7)
    # Xavier-normal std = gain * sqrt(2 / (fan_in + fan_out)); check it on the widest conv.
    conv = DeepLabV3Head(256, 256).red_conv
    gain = nn.init.calculate_gain("leaky_relu", 0.01)
    expected_std = gain * math.sqrt(2.0 / (1024 + 256))
    assert abs(conv.weight.std().item() / expected_std - 1) < 0.05


def test_head_eval_pooling_global_and_local():
    torch.manual_seed(0)
    x = torch.randn(2, 8, 6, 6)
    global_head = DeepLabV3Head(8, 8, output_stride=16, pooling_size=None).eval()
    covering = DeepLabV3Head(8, 8, output_stride=16, pooling_size=512).eval()
    covering.load_state_dict(global_head.state_dict())
    with torch.no_grad():
        assert torch.allclose(global_head(x), covering(x), atol=1e-6)
        # kernel 64/16 = 4 on a 6x6 map: stride-1 average then replicate padding (1 left/top, 2 right/bottom)
        local = DeepLabV3Head(8, 8, output_stride=16, pooling_size=64).eval()
        pooled = local._image_pool(x)
        assert pooled.shape == x.shape
        window = x[:, :, 0:4, 0:4].mean(dim=(2, 3))
        assert torch.allclose(pooled[:, :, 0, 0], window, atol=1e-6)
        assert torch.allclose(pooled[:, :, 1, 1], window, atol=1e-6)
        assert torch.allclose(pooled[:, :, 5, 5], x[:, :, 2:6, 2:6].mean(dim=(2, 3)), atol=1e-6)
        assert local(x).shape == (2, 8, 6, 6)
    # at train time the branch is always the spatial mean
    local.train()
    assert local._image_pool(x).shape == (2, 8, 1, 1)


def test_localizer_layers_and_shape():
    loc = Localizer(32, 7, hidden=16)
    convs = [m for m in loc.modules() if isinstance(m, nn.Conv2d)]
    assert [c.kernel_size for c in convs] == [(3, 3), (3, 3), (1, 1)]
    assert [c.bias is not None for c in convs] == [False, False, True]
    assert sum(isinstance(m, nn.LeakyReLU) for m in loc.modules()) == 2
    assert loc(torch.randn(2, 32, 4, 5)).shape == (2, 7, 4, 5)


def test_segmenter_forward_and_parameter_groups():
    model = build_segmenter("small", [4, 2, 3], head_channels=32)
    assert model.num_classes == 9
    assert [c.out_channels for c in model.classifiers] == [4, 2, 3]
    model.eval()
    with torch.no_grad():
        logits, body = model(torch.randn(2, 3, 64, 48))[:2]
        small_logits = model(torch.randn(2, 3, 64, 48), upsample=False).logits
    assert logits.shape == (2, 9, 64, 48)
    assert body.shape == (2, 128, 4, 3)
    assert small_logits.shape == (2, 9, 4, 3)
    groups = model.backbone_parameters() + model.head_parameters()
    assert len(groups) == len(list(model.parameters()))
    assert {id(p) for p in groups} == {id(p) for p in model.parameters()}


def test_expansion_keeps_old_logits_and_new_classifier_random():
    torch.manual_seed(0)
    old = build_segmenter("small", [4, 2], head_channels=32)
    old.train()
    old(torch.randn(4, 3, 64, 64))  # move BN running stats away from their init
    old.eval()
    torch.manual_seed(1)
    new = build_segmenter("small", [4, 2, 3], head_channels=32)
    fresh_weight = new.classifiers[2].weight.detach().clone()
    result = new.load_state_dict(old.state_dict(), strict=False)
    assert sorted(result.missing_keys) == ["classifiers.2.bias", "classifiers.2.weight"]
    assert result.unexpected_keys == []
    assert torch.equal(new.classifiers[2].weight, fresh_weight)
    new.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        s_old, f_old = old(x, upsample=False)[:2]
        s_new, f_new = new(x, upsample=False)[:2]
    assert torch.equal(s_new[:, :6], s_old)
    assert torch.equal(f_new, f_old)


def test_init_balanced():
    model = build_segmenter("small", [4, 3], head_channels=16)
    bkg_w = model.classifiers[0].weight[0].detach().clone()
    bkg_b = model.classifiers[0].bias[0].item()
    model.init_balanced_()
    expected = bkg_b - math.log(3 + 1)
    new = model.classifiers[1]
    assert torch.equal(new.weight, bkg_w.unsqueeze(0).expand(3, -1, -1, -1))
    assert torch.allclose(new.bias, torch.full((3,), expected))
    assert model.classifiers[0].bias[0].item() == pytest.approx(expected)
    with pytest.raises(UserError, match="init_balanced"):
        build_segmenter("small", [4]).init_balanced_()


# ---------------------------------------------------------------- weights


def _torchvision_to_iabn(key: str) -> str:
    """Independent inverse mapping used to synthesise an InPlace-ABN checkpoint."""
    if key.startswith(("conv1.", "bn1.")):
        return "module.mod1." + key
    match = re.match(r"layer(\d)\.(\d+)\.(.*)$", key)
    assert match, key
    mod, block, rest = int(match[1]) + 1, int(match[2]) + 1, match[3]
    rest = rest.replace("downsample.0.", "proj_conv.").replace("downsample.1.", "proj_bn.")
    if rest.startswith(("conv", "bn")):
        rest = "convs." + rest
    return f"module.mod{mod}.block{block}.{rest}"


def test_convert_iabn_checkpoint_on_synthetic_resnet50(tmp_path, resnet50_os16):
    reference = {k: v for k, v in resnet50_os16.state_dict().items() if not k.endswith("num_batches_tracked")}
    reference = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in reference.items()}
    iabn = {_torchvision_to_iabn(k): v for k, v in reference.items()}
    assert "module.mod5.block1.proj_conv.weight" in iabn and "module.mod2.block3.convs.bn3.running_var" in iabn
    iabn["module.classifier.fc.weight"] = torch.randn(1000, 2048)
    iabn["module.classifier.fc.bias"] = torch.randn(1000)
    path = tmp_path / "resnet50_iabn_sync.pth.tar"
    torch.save({"state_dict": iabn}, path)

    converted = convert_iabn_checkpoint(path)
    assert converted.keys() == reference.keys()
    assert all(torch.equal(converted[k], reference[k]) for k in reference)

    target = build_backbone("resnet50")
    load_backbone_weights(target, str(path))  # auto-detects the IABN layout
    loaded = target.state_dict()
    assert all(torch.equal(loaded[k], reference[k]) for k in reference)


def test_convert_iabn_rejects_unknown_layout(tmp_path):
    path = tmp_path / "odd.pth.tar"
    bad = {"module.mod1.conv1.weight": torch.zeros(1), "module.mod7.x.weight": torch.zeros(1)}
    torch.save({"state_dict": bad}, path)
    with pytest.raises(UserError, match="mod7"):
        convert_iabn_checkpoint(path)
    other = tmp_path / "tv.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, other)
    with pytest.raises(UserError, match="InPlace-ABN layout"):
        convert_iabn_checkpoint(other)


def test_load_torchvision_format_file_drops_fc(tmp_path):
    source = build_backbone("small")
    state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in source.state_dict().items()}
    state["fc.weight"] = torch.randn(10, 128)
    state["fc.bias"] = torch.randn(10)
    path = tmp_path / "small.pth"
    torch.save(state, path)
    target = build_backbone("small")
    load_backbone_weights(target, str(path))
    assert all(torch.equal(target.state_dict()[k], state[k]) for k in target.state_dict())
    load_backbone_weights(target, None)
    load_backbone_weights(target, "none")


def test_load_weights_user_errors(tmp_path):
    body = build_backbone("small")
    with pytest.raises(UserError, match="not found"):
        load_backbone_weights(body, str(tmp_path / "missing.pth"))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="weights-only"):
        load_backbone_weights(body, str(garbage))
    not_dict = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], not_dict)
    with pytest.raises(UserError, match="expected a state dict"):
        load_backbone_weights(body, str(not_dict))
    wrong = tmp_path / "wrong.pth"
    state = dict(body.state_dict())
    del state["layer4.0.conv1.weight"]
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, wrong)
    with pytest.raises(UserError, match=r"1 missing keys .*layer4\.0\.conv1\.weight.*1 unexpected keys"):
        load_backbone_weights(body, str(wrong))
    wide = tmp_path / "wide.pth"
    torch.save(build_backbone("small", small_width=8).state_dict(), wide)
    with pytest.raises(UserError, match="wrong shape"):
        load_backbone_weights(body, str(wide))


def test_torchvision_weights_offline_raise_quickly(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(weights_mod, "_online", lambda *a, **k: False)

    def no_download(*args, **kwargs):
        raise AssertionError("must not try to download when offline")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    start = time.perf_counter()
    with pytest.raises(UserError, match="offline"):
        load_backbone_weights(build_backbone("resnet50"), "torchvision")
    assert time.perf_counter() - start < 5
    with pytest.raises(UserError, match="small"):
        load_backbone_weights(build_backbone("small"), "torchvision")


def test_torchvision_weights_read_from_hub_cache(tmp_path, monkeypatch):
    body = build_backbone("small")
    url = "https://download.pytorch.org/models/small-test.pth"
    monkeypatch.setattr(weights_mod, "_hub_weights", lambda arch: SimpleNamespace(url=url))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(weights_mod, "_online", lambda *a, **k: pytest.fail("cache hit must not touch the network"))
    state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in body.state_dict().items()}
    cache = tmp_path / "hub" / "checkpoints" / "small-test.pth"
    cache.parent.mkdir(parents=True)
    torch.save(state, cache)
    load_backbone_weights(body, "torchvision")
    assert all(torch.equal(body.state_dict()[k], state[k]) for k in state)


def test_segmenter_rejects_bad_class_counts():
    with pytest.raises(UserError, match="classes_per_step"):
        Segmenter(build_backbone("small"), DeepLabV3Head(128, 16), [4, 0])
