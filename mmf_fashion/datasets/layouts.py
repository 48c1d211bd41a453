"""Data sets that users hold in one of two layouts: find which one is there.

Cheatsheet::

    from mmf_fashion.datasets.layouts import Layout, LayoutChoice, choose_layout

    choice = LayoutChoice(
        dataset="fashiongen (val)", flag="dataset_config.fashiongen.format", requested="auto",
        layouts=[Layout("json", "FashionViL's product JSON", "fashiongen/val_info.json"),
                 Layout("h5", "the published HDF5", "fashiongen/fashiongen_256_256_validation.h5")])
    layout, message = choose_layout(choice, data_dir)   # message: what to log ("" = nothing)

``requested: auto`` takes the layout whose file is there; when several are,
the first in ``layouts`` (the documented preference) and the message says
which one was taken and how to pick the other. None there: a
FileNotFoundError naming every layout's files and the folder looked in.
An explicit layout must be there; when it is not, the error says which other
layout is. Nothing here imports MMF.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import List, Sequence, Tuple

from mmf_fashion.datasets.common import resolve_data_path

AUTO = "auto"


@dataclass(frozen=True)
class Layout:
    name: str  # the value of the format option, e.g. "h5"
    title: str  # how messages name it, e.g. "the published HDF5"
    path: str  # the file that marks it, relative to data_dir
    needs: str = ""  # what else it needs besides that file (said in the not-found error)


@dataclass
class LayoutChoice:
    dataset: str  # how messages name the data set and split, e.g. "fashiongen (val)"
    flag: str  # the option that picks a layout, e.g. "dataset_config.fashiongen.format"
    requested: str  # auto or one of the layout names
    layouts: List[Layout] = field(default_factory=list)  # order = preference under auto

    @property
    def names(self) -> List[str]:
        return [layout.name for layout in self.layouts]


def synth_hint(data_dir: str) -> str:
    return (
        f"Generate the synthetic fashion data with `mmf-fashion data synth --out {data_dir}` "
        "(or run `make demo`, which generates it when missing), or point env.data_dir "
        "(or MMF_FASHION_DATA_DIR) at the directory that holds the real files "
        "(see docs/ARCHITECTURE.md, 'The data directory')."
    )


def _listing(paths: Sequence[str]) -> Tuple[str, List[str]]:
    """(the folder the paths share, each path relative to it)."""
    folder = os.path.commonpath([os.path.dirname(p) for p in paths]) if paths else ""
    return folder, [os.path.relpath(p, folder) for p in paths]


def choose_layout(choice: LayoutChoice, data_dir: str, *, allow_outside_root: bool = False) -> Tuple[Layout, str]:
    """(the layout to read, a message for the log or ""); see the module doc."""
    requested = str(choice.requested or AUTO)
    if requested != AUTO and requested not in choice.names:
        raise ValueError(f"{choice.flag} must be one of {[AUTO] + choice.names}, got '{requested}'")
    data_dir = os.path.abspath(data_dir)
    # config paths are checked like data paths (absolute / '..' refused)
    paths = [
        resolve_data_path(
            data_dir,
            layout.path,
            file=choice.flag.rsplit(".", 1)[0],
            record="files",
            field="files",
            allow_outside_root=allow_outside_root,
        )
        for layout in choice.layouts
    ]
    present = [layout for layout, path in zip(choice.layouts, paths) if os.path.isfile(path)]
    folder, names = _listing(paths)
    described = "\n".join(
        f"  - {layout.name}: {layout.title}: {name}" + (f" ({layout.needs})" if layout.needs else "")
        for layout, name in zip(choice.layouts, names)
    )

    if requested != AUTO:
        layout = choice.layouts[choice.names.index(requested)]
        if layout in present:
            return layout, ""
        path = paths[choice.names.index(requested)]
        others = [other.name for other in present]
        way_out = (
            f"The {others[0]} layout is there: set {choice.flag}=auto (the default) or {choice.flag}={others[0]}."
            if others
            else f"No other layout is there either; {choice.flag}=auto (the default) reads whichever of "
            f"{' or '.join(choice.names)} is there. " + synth_hint(data_dir)
        )
        raise FileNotFoundError(f"{choice.dataset}: {choice.flag}={requested} but {path} does not exist. {way_out}")

    if not present:
        raise FileNotFoundError(
            f"{choice.dataset}: data not found: looked in {folder}{os.sep} for either layout:\n{described}\n"
            f"Put the files of one of them there ({choice.flag}=auto, the default, reads whichever is there). "
            + synth_hint(data_dir)
        )
    layout = present[0]
    name = names[choice.names.index(layout.name)]
    if len(present) == 1:
        return (
            layout,
            f"{choice.dataset}: reading the {layout.name} layout ({layout.title}: {os.path.join(folder, name)})",
        )
    others = ", ".join(f"{other.name} ({names[choice.names.index(other.name)]})" for other in present[1:])
    return layout, (
        f"{choice.dataset}: both layouts are in {folder}{os.sep}: {layout.name} ({name}) and {others}; "
        f"reading {layout.name} ({layout.title}), the preferred one. "
        f"To read the other: {choice.flag}={present[1].name}"
    )


__all__ = ["AUTO", "Layout", "LayoutChoice", "choose_layout", "synth_hint"]
