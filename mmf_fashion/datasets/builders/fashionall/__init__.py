"""Pretraining union builder (`fashionall`); see dataset.py."""

from mmf_fashion.datasets.builders.fashionall.builder import FashionAllBuilder  # noqa: F401
