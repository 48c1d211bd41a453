"""Module aliases for names MMF 1.0.0rc10 imports that no longer exist.

rc10 imports transformers 2.x module paths (transformers.modeling_bert ...),
`demjson` (does not build on today's setuptools) and `torchtext` (end of
life, does not load on torch 2). Each alias is created only when the real
name cannot be imported, so an environment that has them is left alone.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import types

# old module path -> new module path (transformers >= 4 layout)
TRANSFORMERS_ALIASES = {
    "transformers.modeling_bert": "transformers.models.bert.modeling_bert",
    "transformers.configuration_bert": "transformers.models.bert.configuration_bert",
    "transformers.tokenization_bert": "transformers.models.bert.tokenization_bert",
    "transformers.modeling_auto": "transformers.models.auto.modeling_auto",
    "transformers.configuration_auto": "transformers.models.auto.configuration_auto",
    "transformers.tokenization_auto": "transformers.models.auto.tokenization_auto",
}


def _bert_extras():
    import torch

    # BertLayerNorm was an alias of torch's LayerNorm in transformers 2.x
    return {"BertLayerNorm": torch.nn.LayerNorm}


EXTRAS = {
    "transformers.modeling_bert": _bert_extras,
}


def _make_alias(name: str, target_name: str, extras) -> types.ModuleType:
    target = importlib.import_module(target_name)
    alias = types.ModuleType(name, f"rc10 alias of {target_name} (mmf_fashion.bridge)")
    extra_attrs = extras() if extras else {}
    alias.__dict__.update(extra_attrs)

    def __getattr__(attr):
        return getattr(target, attr)

    alias.__getattr__ = __getattr__
    alias.__mmf_fashion_alias_of__ = target_name
    return alias


def _torchtext_stub() -> dict:
    """The few names rc10's utils/vocab.py reads from torchtext."""
    vocab = types.ModuleType("torchtext.vocab", "stub: torchtext is end of life (mmf_fashion.bridge)")

    def _unavailable(*args, **kwargs):
        raise RuntimeError(
            "torchtext pretrained vectors are not available on torch 2.x; "
            "mmf_fashion models use transformers tokenizers instead."
        )

    vocab.pretrained_aliases = {}
    vocab.Vectors = _unavailable
    vocab.GloVe = _unavailable
    vocab.FastText = _unavailable
    vocab.Vocab = _unavailable
    root = types.ModuleType("torchtext", "stub: torchtext is end of life (mmf_fashion.bridge)")
    root.vocab = vocab
    root.__path__ = []
    # pytorch-lightning 1.6 (imported by MMF main) reads torchtext's version to
    # decide whether torchtext.legacy exists; the stub has no legacy API, and
    # 0.18 is the last torchtext release (no legacy since 0.12)
    root.__version__ = "0.18.0"
    return {"torchtext": root, "torchtext.vocab": vocab}


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, factory):
        self._factory = factory

    def create_module(self, spec):
        return self._factory()

    def exec_module(self, module):
        return None


def _really_exists(name: str) -> bool:
    """True when the module can be found on disk (the alias is then not needed)."""
    parent_name, _, _ = name.rpartition(".")
    if parent_name:
        parent = importlib.import_module(parent_name)
        path = getattr(parent, "__path__", None)
        if path is None:
            return False
        return importlib.machinery.PathFinder.find_spec(name, path) is not None
    return importlib.machinery.PathFinder.find_spec(name) is not None


_TORCHTEXT_STUBS: dict = {}


class LegacyAliasFinder(importlib.abc.MetaPathFinder):
    """Serves the aliases above when the real module is absent."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname in TRANSFORMERS_ALIASES:
            if _really_exists(fullname):
                return None
            target_name = TRANSFORMERS_ALIASES[fullname]
            factory = lambda: _make_alias(fullname, target_name, EXTRAS.get(fullname))  # noqa: E731
            return importlib.machinery.ModuleSpec(fullname, _AliasLoader(factory))
        if fullname == "demjson" and not _really_exists("demjson"):
            return importlib.machinery.ModuleSpec(fullname, _AliasLoader(lambda: importlib.import_module("demjson3")))
        if fullname == "torchtext" and not _really_exists("torchtext"):
            _TORCHTEXT_STUBS.update(_torchtext_stub())
            return importlib.machinery.ModuleSpec(fullname, _AliasLoader(lambda: _TORCHTEXT_STUBS["torchtext"]))
        if fullname == "torchtext.vocab" and "torchtext.vocab" in _TORCHTEXT_STUBS:
            return importlib.machinery.ModuleSpec(fullname, _AliasLoader(lambda: _TORCHTEXT_STUBS["torchtext.vocab"]))
        return None
