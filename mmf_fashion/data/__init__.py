"""Data tools: the synthetic fashion world, attribute mining, the data checker.

Cheatsheet::

    from mmf_fashion.data.synth import generate, make_fixture
    generate("data/synthetic", products=600, image_size=64, seed=0)
    data_dir = make_fixture(tmp_path)              # tiny world for tests

    from mmf_fashion.data.attributes import mine_attributes
    mine_attributes("data/synthetic", min_count=5)

    from mmf_fashion.data.check import check_data_dir
    report = check_data_dir("data/synthetic")
    print(report.summary()); report.ok

This module stays cheap to import: the submodules load numpy/PIL/h5py/nltk.
"""
