"""Shared dataset pieces: safe paths, the bad-sample policy, text/image/HDF5 IO.

Cheatsheet::

    from mmf_fashion.datasets.common import (
        BadSampleError, BadSampleCounter, resolve_data_path, read_json,
        decode_text, load_image, LazyH5File)

    path = resolve_data_path(data_dir, "fashiongen/images/train/12_0.jpg",
                             file="train_info.json", record=3, field="images[0]")
    image = load_image(path, file=path, record=3, field="images[0]")   # PIL RGB
    text = decode_text(raw_bytes, file="x.h5", record=7, field="input_name")

    counter = BadSampleCounter("fashiongen/train")
    try: ...
    except BadSampleError as error:
        counter.record(error)           # under on_bad_sample: skip
    print(counter.summary())

    h5 = LazyH5File("fashiongen_256_256_train.h5")   # opened on first read, per process
    h5.read("input_image", 12)                       # one row, never the whole file

Every problem is a BadSampleError whose message names the file, the record
and the field. Nothing here imports MMF.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import unicodedata
from typing import Any, Callable, Dict, List, Optional

import torch

BAD_SAMPLE_POLICIES = ("error", "skip")

# Kinds of bad input; BadSampleCounter keeps one count per kind.
BAD_KINDS = (
    "corrupt_image",
    "missing_image",
    "empty_caption",
    "undecodable_caption",
    "missing_field",
    "box_outside_image",
    "unknown_category",
    "unsafe_path",
    "bad_value",
)


class BadSampleError(ValueError):
    """One bad record: ``file``, ``record`` (index or id), ``field`` and ``kind``."""

    def __init__(self, file: Any, record: Any, field: str, problem: str, kind: str = "bad_value"):
        if kind not in BAD_KINDS:
            raise ValueError(f"unknown bad-sample kind {kind!r}")
        self.file = str(file)
        self.record = record
        self.field = field
        self.problem = problem
        self.kind = kind
        super().__init__(f"{self.file}: record {record}: field '{field}': {problem} [{kind}]")

    def __reduce__(self):
        # Exceptions raised in DataLoader workers are pickled to the main process.
        return (BadSampleError, (self.file, self.record, self.field, self.problem, self.kind))


# ----------------------------------------------------------------------------
# paths


def resolve_data_path(
    root: str,
    path: str,
    *,
    file: Any,
    record: Any,
    field: str,
    allow_outside_root: bool = False,
) -> str:
    """``path`` (relative to ``root``) as an absolute path.

    Absolute paths and paths that leave ``root`` through ``..`` are refused
    unless ``allow_outside_root`` (the dataset option
    ``allow_paths_outside_root: true``).
    """
    if not isinstance(path, str) or not path.strip():
        raise BadSampleError(file, record, field, f"expected a relative path, got {path!r}", "missing_field")
    root = os.path.abspath(root)
    if os.path.isabs(path) or os.path.splitdrive(path)[0]:
        if not allow_outside_root:
            raise BadSampleError(
                file,
                record,
                field,
                f"absolute path '{path}' refused: paths must be relative to the data directory {root} "
                "(set allow_paths_outside_root: true in the dataset config to allow it)",
                "unsafe_path",
            )
        return os.path.normpath(path)
    resolved = os.path.normpath(os.path.join(root, path))
    if not allow_outside_root and os.path.commonpath([root, resolved]) != root:
        raise BadSampleError(
            file,
            record,
            field,
            f"path '{path}' leaves the data directory {root} (through '..'); "
            "set allow_paths_outside_root: true in the dataset config to allow it",
            "unsafe_path",
        )
    return resolved


# ----------------------------------------------------------------------------
# text


class DataDirPaths:
    """data_path() for anything with `data_dir` and `allow_paths_outside_root`
    (the datasets, and readers used without MMF): one place for the escape rules."""

    data_dir: str
    allow_paths_outside_root: bool = False

    def data_path(self, relative: str, *, file: Any, record: Any, field: str, root: str = "") -> str:
        """A path from a data file, relative to data_dir/root, checked for escapes."""
        base = os.path.join(self.data_dir, root) if root else self.data_dir
        resolved = resolve_data_path(
            base, relative, file=file, record=record, field=field, allow_outside_root=self.allow_paths_outside_root
        )
        if not self.allow_paths_outside_root and os.path.commonpath([self.data_dir, resolved]) != self.data_dir:
            raise BadSampleError(
                file, record, field, f"path '{relative}' leaves the data directory {self.data_dir}", "unsafe_path"
            )
        return resolved


def _is_control(character: str) -> bool:
    return unicodedata.category(character) in ("Cc", "Cs") and character not in "\t\n\r"


def decode_text(value: Any, *, file: Any, record: Any, field: str) -> str:
    """Bytes or str -> str. Bytes are UTF-8, falling back to latin-1; text that
    still holds control characters (binary garbage) or a value that is not text
    at all is an ``undecodable_caption``. Trailing NULs (HDF5 padding) go."""
    if hasattr(value, "tolist") and not isinstance(value, (bytes, str)):
        value = value.tolist()
        while isinstance(value, list) and len(value) == 1:
            value = value[0]
    if isinstance(value, bytes):
        raw = value.rstrip(b"\x00")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("latin-1")
    elif isinstance(value, str):
        text = value
        if any("\udc80" <= c <= "\udcff" for c in text):
            # read_json keeps invalid UTF-8 as surrogate escapes: retry as latin-1
            text = text.encode("utf-8", "surrogateescape").decode("latin-1")
    else:
        raise BadSampleError(
            file, record, field, f"expected text, got {type(value).__name__} {value!r}", "undecodable_caption"
        )
    if any(_is_control(c) for c in text):
        shown = text[:40].encode("unicode_escape").decode("ascii")
        raise BadSampleError(
            file, record, field, f"not decodable as UTF-8 or latin-1 text: '{shown}'", "undecodable_caption"
        )
    return text


def require_text(text: str, *, file: Any, record: Any, field: str) -> str:
    """The stripped text, or an ``empty_caption`` error."""
    stripped = " ".join(text.split())
    if not stripped:
        raise BadSampleError(file, record, field, "caption is empty", "empty_caption")
    return stripped


def require_field(entry: Any, key: str, *, file: Any, record: Any, field: Optional[str] = None) -> Any:
    """entry[key] or a ``missing_field`` error."""
    if not isinstance(entry, dict):
        raise BadSampleError(
            file, record, field or key, f"expected a JSON object, got {type(entry).__name__}", "missing_field"
        )
    if key not in entry or entry[key] is None:
        raise BadSampleError(
            file, record, field or key, f"field '{key}' is missing (keys present: {sorted(entry)})", "missing_field"
        )
    return entry[key]


def require_int(value: Any, *, file: Any, record: Any, field: str) -> int:
    if hasattr(value, "item") and getattr(value, "size", 1) == 1 and not isinstance(value, (str, bytes)):
        value = value.item()  # numpy / torch scalars
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise BadSampleError(file, record, field, f"expected an integer, got {value!r}", "bad_value")
    try:
        number = float(value)
    except ValueError:
        raise BadSampleError(file, record, field, f"expected an integer, got {value!r}", "bad_value") from None
    if not math.isfinite(number) or number != int(number):
        raise BadSampleError(file, record, field, f"expected an integer, got {value!r}", "bad_value")
    return int(number)


def read_json(path: str) -> Any:
    """A JSON file; bytes that are not UTF-8 survive as surrogate escapes so that
    decode_text can report (or recover) them per record, not per file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    with open(path, "rb") as handle:
        text = handle.read().decode("utf-8", "surrogateescape")
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON (line {error.lineno}, column {error.colno}: {error.msg})") from None


# ----------------------------------------------------------------------------
# images


def load_image(path: str, *, file: Any, record: Any, field: str, min_side: Optional[int] = None):
    """A PIL RGB image; a missing or unreadable file becomes a BadSampleError.

    min_side: a JPEG is decoded at the smallest DCT scale (1/2, 1/4, 1/8) that
    keeps both sides >= min_side (PIL's draft); other formats are unaffected."""
    from PIL import Image, UnidentifiedImageError

    if not os.path.isfile(path):
        raise BadSampleError(file, record, field, f"image file {path} does not exist", "missing_image")
    try:
        with Image.open(path) as image:
            if min_side:
                image.draft("RGB", (int(min_side), int(min_side)))
            image.load()
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise BadSampleError(
            file, record, field, f"image file {path} cannot be decoded ({error})", "corrupt_image"
        ) from None


def image_from_array(array, *, file: Any, record: Any, field: str):
    """(H, W, 3) uint8 array (an HDF5 row) -> PIL RGB image."""
    import numpy as np
    from PIL import Image

    array = np.asarray(array)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8 or min(array.shape[:2]) == 0:
        raise BadSampleError(
            file, record, field, f"expected a uint8 (H, W, 3) image, got {array.dtype} {array.shape}", "corrupt_image"
        )
    return Image.fromarray(np.ascontiguousarray(array))


# ----------------------------------------------------------------------------
# HDF5


class LazyH5File:
    """A read-only h5py file opened on first use in each process.

    DataLoader workers each get their own handle: the handle is dropped when
    the object is pickled, and re-opened when the process id changed (fork).
    Rows are read one at a time; the file is never loaded whole.
    """

    def __init__(self, path: str):
        self.path = path
        self._handle = None
        self._pid = None
        self._datasets: Dict[str, Any] = {}

    @property
    def handle(self):
        if self._handle is None or self._pid != os.getpid():
            import h5py

            self._handle = h5py.File(self.path, "r")
            self._pid = os.getpid()
            self._datasets = {}
        return self._handle

    def dataset(self, key: str):
        """The h5py Dataset, looked up once per handle (h5py's lookup is slow)."""
        handle = self.handle
        if key not in self._datasets:
            self._datasets[key] = handle[key]
        return self._datasets[key]

    def keys(self) -> List[str]:
        return list(self.handle.keys())

    def shape(self, key: str):
        return self.dataset(key).shape

    def read(self, key: str, index: int):
        return self.dataset(key)[index]

    def read_column(self, key: str):
        """One whole dataset (use only for small columns such as ids and labels)."""
        return self.handle[key][()]

    def close(self) -> None:
        if self._handle is not None and self._pid == os.getpid():
            self._handle.close()
        self._handle = None
        self._pid = None
        self._datasets = {}

    def __getstate__(self):
        return {"path": self.path, "_handle": None, "_pid": None, "_datasets": {}}

    def __setstate__(self, state):
        self.__dict__.update(state)


# ----------------------------------------------------------------------------
# the bad-sample counter


class BadSampleCounter:
    """Counts skipped bad records per kind, across DataLoader workers.

    Counts live in shared memory (inherited by forked workers, shared with
    spawned ones through torch's pickling), so the main process sees what the
    workers skipped. Three tallies: records dropped while loading the index,
    records skipped in the current epoch, and all epochs together; plus the
    first ``max_examples`` messages.
    """

    LOAD, EPOCH, ALL = 0, 1, 2
    _MESSAGE_BYTES = 400

    def __init__(self, name: str, max_examples: int = 10):
        self.name = name
        self.max_examples = max_examples
        self._counts = torch.zeros(3, len(BAD_KINDS), dtype=torch.long).share_memory_()
        self._served = torch.zeros(1, dtype=torch.long).share_memory_()
        self._messages = torch.zeros(max_examples, self._MESSAGE_BYTES, dtype=torch.uint8).share_memory_()
        self._message_count = torch.zeros(1, dtype=torch.long).share_memory_()
        self._seen = None  # per-record flags of this epoch (track_records)
        self._lock = multiprocessing.Lock()

    def track_records(self, count: int) -> None:
        """Count a bad record once per epoch, however often it is tried: a
        record skipped as the stand-in for a bad neighbour is tried again when
        its own index is served. Call before the DataLoader starts its workers."""
        self._seen = torch.zeros(max(int(count), 1), dtype=torch.bool).share_memory_()

    def __getstate__(self):
        state = dict(self.__dict__)
        from multiprocessing import context

        if context.get_spawning_popen() is None:
            state["_lock"] = None  # a plain pickle (not a worker start) gets a fresh lock
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        if self._lock is None:
            self._lock = multiprocessing.Lock()

    def record(self, error: BadSampleError, at_load: bool = False, index: Optional[int] = None) -> None:
        """index: the record's dataset index (with track_records: counted once per epoch)."""
        kind = BAD_KINDS.index(error.kind)
        with self._lock:
            if index is not None and self._seen is not None and not at_load and 0 <= index < len(self._seen):
                if bool(self._seen[index]):
                    return
                self._seen[index] = True
            if at_load:
                self._counts[self.LOAD, kind] += 1
            else:
                self._counts[self.EPOCH, kind] += 1
                self._counts[self.ALL, kind] += 1
            slot = int(self._message_count[0])
            if slot < self.max_examples:
                encoded = str(error).encode("utf-8")[: self._MESSAGE_BYTES]
                self._messages[slot].zero_()
                self._messages[slot, : len(encoded)] = torch.tensor(list(encoded), dtype=torch.uint8)
                self._message_count[0] += 1

    def counts(self, which: str = "all") -> Dict[str, int]:
        """{kind: count} for which = load | epoch | all (all = load + every epoch)."""
        rows = {"load": [self.LOAD], "epoch": [self.EPOCH], "all": [self.LOAD, self.ALL]}[which]
        totals = self._counts[rows].sum(0).tolist()
        return {kind: count for kind, count in zip(BAD_KINDS, totals) if count}

    @property
    def total(self) -> int:
        return sum(self.counts("all").values())

    def examples(self) -> List[str]:
        count = min(int(self._message_count[0]), self.max_examples)
        return [bytes(self._messages[i].tolist()).rstrip(b"\x00").decode("utf-8", "replace") for i in range(count)]

    def summary(self) -> str:
        def describe(counts):
            return ", ".join(f"{count} {kind}" for kind, count in counts.items()) or "none"

        load, epoch, every = self.counts("load"), self.counts("epoch"), self.counts("all")
        lines = [
            f"bad samples in {self.name} (on_bad_sample: skip): {self.total} skipped in all "
            f"({describe(every)}); dropped while loading: {describe(load)}; this epoch: {describe(epoch)}"
        ]
        lines += [f"  e.g. {message}" for message in self.examples()]
        return "\n".join(lines)

    def note_served(self, items_per_epoch: int, log: Callable[[str], None]) -> bool:
        """Count one served item; at the end of each epoch log the summary (when
        anything was skipped) and start the epoch tally afresh. True at an epoch end."""
        with self._lock:
            self._served[0] += 1
            epoch_end = items_per_epoch > 0 and int(self._served[0]) % items_per_epoch == 0
        if epoch_end:
            self.end_epoch(log)
        return epoch_end

    def end_epoch(self, log: Callable[[str], None]) -> None:
        if self.total:
            log(self.summary())
        with self._lock:
            self._counts[self.EPOCH].zero_()
            if self._seen is not None:
                self._seen.zero_()

    def reset(self) -> None:
        with self._lock:
            self._counts.zero_()
            self._served.zero_()
            self._message_count.zero_()
            if self._seen is not None:
                self._seen.zero_()


def check_policy(value: Any, *, dataset: str) -> str:
    policy = str(value or "error")
    if policy not in BAD_SAMPLE_POLICIES:
        raise ValueError(f"dataset_config.{dataset}.on_bad_sample must be one of {BAD_SAMPLE_POLICIES}, got '{policy}'")
    return policy
