"""FashionViL in plain torch (no MMF): encoder, heads, pretraining tasks, network.

Cheatsheet::

    from mmf_fashion.modules.fashionvil import FashionViLNetwork
    net = FashionViLNetwork({"head": "contrastive", "image_encoder": {"name": "resnet18"},
                             "text_encoder": {"name": "tiny", "hidden_size": 64}})
    output = net(batch)     # {"losses": {...}, "image_embedding": ..., "text_embedding": ...}

The MMF model `fashionvil` (mmf_fashion/models/fashionvil.py) is the same
network behind MMF's BaseModel.
"""

from mmf_fashion.modules.fashionvil.network import HEADS, FashionViLMethods, FashionViLNetwork

__all__ = ["HEADS", "FashionViLMethods", "FashionViLNetwork"]
