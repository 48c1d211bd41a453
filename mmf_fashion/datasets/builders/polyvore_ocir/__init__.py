"""Polyvore Outfits OCIR builder (`polyvore_ocir`); see dataset.py."""

from mmf_fashion.datasets.builders.polyvore_ocir.builder import PolyvoreOCIRBuilder  # noqa: F401
