"""The synthetic fashion world: products, views, texts, regions, FashionIQ triplets, outfits.

Cheatsheet::

    from mmf_fashion.data.synth import generate, make_fixture, preset_arguments
    generate("data/synthetic", **preset_arguments("demo"))        # `make demo`'s world
    generate("data/evidence", **preset_arguments("evidence"), noise_fraction=0.2)
    generate("data/synthetic", products=600, image_size=64, seed=0, noise_fraction=0.0)
    data_dir = make_fixture(tmp_path)   # 40 products at 32 px, for tests

Modules: vocab (the fixed vocabulary), world (items and text), shapes + render
(pixels and region boxes), fashioniq (triplets), outfits (Polyvore rules),
writers (published layouts), chance (chance levels), generate (orchestration).
"""

from .generate import GENERATOR_VERSION, PRESETS, generate, make_fixture, preset_arguments

__all__ = ["GENERATOR_VERSION", "PRESETS", "generate", "make_fixture", "preset_arguments"]
