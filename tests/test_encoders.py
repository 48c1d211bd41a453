"""build_image_encoder cuts every supported torchvision family right before pooling.

One model per family: the trunk returns (B, C, h, w) with C == out_channels
== the width the family's own classifier reads, and its global average is
what torchvision's own graph feeds to the classifier (found independently
with torchvision.models.feature_extraction).
"""

import pytest
import torch
import torchvision
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

from mmf_fashion.modules.encoders import build_image_encoder, supported_image_families

# name -> (channels of the last feature map, image size the test feeds)
FAMILIES = {
    "resnet18": (512, 64),
    "mobilenet_v3_small": (576, 64),
    "efficientnet_b0": (1280, 64),
    "convnext_tiny": (768, 64),
    "regnet_y_400mf": (440, 64),
    "swin_t": (768, 64),  # channels-last inside torchvision
    "vit_b_32": (768, 224),  # fixed image size, 7x7 patches
}


def _classifier_width(model):
    # the first Linear of the classification head reads one vector of C values
    head = [m for name, m in model.named_children() if name in ("fc", "classifier", "head", "heads")][0]
    linears = [
        m for m in ([head] if isinstance(head, torch.nn.Linear) else head.modules()) if isinstance(m, torch.nn.Linear)
    ]
    return linears[0].in_features


def _reference_grid_mean(model, name, images):
    """What torchvision's own forward pools, read from its graph."""
    _, eval_nodes = get_graph_node_names(model)
    if name.startswith("vit_"):
        tokens = create_feature_extractor(model, {"encoder.ln": "tokens"})(images)["tokens"]
        return tokens[:, 1:].mean(1)  # patch tokens, class token left out
    assert "avgpool" in eval_nodes, eval_nodes[-6:]
    return create_feature_extractor(model, {"avgpool": "pooled"})(images)["pooled"].flatten(1)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_trunk_ends_at_the_last_feature_map(name):
    channels, size = FAMILIES[name]
    torch.manual_seed(0)
    encoder = build_image_encoder(name).eval()
    torch.manual_seed(0)
    reference = torchvision.models.get_model(name, weights=None).eval()  # same initial weights
    assert _classifier_width(reference) == channels

    images = torch.randn(2, 3, size, size)
    with torch.no_grad():
        grid = encoder(images)
        expected = _reference_grid_mean(reference, name, images)
    assert encoder.out_channels == channels
    assert grid.dim() == 4 and grid.shape[:2] == (2, channels)
    assert grid.shape[2] >= 1 and grid.shape[3] >= 1
    torch.testing.assert_close(grid.mean((2, 3)), expected, rtol=1e-4, atol=1e-5)
    if name.startswith("vit_"):
        assert tuple(grid.shape[2:]) == (size // 32, size // 32)
        # position embeddings exist for one size only: another size is a clear error
        with pytest.raises(ValueError, match="224x224 images, got \\(64, 64\\)"):
            encoder(torch.zeros(1, 3, 64, 64))


def test_existing_families_keep_their_parameter_names_and_widths():
    # checkpoints and the FashionViL converter name these keys
    assert build_image_encoder("resnet50").out_channels == 2048
    assert "trunk.0.weight" in build_image_encoder("resnet18").state_dict()
    for name, width in (("mobilenet_v3_small", 576), ("efficientnet_b0", 1280)):
        encoder = build_image_encoder(name)
        assert encoder.out_channels == width
        assert "trunk.0.0.weight" in encoder.state_dict()


def test_unknown_family_names_the_supported_ones():
    with pytest.raises(ValueError) as caught:
        build_image_encoder("googlenet")
    message = str(caught.value)
    assert "googlenet" in message and "swin" in message and "resnet" in message
    assert "swin" in supported_image_families()
