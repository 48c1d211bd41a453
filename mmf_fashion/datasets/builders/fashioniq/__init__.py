"""FashionIQ builder (`fashioniq`) for text-guided image retrieval; see dataset.py."""

from mmf_fashion.datasets.builders.fashioniq.builder import FashionIQBuilder  # noqa: F401
