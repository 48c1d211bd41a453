"""Safe checkpoints: atomic writes, weights-only loading, full training state.

Cheatsheet::

    atomic_torch_save(obj, path)           # temp file + fsync + rename
    state = safe_torch_load(path)          # weights only; UnsafeCheckpointError otherwise
    state = safe_torch_load(path, allow_unsafe=unsafe_load_allowed(config))
    with unsafe_loading(True): build(...)  # nested loads of one build follow one decision
    rng = capture_rng(); restore_rng(rng)

Every torch file written by someone else (checkpoints, pretrained weights,
caches, index embeddings) is read by safe_torch_load and nothing else: a
pickle can run any code while it loads, so only tensors and plain
containers are accepted unless the user opts in, with the config option
`checkpoint.allow_unsafe_load=True` (mmf_run) or `--allow-unsafe-load`
(mmf-fashion commands).

A checkpoint holds everything an exact resume needs: model (with buffers such
as COTS queues), optimizer, scheduler, grad scaler, RNG states (python, numpy,
torch, cuda), the counters and the data position. It is written only from a
finite model, and only through a rename, so a kill during a save leaves the
previous checkpoint intact.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import pickle
import random
import sys
import tempfile
import warnings
import zipfile
from typing import Any, Dict, Iterable, Iterator, Optional, Tuple

import numpy as np
import torch

from mmf_fashion.modules.state_dicts import strip_prefix

OPT_IN_CONFIG = "checkpoint.allow_unsafe_load=True"
OPT_IN_FLAG = "--allow-unsafe-load"


class UnsafeCheckpointError(RuntimeError):
    """A file that needs arbitrary unpickling, refused because nobody opted in."""


def atomic_torch_save(obj: Any, path: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, tmp_path = tempfile.mkstemp(prefix=".tmp-", suffix=".ckpt", dir=directory)
    try:
        with os.fdopen(handle, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise


def _refused_as_not_weights_only(error: BaseException) -> bool:
    # torch's weights-only unpickler reports every forbidden global/instruction
    # as an UnpicklingError that mentions weights_only; anything else is a broken file
    text = str(error).lower()
    return isinstance(error, pickle.UnpicklingError) and ("weights only" in text or "weights_only" in text)


def _looks_like_torch_file(path: str) -> bool:
    # torch.save writes a zip archive, or (legacy) a pickle that opens with PROTO;
    # anything else the weights-only unpickler rejects is a broken file, not a risky one
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as handle:
        return handle.read(1) == b"\x80"


def _refusal_reason(error: BaseException) -> str:
    # torch's message is long advice; keep only what it refused (e.g. "Unsupported global: ...")
    text = str(error)
    marker = "WeightsUnpickler error:"
    if marker in text:
        lines = [line.strip() for line in text.split(marker, 1)[1].splitlines() if line.strip()]
        if lines:
            return lines[0].split(" Please use", 1)[0][:200]
    return "not a weights-only file"


def safe_torch_load(path: str, allow_unsafe: bool = False, map_location="cpu") -> Any:
    """Read a torch file weights-only: the one way this package reads a torch file.

    A file that needs arbitrary unpickling raises UnsafeCheckpointError
    (naming the file and the opt-in) unless allow_unsafe is True: the caller's
    explicit opt-in, which must come from the user (see unsafe_load_allowed).
    A missing file raises FileNotFoundError, an unreadable one ValueError,
    both naming the file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    # the second pass, a full unpickling, happens only when refused and opted in
    for weights_only in (True, False):
        try:
            return torch.load(path, map_location=map_location, weights_only=weights_only)
        except Exception as error:  # noqa: BLE001 - sorted below into refused / unreadable
            if not weights_only or not _refused_as_not_weights_only(error) or not _looks_like_torch_file(path):
                raise ValueError(f"{path}: not a readable torch file ({type(error).__name__}: {error})") from error
            if not allow_unsafe:
                raise UnsafeCheckpointError(
                    f"{path} holds objects that only a full unpickling can rebuild, and unpickling "
                    f"can run any code the file's author chose ({_refusal_reason(error)}). It was not "
                    f"loaded. If you trust where it comes from, opt in with the config option "
                    f"{OPT_IN_CONFIG} (mmf_run) or the command-line flag {OPT_IN_FLAG} (mmf-fashion commands)."
                ) from error
            warnings.warn(f"{path}: loading with full unpickling ({OPT_IN_CONFIG} / {OPT_IN_FLAG} given)")
    raise AssertionError("unreachable: the full unpickling returned or raised")


# The decision of the code that builds a model (its --allow-unsafe-load or its
# config), seen by the loaders that run inside that build (tokenizers, encoders).
_UNSAFE_LOADING: contextvars.ContextVar[Optional[bool]] = contextvars.ContextVar(
    "mmf_fashion_unsafe_loading", default=None
)


@contextlib.contextmanager
def unsafe_loading(allowed: bool) -> Iterator[None]:
    """Within the block, unsafe_load_allowed() returns `allowed`."""
    token = _UNSAFE_LOADING.set(bool(allowed))
    try:
        yield
    finally:
        _UNSAFE_LOADING.reset(token)


def _is_true(value: Any) -> bool:
    # an explicit yes only: a truthy string such as "false" must not opt in
    if isinstance(value, str):
        return value.strip().lower() == "true"
    return value is True


def unsafe_load_allowed(config: Any = None) -> bool:
    """Whether the user opted in to full unpickling.

    config: a config holding checkpoint.allow_unsafe_load. Without one: the
    enclosing unsafe_loading() block if any, else the config mmf_run registered
    in MMF's registry, else False.
    """
    if config is None:
        decided = _UNSAFE_LOADING.get()
        if decided is not None:
            return decided
        registry_module = sys.modules.get("mmf.common.registry")
        if registry_module is None:
            return False
        config = registry_module.registry.get("config", no_warning=True)
        if config is None:
            return False
    section = config.get("checkpoint", None) if hasattr(config, "get") else None
    value = section.get("allow_unsafe_load", False) if hasattr(section, "get") else False
    return _is_true(value)


def capture_rng() -> Dict[str, Any]:
    numpy_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "algorithm": numpy_state[0],
            "keys": torch.from_numpy(numpy_state[1].astype(np.int64)),
            "pos": int(numpy_state[2]),
            "has_gauss": int(numpy_state[3]),
            "cached_gaussian": float(numpy_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Dict[str, Any]) -> None:
    random.setstate(_to_tuple(state["python"]))
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["algorithm"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_tuple(value):
    if isinstance(value, list):
        return tuple(_to_tuple(v) for v in value)
    if isinstance(value, tuple):
        return tuple(_to_tuple(v) for v in value)
    return value


def non_finite_parameters(named_tensors: Iterable[Tuple[str, torch.Tensor]]) -> list:
    bad = []
    for name, tensor in named_tensors:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad.append(name)
    return bad


def load_model_state(
    model: torch.nn.Module, state_dict: Dict[str, torch.Tensor], strict: bool, source: str, what: str = "the model"
) -> Tuple[list, list]:
    """Load weights; when they do not fit `what` (e.g. "model 'align'"), say exactly which keys differ."""
    state_dict = strip_prefix(state_dict)  # DistributedDataParallel's "module."
    # a model that knows an older layout of its own weights names it (and the option) first
    check_layout = getattr(model, "check_state_dict_layout", None)
    if callable(check_layout):
        check_layout(state_dict)
    own = model.state_dict()
    missing = sorted(k for k in own if k not in state_dict)
    unexpected = sorted(k for k in state_dict if k not in own)
    mismatched = sorted(
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state_dict and hasattr(state_dict[k], "shape") and tuple(state_dict[k].shape) != tuple(own[k].shape)
    )
    if mismatched or (strict and (missing or unexpected)):
        raise ValueError(
            f"Checkpoint {source} does not fit {what}.\n"
            f"  missing keys ({len(missing)}): {missing[:20]}\n"
            f"  unexpected keys ({len(unexpected)}): {unexpected[:20]}\n"
            f"  shape mismatches ({len(mismatched)}): {mismatched[:20]}"
        )
    model.load_state_dict({k: v for k, v in state_dict.items() if k in own}, strict=False)
    return missing, unexpected


def apply_state_mapping(state_dict: Dict[str, torch.Tensor], mapping: Dict[str, str]) -> Dict[str, torch.Tensor]:
    """MMF's pretrained_state_mapping: {own_prefix: checkpoint_prefix}."""
    state_dict = strip_prefix(state_dict)  # DistributedDataParallel's "module."
    if not mapping:
        return state_dict
    mapped = {}
    for own_prefix, ckpt_prefix in mapping.items():
        for key, value in state_dict.items():
            if key == ckpt_prefix or key.startswith(ckpt_prefix + "."):
                mapped[own_prefix + key[len(ckpt_prefix) :]] = value
    return mapped
