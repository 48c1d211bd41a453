"""Registered MMF processors for the fashion datasets.

Cheatsheet::

    import mmf_fashion.processors          # registers every name below in MMF
    # fashion_text_tokenizer   processors/text.py     WordPiece + whole-word MLM
    # fashion_image_transform  processors/image.py    torchvision v2, ImageNet norm
    # box_transform            processors/image.py    boxes that follow crops/flips
    # blockwise_patch_mask     processors/sampling.py BEiT blockwise mask
    # multi_view_sampler       processors/sampling.py two views of a product
    # soft_attribute_labels    processors/sampling.py PAC soft targets

The maths lives in masking.py and boxes.py (plain torch, no MMF import).
Like every registering module, import this only after the MMF bridge is
installed (mmf_fashion.plugin does it).
"""

from mmf_fashion.processors import image, sampling, text  # noqa: F401  (registers)

REGISTERED_PROCESSORS = (
    "fashion_text_tokenizer",
    "fashion_image_transform",
    "box_transform",
    "blockwise_patch_mask",
    "multi_view_sampler",
    "soft_attribute_labels",
)
