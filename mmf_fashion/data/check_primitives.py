"""Reusable pieces of the data checker: problems, the report, and single-value checks.

Cheatsheet::

    from mmf_fashion.data.check_primitives import (
        Report, path_problem, image_problem, text_problem, box_problem, decode_bytes)
    path_problem("images/../../etc/passwd")      # "path ... climbs out of the root with '..'"
    image_problem(Path("x.jpg"))                 # (None, "missing image file")
    text_problem("caf\ufffd")                    # "undecodable (replacement or control ...)"
    box_problem([0, 0, 40, 10], (32, 32))        # "box [0, 0, 40, 10] is outside the 32x32 image"
    report = Report("data"); report.add(file, record, field, message); report.ok
    report.add(file, "row 3", "input_name", "not UTF-8", WARNING, kind="not UTF-8")
    report.groups()        # one ProblemGroup per (file, field, kind, severity), first seen first
    print(report.summary())  # one line per group: count and first records

mmf_fashion.data.check uses these to walk whole data directories; the dataset
builders may call them on single records. Each function returns None when the
value is fine, else a short message that the caller prefixes with file, record
and field.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Dict, List, Optional, Set, Tuple, Union

from PIL import Image

ERROR, WARNING = "error", "warning"


GROUP_EXAMPLES = 3  # records named on a grouped summary line


def default_kind(message: str) -> str:
    """What a problem is, without the values that differ between records
    ("unknown category id 99" -> "unknown category id #"): the grouping key
    when the caller names no kind."""
    head = re.split(r": | \(", message, maxsplit=1)[0]
    return re.sub(r"(?<![\w.-])-?\d+(\.\d+)?(?![\w-])", "#", head).strip() or message


@dataclass(frozen=True)
class Problem:
    file: str
    record: str
    field: str
    message: str
    severity: str = ERROR
    kind: str = ""  # groups repeated findings; default_kind(message) when empty

    def __post_init__(self):
        if not self.kind:
            object.__setattr__(self, "kind", default_kind(self.message))

    def __str__(self) -> str:
        return f"{self.severity}: {self.file}: {self.record}: {self.field}: {self.message}"


@dataclass
class ProblemGroup:
    """Every problem of one kind in one field of one file."""

    file: str
    field: str
    kind: str
    severity: str
    problems: List[Problem] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.problems)

    def __str__(self) -> str:
        if self.count == 1:
            return str(self.problems[0])
        first = self.problems[0]
        records = ", ".join(p.record for p in self.problems[:GROUP_EXAMPLES])
        more = f" and {self.count - GROUP_EXAMPLES} more" if self.count > GROUP_EXAMPLES else ""
        line = f"{self.severity}: {self.file}: {self.field}: {self.kind} ({self.count} records: {records}{more})"
        if any(p.message != self.kind for p in self.problems[:GROUP_EXAMPLES]):
            line += f"; first: {first.record}: {first.message}"
        return line


@dataclass
class Report:
    root: str
    counts: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    problems: List[Problem] = field(default_factory=list)

    @property
    def errors(self) -> List[Problem]:
        return [p for p in self.problems if p.severity == ERROR]

    @property
    def warnings(self) -> List[Problem]:
        return [p for p in self.problems if p.severity == WARNING]

    @property
    def ok(self) -> bool:
        return not self.errors

    def add(self, file: Union[str, Path], record: str, field_name: str, message: str,
            severity: str = ERROR, kind: str = "") -> None:
        """kind: what the problem is without its per-record values (e.g. "unknown
        category id"); findings of one kind in one field of one file share a
        summary line. Empty: derived from the message (default_kind)."""
        self.problems.append(Problem(str(file), record, field_name, message, severity, kind))

    def groups(self) -> List[ProblemGroup]:
        """Problems grouped by (file, field, kind, severity): errors first,
        then warnings, each in the order first found."""
        grouped: Dict[Tuple[str, str, str, str], ProblemGroup] = {}
        for problem in self.errors + self.warnings:
            key = (problem.file, problem.field, problem.kind, problem.severity)
            if key not in grouped:
                grouped[key] = ProblemGroup(*key)
            grouped[key].problems.append(problem)
        return list(grouped.values())

    def summary(self, max_problems: int = 50) -> str:
        """Counts, totals, then one line per group (at most max_problems lines)."""
        lines = [f"data dir: {self.root}"]
        for source, counts in self.counts.items():
            text = ", ".join(f"{key}={value}" for key, value in counts.items())
            lines.append(f"  {source}: {text}")
        lines.append(f"{len(self.errors)} error(s), {len(self.warnings)} warning(s)")
        groups = self.groups()
        lines.extend(f"  {group}" for group in groups[:max_problems])
        if len(groups) > max_problems:
            hidden = sum(group.count for group in groups[max_problems:])
            lines.append(f"  ... and {len(groups) - max_problems} more line(s) ({hidden} problem(s)); "
                         "--json writes every one")
        return "\n".join(lines)

    def to_dict(self) -> Dict:
        return {"root": self.root, "counts": self.counts, "ok": self.ok,
                "problems": [asdict(p) for p in self.problems],
                "groups": [{"file": g.file, "field": g.field, "kind": g.kind, "severity": g.severity,
                            "count": g.count, "records": [p.record for p in g.problems[:GROUP_EXAMPLES]]}
                           for g in self.groups()]}


def path_problem(relative: Any) -> Optional[str]:
    """Why a path stored in a data file is unsafe, or None when it is a plain relative path."""
    if not isinstance(relative, str) or not relative.strip():
        return "empty or not a string"
    if PurePosixPath(relative).is_absolute() or PureWindowsPath(relative).is_absolute() \
            or PureWindowsPath(relative).drive:
        return f"absolute path {relative!r}"
    depth = 0
    for part in re.split(r"[\\/]+", relative):
        if part == "..":
            depth -= 1
            if depth < 0:
                return f"path {relative!r} climbs out of the root with '..'"
        elif part not in ("", "."):
            depth += 1
    return None


def image_problem(path: Path, decode: bool = True) -> Tuple[Optional[Tuple[int, int]],
                                                            Optional[str]]:
    """(size (w, h) or None, problem or None) of an image file; decode=False reads the
    header only (fast, but misses truncated pixel data)."""
    if not path.is_file():
        return None, "missing image file"
    try:
        with Image.open(path) as image:
            if decode:
                image.load()  # verify() misses truncated pixel data; load() does not
            return image.size, None
    except Exception as error:  # PIL raises many types for broken files
        return None, f"corrupt image ({type(error).__name__}: {error})"


def text_problem(text: Any) -> Optional[str]:
    """Why a caption is unusable: not a string, empty, or full of control characters."""
    if not isinstance(text, str):
        return f"not a string ({type(text).__name__})"
    if not text.strip():
        return "empty"
    if "\ufffd" in text or any(unicodedata.category(c) == "Cc" and c not in "\t\n\r"
                               for c in text):
        return "undecodable (replacement or control characters)"
    return None


def decode_bytes(raw: bytes) -> Tuple[str, Optional[str]]:
    """(text, warning): UTF-8, falling back to latin-1 (which the real files may use)."""
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError:
        return raw.decode("latin-1"), "not UTF-8; decoded as latin-1"


def box_problem(box: Any, image_size: Optional[Tuple[int, int]]) -> Optional[str]:
    """Why a (x, y, w, h) pixel box is invalid for an image of (width, height)."""
    if not isinstance(box, (list, tuple)) or len(box) != 4 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in box):
        return f"box {box!r} is not 4 numbers"
    x, y, w, h = box
    if w <= 0 or h <= 0:
        return f"box {list(box)} has no area"
    if image_size is not None:
        width, height = image_size
        if x < 0 or y < 0 or x + w > width or y + h > height:
            return f"box {list(box)} is outside the {width}x{height} image"
    return None


def load_json_checked(path: Path, root: Path, report: Report) -> Any:
    """The parsed file, or None after reporting why it cannot be read."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        report.add(relative_to_root(path, root), "file", "-", f"unreadable JSON ({error})")
        return None


def relative_to_root(path: Path, root: Path) -> str:
    """``path`` relative to the data root when inside it (for problem messages)."""
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


class ImageChecker:
    """Checks each image file once; remembers sizes for box checks."""

    def __init__(self, root: Path, report: Report, decode: bool):
        self.root, self.report, self.decode = root, report, decode
        self.sizes: Dict[Path, Optional[Tuple[int, int]]] = {}
        self.bad: Set[Path] = set()

    def check(self, folder: Path, relative: Any, file: str, record: str,
              field_name: str) -> Optional[Tuple[int, int]]:
        unsafe = path_problem(relative)
        if unsafe:
            self.report.add(file, record, field_name, unsafe, kind="unsafe path")
            return None
        path = folder / relative
        if path not in self.sizes:
            size, problem = image_problem(path, self.decode)
            self.sizes[path] = size
            if problem:
                self.bad.add(path)
                self.report.add(file, record, field_name, f"{problem}: {relative_to_root(path, self.root)}")
        return self.sizes[path]
