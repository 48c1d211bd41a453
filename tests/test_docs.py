"""The docs match the code: registered names are documented, no machine paths.

docs/ARCHITECTURE.md is the contract between the parts, so every model,
builder and metric this package registers must be named there. Markdown
files are read by people on other machines: an absolute path of one machine
(a home folder, a pytest temp folder) is meaningless to them.
"""

import os
import re
import subprocess

import pytest

import mmf_fashion.plugin

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCUMENTED_KINDS = ("model", "builder", "metric", "processor", "trainer")
MACHINE_PATH = re.compile(r"(?<![\w.])/(?:work|root|home|Users)/|/tmp/pytest")


def _architecture_text():
    with open(os.path.join(ROOT, "docs", "ARCHITECTURE.md"), encoding="utf-8") as f:
        return f.read()


def _named(name, text):
    # whole names only: "accuracy" must not be found inside "grounding_accuracy"
    return re.search(r"(?<![\w@])" + re.escape(name) + r"(?![\w@])", text) is not None


@pytest.mark.parametrize("kind", DOCUMENTED_KINDS)
def test_every_registered_name_is_in_architecture(kind):
    names = sorted(mmf_fashion.plugin.ours().get(kind, {}))
    assert names, f"nothing of kind {kind} is registered"
    text = _architecture_text()
    missing = [name for name in names if not _named(name, text)]
    assert not missing, f"registered {kind}s missing from docs/ARCHITECTURE.md ('Registered names'): {missing}"


def test_name_check_needs_whole_names():
    assert _named("accuracy", "metrics: accuracy, f1")
    assert not _named("accuracy", "metrics: grounding_accuracy")
    assert not _named("f1", "metrics: macro_f1")
    assert _named("r@k_general", "r@k_general, r@k_ocir")


def _markdown_files():
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.md"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if listed.returncode != 0:
        pytest.skip(f"not a git checkout: {listed.stderr.strip()}")
    # a file deleted in the work tree but still in the index is not shipped
    return [path for path in listed.stdout.split() if os.path.isfile(os.path.join(ROOT, path))]


def test_no_markdown_names_a_machine_path():
    files = _markdown_files()
    assert "README.md" in files
    found = []
    for path in files:
        with open(os.path.join(ROOT, path), encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if MACHINE_PATH.search(line):
                    found.append(f"{path}:{number}: {line.strip()}")
    assert not found, "absolute machine paths in markdown (use repository-relative paths):\n" + "\n".join(found)


def test_machine_path_pattern():
    # built from pieces so this file does not itself hold a machine path
    assert MACHINE_PATH.search("see /" + "work/repo/docs")
    assert MACHINE_PATH.search("/tmp/" + "pytest-of-x/test0")
    assert MACHINE_PATH.search("cd /" + "home/alice")
    assert not MACHINE_PATH.search("docs" + "/work" + "/notes and data/home/x")  # relative: not a machine path
    assert not MACHINE_PATH.search("env.data_dir=/data/shop")
