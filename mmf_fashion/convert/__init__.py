"""Converters from other projects' released checkpoints to this package's layouts (plain torch).

Cheatsheet::

    from mmf_fashion.convert import fashionvil
    weights, report = fashionvil.convert(official_state_dict)
    print("\n".join(report.lines()))

    from mmf_fashion.convert import xvlm                # official X-VLM (Swin-B + BERT-base)
    weights, report = xvlm.convert(official_state_dict)
"""
