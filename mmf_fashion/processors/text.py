"""`fashion_text_tokenizer`: BERT WordPiece tokenisation with whole-word MLM masking.

Cheatsheet (dataset YAML)::

    processors:
      text_processor:
        type: fashion_text_tokenizer
        params: {tokenizer: minilm, max_length: 40, mlm_probability: 0.15}

In a dataset::

    out = self.text_processor({"text": "red striped shirt", "mlm": True})
    out["input_ids"], out["attention_mask"], out["token_type_ids"]   # (L,) each
    out["masked_input_ids"], out["mlm_labels"]                        # only with mlm
    phrases = self.text_processor.tokenize_many(["red collar", ""], max_length=12)
    phrases["input_ids"]                                              # (2, 12)

``tokenizer`` is "minilm" (the packaged uncased vocabulary, offline), "tiny"
(the same vocabulary) or a local transformers tokenizer directory.
"""

from __future__ import annotations

from typing import Dict, List, Optional

import torch
from mmf.common.registry import registry
from mmf.datasets.processors.processors import BaseProcessor

from mmf_fashion.modules.encoders import build_tokenizer
from mmf_fashion.processors.masking import whole_word_mask

_TOKENIZERS: Dict[str, object] = {}


def cached_tokenizer(name: str):
    """One tokenizer per name and process (building one reads the vocabulary)."""
    if name not in _TOKENIZERS:
        _TOKENIZERS[name] = build_tokenizer(name)
    return _TOKENIZERS[name]


@registry.register_processor("fashion_text_tokenizer")
class FashionTextTokenizer(BaseProcessor):
    """params: tokenizer (minilm), max_length (40), mlm_probability (0.15)."""

    def __init__(self, config=None, *args, **kwargs):
        config = config or {}
        self.tokenizer_name = str(config.get("tokenizer", "minilm"))
        self.max_length = int(config.get("max_length", 40))
        self.mlm_probability = float(config.get("mlm_probability", 0.15))
        self.tokenizer = cached_tokenizer(self.tokenizer_name)
        self.special_token_ids = list(self.tokenizer.all_special_ids)

    def __call__(self, item, *args, **kwargs):
        text = item["text"]
        max_length = int(item.get("max_length", self.max_length))
        encoding = self.tokenizer(text, max_length=max_length, padding="max_length", truncation=True)
        out = {
            "input_ids": torch.tensor(encoding["input_ids"], dtype=torch.long),
            "attention_mask": torch.tensor(encoding["attention_mask"], dtype=torch.long),
            "token_type_ids": torch.tensor(encoding["token_type_ids"], dtype=torch.long),
        }
        if item.get("mlm", False):
            masked, labels = whole_word_mask(
                out["input_ids"],
                encoding.word_ids(),
                mask_token_id=self.tokenizer.mask_token_id,
                vocab_size=len(self.tokenizer),
                special_token_ids=self.special_token_ids,
                probability=float(item.get("mlm_probability", self.mlm_probability)),
                generator=item.get("generator"),
            )
            out["masked_input_ids"] = masked
            out["mlm_labels"] = labels
        return out

    def tokenize_many(self, texts: List[str], max_length: Optional[int] = None) -> Dict[str, torch.Tensor]:
        """(N, max_length) input_ids / attention_mask / token_type_ids for short phrases."""
        max_length = int(max_length or self.max_length)
        encoding = self.tokenizer(list(texts), max_length=max_length, padding="max_length", truncation=True)
        return {
            key: torch.tensor(encoding[key], dtype=torch.long)
            for key in ("input_ids", "attention_mask", "token_type_ids")
        }
