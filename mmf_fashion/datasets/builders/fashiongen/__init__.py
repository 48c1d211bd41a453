"""FashionGen builder (`fashiongen`): HDF5 or FashionViL JSON; see dataset.py."""

from mmf_fashion.datasets.builders.fashiongen.builder import FashionGenBuilder  # noqa: F401
