"""PAC attribute mining: frequent nouns and adjectives of the product texts.

Cheatsheet::

    from mmf_fashion.data.attributes import mine_attributes, tokenize, pos_tagger
    summary = mine_attributes("data/synthetic", min_count=5)
    # -> writes fashiongen/attributes.json {"attributes": [...], "min_count": 5, ...}
    #    and rewrites "attributes_id" of every entry of fashiongen/*_info.json
    tag = pos_tagger()                     # NLTK's tagger if installed, else ours
    tag(tokenize("Red striped t-shirt."))  # [("red", "JJ"), ("striped", "JJ"), ...]

Command line: ``mmf-fashion data mine-attributes --data-dir DIR [--min-count N]``.

Texts are lower-cased, split into sentences with a regular expression and
tokenised with NLTK's TreebankWordTokenizer (no punkt download needed). The
tagger is NLTK's standard averaged perceptron when its data is installed;
otherwise a PerceptronTagger trained on the small sample shipped in
:mod:`mmf_fashion.data.tagged_sample` (offline, a fraction of a second).
When only the HDF5 files exist, the vocabulary is mined from their names and
descriptions and no per-product ids are written.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Sequence, Tuple, Union

KEPT_TAGS = frozenset({"NN", "NNS", "NNP", "NNPS", "JJ", "JJR", "JJS"})
INFO_FILES = ("train_info.json", "val_info.json", "test_info.json")
HDF5_FILES = ("fashiongen_256_256_train.h5", "fashiongen_256_256_validation.h5")
WORD = re.compile(r"^[a-z][a-z-]*[a-z]$")
SENTENCE_END = re.compile(r"(?<=[.!?;])\s+")
# Words that are nouns or adjectives but never describe a product.
STOP_WORDS = frozenset({"it", "size", "model", "cm", "inch", "inches", "%", "s", "m", "l", "xl"})
TRAINING_ITERATIONS = 8

Tagger = Callable[[Sequence[str]], List[Tuple[str, str]]]


@lru_cache(maxsize=1)
def _tokenizer():
    from nltk.tokenize import TreebankWordTokenizer

    return TreebankWordTokenizer()


def tokenize(text: str) -> List[str]:
    """Lower-cased Treebank tokens, sentence by sentence (so inner full stops split too)."""
    tokens: List[str] = []
    for sentence in SENTENCE_END.split(text.lower().strip()):
        if sentence:
            tokens.extend(_tokenizer().tokenize(sentence))
    return tokens


@lru_cache(maxsize=1)
def _sample_tagger():
    import random

    from nltk.tag.perceptron import PerceptronTagger

    from mmf_fashion.data.tagged_sample import tagged_sentences

    tagger = PerceptronTagger(load=False)
    # NLTK's train() shuffles with the global random module: fix it for reproducible tags.
    state = random.getstate()
    random.seed(0)
    try:
        tagger.train(tagged_sentences(), nr_iter=TRAINING_ITERATIONS)
    finally:
        random.setstate(state)
    return tagger


def pos_tagger(prefer_standard: bool = True) -> Tuple[Tagger, str]:
    """(tag function, name): NLTK's standard tagger when its data is installed, else ours."""
    if prefer_standard:
        import nltk

        try:
            nltk.pos_tag(["red", "dress"])
            return nltk.pos_tag, "nltk averaged_perceptron_tagger"
        except LookupError:
            pass
    return _sample_tagger().tag, "PerceptronTagger trained on mmf_fashion.data.tagged_sample"


def candidate_words(text: str, tag: Tagger) -> List[str]:
    """The nouns and adjectives of a text, in order (repeats kept)."""
    tokens = tokenize(text)
    if not tokens:
        return []
    return [word for word, pos in tag(tokens)
            if pos in KEPT_TAGS and WORD.match(word) and word not in STOP_WORDS]


def build_vocabulary(documents: Iterable[List[str]], min_count: int,
                     max_doc_fraction: float) -> List[str]:
    """Words seen >= min_count times and in at most max_doc_fraction of the documents,
    most frequent first (ties alphabetical)."""
    counts: Counter = Counter()
    document_counts: Counter = Counter()
    total = 0
    for words in documents:
        total += 1
        counts.update(words)
        document_counts.update(set(words))
    limit = max_doc_fraction * total
    kept = [w for w, c in counts.items() if c >= min_count and document_counts[w] <= limit]
    return sorted(kept, key=lambda w: (-counts[w], w))


def _product_text(entry: Dict, source: Path, index: int) -> str:
    title, description = entry.get("title"), entry.get("description")
    if not isinstance(title, str) or not isinstance(description, str):
        raise ValueError(f"{source}: entry {index} (id {entry.get('id')!r}): 'title' and "
                         "'description' must be strings")
    return f"{title}. {description}"


def _hdf5_texts(path: Path) -> List[str]:
    import h5py

    def decode(raw: bytes) -> str:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw.decode("latin-1")

    with h5py.File(path, "r") as handle:
        for field in ("input_name", "input_description"):
            if field not in handle:
                raise ValueError(f"{path}: dataset {field!r} is missing")
        names = handle["input_name"][:].reshape(-1)
        descriptions = handle["input_description"][:].reshape(-1)
    return [f"{decode(bytes(n)).strip()}. {decode(bytes(d)).strip()}"
            for n, d in zip(names, descriptions)]


def _write_json(path: Path, obj, indent=None) -> None:
    path.write_text(json.dumps(obj, indent=indent, ensure_ascii=True) + "\n", encoding="utf-8")


def mine_attributes(data_dir: Union[str, Path], min_count: int = 5,
                    max_doc_fraction: float = 0.8, prefer_standard_tagger: bool = True) -> Dict:
    """Mine the PAC vocabulary of <data_dir>/fashiongen and write attributes.json.

    Returns {"attributes": vocabulary size, "products": products given ids, "tagger": name,
    "files": the JSON files rewritten}.
    """
    if min_count < 1:
        raise ValueError(f"min_count={min_count}: must be at least 1")
    fashiongen = Path(data_dir) / "fashiongen"
    if not fashiongen.is_dir():
        raise FileNotFoundError(f"{fashiongen}: no fashiongen folder to mine")
    tag, tagger_name = pos_tagger(prefer_standard_tagger)
    info_files = [fashiongen / name for name in INFO_FILES if (fashiongen / name).exists()]
    entries_by_file: Dict[Path, List[Dict]] = {}
    words_by_file: Dict[Path, List[List[str]]] = {}
    for path in info_files:
        try:
            entries = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON ({error})") from error
        if not isinstance(entries, list):
            raise ValueError(f"{path}: expected a JSON list of products")
        entries_by_file[path] = entries
        words_by_file[path] = [candidate_words(_product_text(e, path, i), tag)
                               for i, e in enumerate(entries)]
    if info_files:
        documents = [words for per_file in words_by_file.values() for words in per_file]
    else:
        h5_files = [fashiongen / name for name in HDF5_FILES if (fashiongen / name).exists()]
        if not h5_files:
            raise FileNotFoundError(f"{fashiongen}: neither *_info.json nor HDF5 files found")
        documents = [candidate_words(text, tag) for path in h5_files
                     for text in _hdf5_texts(path)]
    vocabulary = build_vocabulary(documents, min_count, max_doc_fraction)
    index = {word: i for i, word in enumerate(vocabulary)}
    _write_json(fashiongen / "attributes.json", {
        "attributes": vocabulary, "min_count": min_count,
        "max_doc_fraction": max_doc_fraction, "tagger": tagger_name}, indent=1)
    products = 0
    for path, entries in entries_by_file.items():
        for entry, words in zip(entries, words_by_file[path]):
            entry["attributes_id"] = sorted({index[w] for w in words if w in index})
            products += 1
        _write_json(path, entries)
    return {"attributes": len(vocabulary), "products": products, "tagger": tagger_name,
            "files": [str(p) for p in info_files]}
