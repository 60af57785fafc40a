"""Backbones: torchvision parameter counts, state-dict key names and shapes, weight loading, endpoints."""
import pytest
import torch

from transpose.models.backbones import (EfficientNet, GoogLeNet, build_backbone, count_parameters,
                                        efficientnet_b0, googlenet, load_backbone_weights, resnet34)


@pytest.fixture(scope="module")
def nets():
    torch.manual_seed(0)
    return {"resnet34": resnet34(), "efficientnet_b0": efficientnet_b0(),
            "googlenet": googlenet(aux_logits=False), "googlenet_aux": googlenet(aux_logits=True)}


def test_parameter_counts_match_torchvision(nets):
    assert count_parameters(nets["resnet34"]) == 21_797_672
    assert count_parameters(nets["efficientnet_b0"]) == 5_288_548
    assert count_parameters(nets["googlenet"]) == 6_624_904
    assert count_parameters(nets["googlenet_aux"]) == 13_004_888


# (key, shape) pairs as in torchvision's state dicts
RESNET34_KEYS = {
    "conv1.weight": (64, 3, 7, 7), "bn1.running_mean": (64,), "bn1.num_batches_tracked": (),
    "layer1.0.conv1.weight": (64, 64, 3, 3), "layer1.2.bn2.bias": (64,),
    "layer2.0.conv1.weight": (128, 64, 3, 3), "layer2.0.downsample.0.weight": (128, 64, 1, 1),
    "layer2.0.downsample.1.running_var": (128,), "layer2.3.conv2.weight": (128, 128, 3, 3),
    "layer3.5.bn1.weight": (256,), "layer4.0.downsample.0.weight": (512, 256, 1, 1),
    "layer4.2.bn2.running_var": (512,), "fc.weight": (1000, 512), "fc.bias": (1000,),
}
EFFICIENTNET_B0_KEYS = {
    "features.0.0.weight": (32, 3, 3, 3), "features.0.1.running_var": (32,),
    "features.1.0.block.0.0.weight": (32, 1, 3, 3), "features.1.0.block.1.fc1.weight": (8, 32, 1, 1),
    "features.1.0.block.1.fc2.bias": (32,), "features.1.0.block.2.0.weight": (16, 32, 1, 1),
    "features.2.0.block.0.0.weight": (96, 16, 1, 1), "features.2.0.block.1.0.weight": (96, 1, 3, 3),
    "features.2.0.block.2.fc1.weight": (4, 96, 1, 1), "features.2.1.block.3.1.running_mean": (24,),
    "features.3.0.block.1.0.weight": (144, 1, 5, 5), "features.5.2.block.3.0.weight": (112, 672, 1, 1),
    "features.6.3.block.2.fc2.weight": (1152, 48, 1, 1), "features.7.0.block.3.0.weight": (320, 1152, 1, 1),
    "features.8.0.weight": (1280, 320, 1, 1), "features.8.1.bias": (1280,), "classifier.1.weight": (1000, 1280),
}
GOOGLENET_KEYS = {
    "conv1.conv.weight": (64, 3, 7, 7), "conv1.bn.running_var": (64,), "conv3.conv.weight": (192, 64, 3, 3),
    "inception3a.branch1.conv.weight": (64, 192, 1, 1), "inception3b.branch3.1.conv.weight": (96, 32, 3, 3),
    "inception4a.branch2.1.conv.weight": (208, 96, 3, 3), "inception4e.branch4.1.bn.bias": (128,),
    "inception5b.branch3.1.conv.weight": (128, 48, 3, 3), "inception5b.branch1.bn.num_batches_tracked": (),
    "fc.weight": (1000, 1024),
}
GOOGLENET_AUX_KEYS = {
    "aux1.conv.conv.weight": (128, 512, 1, 1), "aux1.conv.bn.running_mean": (128,), "aux1.fc1.weight": (1024, 2048),
    "aux1.fc2.weight": (1000, 1024), "aux2.conv.conv.weight": (128, 528, 1, 1), "aux2.fc2.bias": (1000,),
}


@pytest.mark.parametrize("name,keys", [("resnet34", RESNET34_KEYS), ("efficientnet_b0", EFFICIENTNET_B0_KEYS),
                                       ("googlenet", GOOGLENET_KEYS), ("googlenet_aux", {**GOOGLENET_KEYS, **GOOGLENET_AUX_KEYS})])
def test_state_dict_key_names_and_shapes(nets, name, keys):
    state = nets[name].state_dict()
    for key, shape in keys.items():
        assert key in state, f"{name} lacks {key}"
        assert tuple(state[key].shape) == shape, key
    if name == "googlenet":
        assert not any(k.startswith("aux") for k in state)


def test_load_backbone_weights_roundtrip_and_errors(tmp_path):
    torch.manual_seed(0)
    source = EfficientNet(width_mult=0.25, depth_mult=0.34, num_classes=10)
    path = tmp_path / "effnet.pth"
    # a checkpoint dict with a DataParallel prefix is accepted
    torch.save({"state_dict": {"module." + k: v for k, v in source.state_dict().items()}}, path)
    torch.manual_seed(1)
    target = EfficientNet(width_mult=0.25, depth_mult=0.34, num_classes=10)
    assert not torch.equal(target.features[0][0].weight, source.features[0][0].weight)
    missing, unexpected = load_backbone_weights(target, str(path))
    assert missing == [] and unexpected == []
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key
    # another classifier size: strict loading names the file and the mismatched keys ...
    other = EfficientNet(width_mult=0.25, depth_mult=0.34, num_classes=7)
    with pytest.raises(ValueError, match=r"effnet\.pth does not match EfficientNet: 2 with wrong shape "
                                         r"\(first: classifier\.1\.weight \(10, 320\) vs \(7, 320\)"):
        load_backbone_weights(other, str(path))
    # ... and ignoring the classifier loads the rest
    load_backbone_weights(other, str(path), ignore_prefixes=("classifier.",))
    assert torch.equal(other.features[8][0].weight, source.features[8][0].weight)
    with pytest.raises(ValueError, match=r"does not match ResNet: .*missing \(first: conv1\.weight.*"
                                         r"unexpected \(first: features\.0\.0\.weight"):
        load_backbone_weights(resnet34(width=4), str(path))
    with pytest.raises(ValueError, match="not found: .*nope.pth"):
        load_backbone_weights(other, str(tmp_path / "nope.pth"))
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read backbone weights .*bad.pth"):
        load_backbone_weights(other, str(bad))


def test_efficientnet_endpoints(nets):
    net = nets["efficientnet_b0"].eval()
    assert net.reduction_channels["reduction_3"] == 40 and net.reduction_strides["reduction_3"] == 8
    assert net.reduction_channels["reduction_4"] == 112 and net.reduction_strides["reduction_4"] == 16
    x = torch.randn(1, 3, 32, 64)
    with torch.no_grad():
        ends = net.extract_endpoints(x)
        logits = net(x)
    assert ends["reduction_1"].shape == (1, 16, 16, 32)
    assert ends["reduction_2"].shape == (1, 24, 8, 16)
    assert ends["reduction_3"].shape == (1, 40, 4, 8)
    assert ends["reduction_4"].shape == (1, 112, 2, 4)
    assert ends["reduction_5"].shape == (1, 320, 1, 2)
    assert ends["pooled"].shape == (1, 1280)
    assert torch.allclose(ends["pooled"], ends["head"].mean((2, 3)), atol=1e-6)
    assert torch.allclose(logits, net.classifier(ends["pooled"]), atol=1e-5)
    # an early stop returns exactly what was asked for, with the same values
    with torch.no_grad():
        part = net.extract_endpoints(x, ["reduction_3"])
    assert list(part) == ["reduction_3"] and torch.equal(part["reduction_3"], ends["reduction_3"])
    with pytest.raises(ValueError, match="unknown endpoint"):
        net.extract_endpoints(x, ["reduction_9"])
    tiny = EfficientNet(width_mult=0.25, depth_mult=0.34, num_classes=10)
    assert count_parameters(tiny) < 250_000
    assert tiny.extract_endpoints(torch.randn(2, 3, 32, 32), ["reduction_4"])["reduction_4"].shape[-2:] == (2, 2)


def test_googlenet_and_resnet_outputs(nets):
    x = torch.randn(2, 3, 64, 64)
    net = nets["googlenet_aux"].train()
    logits, aux2, aux1 = net(x)
    assert logits.shape == aux1.shape == aux2.shape == (2, 1000)
    net.eval()
    with torch.no_grad():
        assert net(x).shape == (2, 1000)
        feats = net.forward_features(x)
    assert set(feats) == {"pooled"} and feats["pooled"].shape == (2, 1024)
    # transform_input maps ImageNet-normalized input to [-1, 1] scaling: 0 -> (mean - 0.5) / 0.5
    g = GoogLeNet(aux_logits=False, transform_input=True)
    mapped = g._transform_input(torch.zeros(1, 3, 1, 1)).flatten()
    assert torch.allclose(mapped, (torch.tensor([0.485, 0.456, 0.406]) - 0.5) / 0.5)
    r = nets["resnet34"].eval()
    with torch.no_grad():
        f = r.forward_features(x)
    assert f["layer4"].shape == (2, 512, 2, 2) and f["pooled"].shape == (2, 512)
    assert isinstance(build_backbone("efficientnet_b0", width_mult=0.25), EfficientNet)
    with pytest.raises(ValueError, match="unknown backbone 'vgg'"):
        build_backbone("vgg")
