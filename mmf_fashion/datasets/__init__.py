"""MMF dataset builders and their shared pieces.

Cheatsheet::

    import mmf_fashion.plugin; mmf_fashion.plugin.register_all()   # registers the builders
    from mmf.common.registry import registry
    builder = registry.get_builder_class("fashiongen")()
    # builders/<name>/{builder.py, dataset.py, defaults.yaml}: fashiongen,
    # fashioniq, polyvore_ocir, fashionall
    from mmf_fashion.datasets.common import BadSampleError, resolve_data_path

common.py imports no MMF; base.py and builders/ do (import them after the
bridge: mmf_fashion.plugin does).
"""
