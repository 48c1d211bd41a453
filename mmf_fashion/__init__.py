"""mmf-fashion: fashion vision-and-language models, data and metrics for MMF.

Cheatsheet::

    mmf_run config=projects/fashionvil/configs/itr.yaml model=fashionvil dataset=fashiongen
    mmf-fashion info

Importing this package is cheap on purpose (no torch, no mmf): the start-up
hook (mmf_fashion.bridge.hook) imports it in every interpreter.
"""

__version__ = "0.1.0"
