"""Bad input through `mmf_run`, end to end: a tiny synthetic world is corrupted
one way per case (a missing image, a truncated image, a record missing a field,
a record with an ill-typed field, an absolute path, a `..` path out of the data
directory), then

- on_bad_sample: error (the default): the run fails, and its output names the
  file, the record and the field;
- on_bad_sample: skip: the run trains and evaluates, and its log reports how
  many samples were skipped, of which kind, and where;
- allow_paths_outside_root: the absolute and `..` paths are accepted.

Every case corrupts the validation split (every validation image is served once
per evaluation). Error runs (one per case) stop while loading the data or in the
evaluation of run_type=val; the skip run (all cases at once) trains one update
of the tiny ALIGN model, then evaluates.
"""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "tests", "configs", "tiny_align.yaml")
MMF_RUN = [sys.executable, "-c", "from mmf_cli.run import run; run()"]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    from mmf_fashion.data.synth import make_fixture

    return make_fixture(str(tmp_path_factory.mktemp("pristine")), products=40, image_size=32, seed=0)


@pytest.fixture
def world(pristine, tmp_path):
    """A fresh copy of the FashionGen part of the world, to corrupt."""
    copy = tmp_path / "data"
    views = [
        len(entry["images"]) for entry in json.loads(open(os.path.join(pristine, "fashiongen", "val_info.json")).read())
    ]
    assert len(views) == 6 and views[1] >= 3 and views[4] >= 4, views  # what the corruptions below expect
    shutil.copytree(os.path.join(pristine, "fashiongen"), copy / "fashiongen")
    shutil.copy(os.path.join(pristine, "synth_manifest.json"), copy / "synth_manifest.json")
    return copy


def val_info(world):
    return world / "fashiongen" / "val_info.json"


def edit_entry(world, index, change):
    path = val_info(world)
    entries = json.loads(path.read_text())
    change(entries[index])
    path.write_text(json.dumps(entries))


# --- the corruptions: each returns what the report must name ---------------------------
# (record index in val_info.json, field, kind, a phrase of the message). Each case has its
# own record, so that all can be applied at once: the bad images are views in the middle
# of products with several views, because under skip a bad sample serves the next record,
# and a bad record right after another one would be tried (and counted) twice.


def missing_image(world):
    entry = json.loads(val_info(world).read_text())[1]
    image = world / "fashiongen" / entry["images"][1]
    image.unlink()
    return 1, "images[1]", "missing_image", f"image file {image} does not exist"


def truncated_image(world):
    entry = json.loads(val_info(world).read_text())[4]
    image = world / "fashiongen" / entry["images"][2]
    content = image.read_bytes()
    image.write_bytes(content[: len(content) // 2])
    return 4, "images[2]", "corrupt_image", f"image file {image} cannot be decoded"


def missing_field(world):
    edit_entry(world, 0, lambda entry: entry.pop("subcategory_id"))
    return 0, "subcategory_id", "missing_field", "field 'subcategory_id' is missing"


def ill_typed_field(world):
    edit_entry(world, 2, lambda entry: entry.update(id="twelve"))
    return 2, "id", "bad_value", "expected an integer, got 'twelve'"


def absolute_path(world):
    entries = json.loads(val_info(world).read_text())
    inside = str(world / "fashiongen" / entries[3]["images"][0])  # an existing image, named absolutely
    edit_entry(world, 3, lambda entry: entry["images"].__setitem__(0, inside))
    return 3, "images[0]", "unsafe_path", f"absolute path '{inside}' refused"


def dotdot_path(world):
    entries = json.loads(val_info(world).read_text())
    shutil.copy(world / "fashiongen" / entries[5]["images"][0], world.parent / "outside.jpg")
    edit_entry(world, 5, lambda entry: entry["images"].__setitem__(0, "../../outside.jpg"))
    return 5, "images[0]", "unsafe_path", "path '../../outside.jpg' leaves the data directory"


CASES = [missing_image, truncated_image, missing_field, ill_typed_field, absolute_path, dotdot_path]


def record_name(world, index):
    entry = json.loads(val_info(world).read_text())[index]
    return f"entry {index} (id {entry['id']})"


def mmf_run(save_dir, data_dir, *overrides):
    command = MMF_RUN + [
        f"config={CONFIG}",
        "model=align",
        "dataset=fashiongen",
        f"env.save_dir={save_dir}",
        f"env.data_dir={data_dir}",
        *overrides,
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    return result.returncode, result.stdout + result.stderr


def log_text(save_dir):
    folder = os.path.join(save_dir, "logs")
    return "".join(open(os.path.join(folder, name)).read() for name in sorted(os.listdir(folder)))


# the first case also runs against MMF main (make test-mmf-main)
@pytest.mark.parametrize(
    "corrupt",
    [pytest.param(c, marks=[pytest.mark.mmf_compat] if i == 0 else []) for i, c in enumerate(CASES)],
    ids=[c.__name__ for c in CASES],
)
def test_bad_input_fails_the_run_naming_file_record_and_field(world, tmp_path, corrupt):
    index, field, kind, problem = corrupt(world)
    record = record_name(world, index)
    code, output = mmf_run(tmp_path / "save", world, "run_type=val")
    assert code != 0, output[-3000:]
    # BadSampleError's message: "<file>: record <record>: field '<field>': <problem> [<kind>]"
    expected = f"{val_info(world)}: record {record}: field '{field}': {problem}"
    assert expected in output, output[-3000:]
    assert f"[{kind}]" in output
    assert not os.path.exists(tmp_path / "save" / "metrics.json")


@pytest.mark.mmf_compat
def test_bad_input_is_skipped_counted_and_reported(world, tmp_path):
    # every corruption at once (each in its own record), so one run covers them all
    expected = [
        (record_name(world, index), field, kind, problem)
        for index, field, kind, problem in (corrupt(world) for corrupt in CASES)
    ]
    save = tmp_path / "save"
    code, output = mmf_run(
        save,
        world,
        "run_type=train_val",
        "dataset_config.fashiongen.on_bad_sample=skip",
        "training.max_updates=1",
        "training.evaluation_interval=100",
        "training.checkpoint_interval=100",
    )
    assert code == 0, output[-3000:]
    metrics = json.loads((save / "metrics.json").read_text())
    assert metrics["num_updates"] == 1 and "val/fashiongen/r@k_general/avg" in metrics
    log = log_text(save)
    # the end-of-training report of the validation split: counts per kind, where they
    # were found (4 records while reading val_info.json, 2 images when served), examples
    report = re.search(
        r"val/fashiongen: bad samples in fashiongen/val \(on_bad_sample: skip\): (\d+) skipped in all "
        r"\((.*?)\); dropped while loading: (.*?); this epoch: .*((?:\n  e\.g\. .*)+)",
        log,
    )
    assert report, log[-3000:]
    total, every, at_load, examples = report.groups()
    assert int(total) == len(CASES)
    assert counts(every) == {
        "missing_image": 1,
        "corrupt_image": 1,
        "missing_field": 1,
        "bad_value": 1,
        "unsafe_path": 2,
    }
    assert counts(at_load) == {"missing_field": 1, "bad_value": 1, "unsafe_path": 2}
    for record, field, kind, problem in expected:
        assert f"e.g. {val_info(world)}: record {record}: field '{field}': {problem}" in examples, (kind, examples)
    # the clean splits are not reported
    assert "bad samples in fashiongen/train" not in log and "bad samples in fashiongen/test" not in log
    assert "train/fashiongen: bad samples" not in log


def counts(text):
    """'1 missing_image, 2 unsafe_path' -> {'missing_image': 1, 'unsafe_path': 2}"""
    return {kind: int(number) for number, kind in (item.split(" ") for item in text.split(", "))}


def test_paths_outside_the_data_directory_are_accepted_when_allowed(world, tmp_path):
    # refused by default: see test_bad_input_fails_the_run_naming_file_record_and_field
    absolute_path(world)
    dotdot_path(world)
    save = tmp_path / "allowed"
    code, output = mmf_run(save, world, "run_type=val", "dataset_config.fashiongen.allow_paths_outside_root=True")
    assert code == 0, output[-3000:]
    metrics = json.loads((save / "metrics.json").read_text())
    assert "val/fashiongen/r@k_general/avg" in metrics
    assert "bad samples" not in log_text(save)
