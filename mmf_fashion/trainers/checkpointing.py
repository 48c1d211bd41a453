"""Safe checkpoints: atomic writes, weights-only loading, full training state.

Cheatsheet::

    atomic_torch_save(obj, path)           # temp file + fsync + rename
    state = safe_torch_load(path, allow_unsafe=False)
    rng = capture_rng(); restore_rng(rng)

A checkpoint holds everything an exact resume needs: model (with buffers such
as COTS queues), optimizer, scheduler, grad scaler, RNG states (python, numpy,
torch, cuda), the counters and the data position. It is written only from a
finite model, and only through a rename, so a kill during a save leaves the
previous checkpoint intact.
"""
from __future__ import annotations

import os
import pickle
import random
import tempfile
from typing import Any, Dict, Iterable, Tuple

import numpy as np
import torch


class UnsafeCheckpointError(RuntimeError):
    pass


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


def safe_torch_load(path: str, allow_unsafe: bool = False, map_location="cpu") -> Any:
    """torch.load(weights_only=True); refuse anything that needs arbitrary unpickling."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError) as error:
        if "weights_only" not in str(error) and "Unsupported" not in str(error) and not isinstance(error, pickle.UnpicklingError):
            raise
        if not allow_unsafe:
            raise UnsafeCheckpointError(
                f"Checkpoint {path} contains objects that need arbitrary unpickling, "
                "which can execute code. Load it only if you trust its source, with "
                "checkpoint.allow_unsafe_load=True."
            ) from error
        return torch.load(path, map_location=map_location, weights_only=False)


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


def strip_module_prefix(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in state_dict.items()}


def load_model_state(model: torch.nn.Module, state_dict: Dict[str, torch.Tensor], strict: bool, source: str) -> Tuple[list, list]:
    """Load weights; when they do not fit, say exactly which keys differ."""
    state_dict = strip_module_prefix(state_dict)
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
            f"Checkpoint {source} does not fit the model.\n"
            f"  missing keys ({len(missing)}): {missing[:20]}\n"
            f"  unexpected keys ({len(unexpected)}): {unexpected[:20]}\n"
            f"  shape mismatches ({len(mismatched)}): {mismatched[:20]}"
        )
    model.load_state_dict({k: v for k, v in state_dict.items() if k in own}, strict=False)
    return missing, unexpected


def apply_state_mapping(state_dict: Dict[str, torch.Tensor], mapping: Dict[str, str]) -> Dict[str, torch.Tensor]:
    """MMF's pretrained_state_mapping: {own_prefix: checkpoint_prefix}."""
    state_dict = strip_module_prefix(state_dict)
    if not mapping:
        return state_dict
    mapped = {}
    for own_prefix, ckpt_prefix in mapping.items():
        for key, value in state_dict.items():
            if key == ckpt_prefix or key.startswith(ckpt_prefix + "."):
                mapped[own_prefix + key[len(ckpt_prefix) :]] = value
    return mapped
