"""PAC attribute mining: frequent nouns and adjectives of the product texts.

Cheatsheet::

    from mmf_fashion.data.attributes import mine_attributes, tokenize, pos_tagger
    summary = mine_attributes("data/synthetic")              # threshold scaled to the corpus
    summary = mine_attributes("/data/fashion", paper=True)   # the paper: > 100 times, no cap
    # -> writes fashiongen/attributes.json {"attributes": [...], "min_count": n, "tagger": ...}
    #    and rewrites "attributes_id" of every entry of fashiongen/*_info.json
    tag, name = pos_tagger()               # NLTK's tagger if its data is installed, else ours
    tag(tokenize("Red striped t-shirt."))  # [("red", "JJ"), ("striped", "JJ"), ...]

Command line: ``mmf-fashion data mine-attributes --data-dir DIR [--min-count N | --paper]``.

The paper (FashionViL) keeps the nouns and adjectives seen more than 100
times in FashionGen's training texts (260,480 image-text pairs: one text per
image, so a product's text counts once per view) and gets 2,232 attributes.
Here, as there:
- only the train split is mined (train_info.json, else the train HDF5); the
  val / test products get attributes_id from the train vocabulary;
- a text counts once per image (a JSON product weighs its number of images),
  so the JSON and HDF5 layouts give the same counts;
- the default threshold scales with the corpus: "more than 100 per 260,480
  texts", min_count = floor(100 * texts / 260480) + 1, at least 2;
- ``paper=True`` (``--paper``): min_count 101 (more than 100), nouns and
  adjectives only, no document-fraction cap and no stop-word list.
The default also drops words found in more than max_doc_fraction of the
texts (0.8) and a few words that never describe a product (STOP_WORDS).

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
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from mmf_fashion.utils.optional import require

KEPT_TAGS = frozenset({"NN", "NNS", "NNP", "NNPS", "JJ", "JJR", "JJS"})
INFO_FILES = ("train_info.json", "val_info.json", "test_info.json")
TRAIN_INFO, TRAIN_HDF5 = "train_info.json", "fashiongen_256_256_train.h5"
WORD = re.compile(r"^[a-z][a-z-]*[a-z]$")
SENTENCE_END = re.compile(r"(?<=[.!?;])\s+")
# Words that are nouns or adjectives but never describe a product.
STOP_WORDS = frozenset({"it", "size", "model", "cm", "inch", "inches", "%", "s", "m", "l", "xl"})
TRAINING_ITERATIONS = 8
# the paper: "more than 100 times" in FashionGen's 260,480 training texts
PAPER_MORE_THAN = 100
PAPER_MIN_COUNT = PAPER_MORE_THAN + 1
PAPER_TEXTS = 260_480
STANDARD_TAGGER = "nltk averaged_perceptron_tagger"
FALLBACK_TAGGER = "PerceptronTagger trained on mmf_fashion.data.tagged_sample"

Tagger = Callable[[Sequence[str]], List[Tuple[str, str]]]


@lru_cache(maxsize=1)
def _tokenizer():
    return require("nltk.tokenize", "attribute mining").TreebankWordTokenizer()


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

    PerceptronTagger = require("nltk.tag.perceptron", "attribute mining").PerceptronTagger

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
    """(tag function, name): NLTK's standard tagger when its data is installed, else
    the fallback (FALLBACK_TAGGER, trained offline on a small packaged sample)."""
    if prefer_standard:
        nltk = require("nltk", "attribute mining")
        try:
            nltk.pos_tag(["red", "dress"])
            return nltk.pos_tag, STANDARD_TAGGER
        except LookupError:
            pass
    return _sample_tagger().tag, FALLBACK_TAGGER


def scaled_min_count(num_texts: int) -> int:
    """The paper's threshold scaled to a corpus: more than 100 per 260,480 texts, at least 2."""
    return max(2, (PAPER_MORE_THAN * int(num_texts)) // PAPER_TEXTS + 1)


def candidate_words(text: str, tag: Tagger, stop_words: bool = True) -> List[str]:
    """The nouns and adjectives of a text, in order (repeats kept); stop_words drops STOP_WORDS."""
    tokens = tokenize(text)
    if not tokens:
        return []
    return [word for word, pos in tag(tokens)
            if pos in KEPT_TAGS and WORD.match(word) and not (stop_words and word in STOP_WORDS)]


def build_vocabulary(documents: Iterable[List[str]], min_count: int,
                     max_doc_fraction: Optional[float] = None,
                     weights: Optional[Sequence[int]] = None) -> List[str]:
    """Words seen >= min_count times and (unless max_doc_fraction is None) in at most
    max_doc_fraction of the documents, most frequent first (ties alphabetical).

    weights: how many texts each document stands for (a product's number of images)."""
    counts: Counter = Counter()
    document_counts: Counter = Counter()
    total = 0
    for position, words in enumerate(documents):
        weight = int(weights[position]) if weights is not None else 1
        total += weight
        for word, count in Counter(words).items():
            counts[word] += count * weight
            document_counts[word] += weight
    limit = float("inf") if max_doc_fraction is None else max_doc_fraction * total
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


def _image_count(entry: Dict) -> int:
    images = entry.get("images")
    return max(1, len(images)) if isinstance(images, list) else 1


def mine_attributes(data_dir: Union[str, Path], min_count: Optional[int] = None,
                    max_doc_fraction: Optional[float] = 0.8, prefer_standard_tagger: bool = True,
                    paper: bool = False, stop_words: bool = True) -> Dict:
    """Mine the PAC vocabulary from the TRAIN texts of <data_dir>/fashiongen and write
    attributes.json; every *_info.json gets attributes_id from that vocabulary.

    min_count None: scaled_min_count(number of train texts). paper=True: the paper's
    rule (min_count 101, no max_doc_fraction, no stop words); it cannot be combined
    with an explicit min_count.
    Returns {"attributes": vocabulary size, "products": products given ids, "tagger": name,
    "tagger_fallback": whether NLTK's own tagger data was missing, "texts": train texts
    counted, "min_count": the threshold used, "source": file mined, "files": JSON files rewritten}.
    """
    if paper:
        if min_count is not None:
            raise ValueError(f"paper=True sets min_count {PAPER_MIN_COUNT} (more than {PAPER_MORE_THAN}); "
                             f"do not also give min_count={min_count}")
        max_doc_fraction, stop_words = None, False
    if min_count is not None and min_count < 1:
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
        words_by_file[path] = [candidate_words(_product_text(e, path, i), tag, stop_words)
                               for i, e in enumerate(entries)]
    train_info = fashiongen / TRAIN_INFO
    if train_info in entries_by_file:
        source = train_info
        documents = words_by_file[train_info]
        weights = [_image_count(entry) for entry in entries_by_file[train_info]]
    elif info_files:
        raise FileNotFoundError(f"{fashiongen}: {TRAIN_INFO} is missing; the vocabulary is mined "
                                "from the train split only")
    else:
        source = fashiongen / TRAIN_HDF5
        if not source.exists():
            raise FileNotFoundError(f"{fashiongen}: neither {TRAIN_INFO} nor {TRAIN_HDF5} found "
                                    "(the vocabulary is mined from the train split only)")
        documents = [candidate_words(text, tag, stop_words) for text in _hdf5_texts(source)]
        weights = None  # one row per image already
    texts = sum(weights) if weights is not None else len(documents)
    if paper:
        min_count, preset = PAPER_MIN_COUNT, "paper"
    elif min_count is None:
        min_count, preset = scaled_min_count(texts), "scaled"
    else:
        preset = "custom"
    vocabulary = build_vocabulary(documents, min_count, max_doc_fraction, weights)
    index = {word: i for i, word in enumerate(vocabulary)}
    fallback = tagger_name != STANDARD_TAGGER
    _write_json(fashiongen / "attributes.json", {
        "attributes": vocabulary, "min_count": min_count, "max_doc_fraction": max_doc_fraction,
        "stop_words": stop_words, "preset": preset, "split": "train", "source": source.name,
        "texts": texts, "tagger": tagger_name, "tagger_fallback": fallback}, indent=1)
    products = 0
    for path, entries in entries_by_file.items():
        for entry, words in zip(entries, words_by_file[path]):
            entry["attributes_id"] = sorted({index[w] for w in words if w in index})
            products += 1
        _write_json(path, entries)
    return {"attributes": len(vocabulary), "products": products, "tagger": tagger_name,
            "tagger_fallback": fallback, "texts": texts, "min_count": min_count, "preset": preset,
            "source": str(source), "files": [str(p) for p in info_files]}
