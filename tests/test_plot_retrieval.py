"""`mmf-fashion plot retrieval`: queries beside their top-k results, the correct item framed.

The frame choice (visualize_retrieval.frames_for) is checked without pixels;
the command runs for itr, tgir and ocir with a tiny FashionViL on the
synthetic fixture and must write a PNG of the announced size whose frames
mark exactly the ground truth of each query.
"""

import json

import numpy as np
import pytest
from PIL import Image

from mmf_fashion.cli.main import main
from mmf_fashion.visualize import PlotError
from mmf_fashion.visualize_retrieval import (
    FRAME_COLOUR,
    RetrievalRow,
    frames_for,
    grid_pixel_size,
    plot_retrieval_grid,
    sample_queries,
)

PROJECT = {
    "itr": "projects/fashionvil/configs/itr.yaml",
    "tgir": "projects/fashionvil/configs/tgir.yaml",
    "ocir": "projects/fashionvil/configs/ocir.yaml",
}
DATASET = {"itr": "fashiongen", "tgir": "fashioniq", "ocir": "polyvore_ocir"}
GROUND_TRUTH_KEY = {"itr": "product_id", "tgir": "target_id", "ocir": "blank_id"}
TINY_TEXT = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}


def tiny_overrides(task, data_dir):
    dataset = DATASET[task]
    overrides = [
        f"env.data_dir={data_dir}",
        f"dataset_config.{dataset}.processors.image_processor.params.size=32",
        "model_config.fashionvil.max_text_length=16",
        "model_config.fashionvil.image_encoder.name=resnet18",
    ]
    overrides += [f"model_config.fashionvil.text_encoder.{key}={value}" for key, value in TINY_TEXT.items()]
    return overrides


# ---------------------------------------------------------------- pure parts
def test_frames_mark_exactly_the_ground_truth():
    assert frames_for([12, 7, 3, 7, 9], [7]) == [False, True, False, True, False]
    assert frames_for([1, 2, 3], [4]) == [False, False, False]
    assert frames_for([5, 6], [6, 5]) == [True, True]
    assert frames_for([], [1]) == []


def test_queries_are_evenly_spaced_or_seeded():
    assert sample_queries(9, 3) == [0, 4, 8]
    assert sample_queries(4, 10) == [0, 1, 2, 3]
    seeded = sample_queries(100, 5, seed=3)
    assert seeded == sorted(set(seeded)) and len(seeded) == 5 and seeded == sample_queries(100, 5, seed=3)
    with pytest.raises(PlotError, match="at least 1"):
        sample_queries(10, 0)


def fake_row(frames, with_query_image):
    rng = np.random.default_rng(len(frames))
    picture = lambda: rng.uniform(0.0, 0.3, size=(32, 32, 3))  # noqa: E731 (dark, never green)
    return RetrievalRow(
        query_index=0,
        query_text="a long caption " * 10,
        query_images=[picture()] if with_query_image else [],
        ranked_ids=list(range(len(frames))),
        scores=[0.5] * len(frames),
        result_images=[picture() for _ in frames],
        ground_truth_ids=[],
        ground_truth_rank=3,
        frames=list(frames),
    )


def green_share(pixels, column, line, width, height):
    from mmf_fashion.visualize_retrieval import CELL_PX, HEADER_PX, QUERY_CELLS

    left, top = (QUERY_CELLS + column) * CELL_PX, HEADER_PX + line * CELL_PX
    cell = pixels[top : top + CELL_PX, left : left + CELL_PX].astype(int)
    target = np.array([int(FRAME_COLOUR[i : i + 2], 16) for i in (1, 3, 5)])
    return float((np.abs(cell - target).sum(axis=2) < 60).mean())


def test_the_drawn_frames_are_the_chosen_ones(tmp_path):
    rows = [fake_row([False, True, False], True), fake_row([True, False, False], False)]
    out = tmp_path / "grid.png"
    plot_retrieval_grid(rows, str(out), task="tgir")
    with Image.open(out) as image:
        assert image.format == "PNG"
        assert image.size == grid_pixel_size("tgir", 2, 3)
        pixels = np.asarray(image.convert("RGB"))
    for line, row in enumerate(rows):
        for column, framed in enumerate(row.frames):
            share = green_share(pixels, column, line, *image.size)
            assert (share > 0.05) == framed, (line, column, share)


# ---------------------------------------------------------------- the command
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from mmf_fashion.data.synth import make_fixture

    return make_fixture(tmp_path_factory.mktemp("retrieval_world"), products=40, image_size=32, seed=0)


@pytest.mark.parametrize("task", ["itr", "tgir", "ocir"])
def test_plot_retrieval_draws_each_task(task, world, tmp_path, capsys, restore_mmf_state):
    import torch

    from mmf_fashion import runtime

    overrides = tiny_overrides(task, world)
    config = runtime.load_config(PROJECT[task], "fashionvil", DATASET[task], overrides)
    dataset = runtime.build_split_dataset(config, DATASET[task], "val")
    weights = []
    if task == "tgir":  # one task reads its weights from a checkpoint (the others start from the seed)
        checkpoint = tmp_path / "fashionvil_final.pth"
        torch.save(runtime.build_model_from_config(config).state_dict(), checkpoint)
        weights = ["--checkpoint", str(checkpoint)]

    out, record = tmp_path / f"{task}.png", tmp_path / f"{task}.json"
    code = main(
        [
            "plot",
            "retrieval",
            "--config",
            PROJECT[task],
            "--model",
            "fashionvil",
            "--task",
            task,
            *weights,
            "--queries",
            "3",
            "--out",
            str(out),
            "--json",
            str(record),
            *overrides,
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert f"wrote {out}: 3 {task} queries, top-5" in captured.out

    with Image.open(out) as image:
        image.load()
        assert image.format == "PNG"
        assert image.size == grid_pixel_size(task, 3, 5)
    with open(out, "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"

    queries = json.loads(record.read_text())["queries"]
    assert len(queries) == 3
    for query in queries:
        assert len(query["ranked_ids"]) == 5
        assert query["scores"] == sorted(query["scores"], reverse=True)
        # the ground truth is the query's own (dataset row), and the frames mark it and nothing else
        truth = int(dataset[query["query_index"]][GROUND_TRUTH_KEY[task]])
        assert query["ground_truth_ids"] == [truth]
        assert query["frames"] == frames_for(query["ranked_ids"], [truth])
        rank = query["ground_truth_rank"]
        assert rank is not None
        assert any(query["frames"]) == (rank < 5)
        if rank < 5:
            assert query["frames"][rank] and query["ranked_ids"][rank] == truth


def test_plot_retrieval_refuses_a_checkpoint_that_needs_unpickling(world, tmp_path, capsys, restore_mmf_state):
    import argparse

    import torch

    checkpoint = tmp_path / "old.pth"
    torch.save({"model": {}, "args": argparse.Namespace(lr=0.1)}, checkpoint)  # not weights-only
    out = tmp_path / "grid.png"
    code = main(
        [
            "plot",
            "retrieval",
            "--config",
            PROJECT["itr"],
            "--model",
            "fashionvil",
            "--task",
            "itr",
            "--checkpoint",
            str(checkpoint),
            "--out",
            str(out),
            *tiny_overrides("itr", world),
        ]
    )
    stderr = capsys.readouterr().err
    assert code == 2
    assert "old.pth" in stderr and "--allow-unsafe-load" in stderr
    assert not out.exists()


# ---------------------------------------------------------------- make demo
@pytest.mark.parametrize("parallel", [1, 2])
def test_demo_pictures_draw_what_is_there_and_report_what_fails(tmp_path, capsys, monkeypatch, parallel):
    from mmf_fashion import demo

    pretrain = tmp_path / "pretrain"
    pretrain.mkdir()
    lines = [
        {"num_updates": n, "train/fashiongen/itc": 3.0 / n, "train/total_loss": 3.0 / n, "train/lr": 1e-4}
        for n in (10, 20, 30)
    ]
    (pretrain / "train.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    # itr's checkpoint is there but its picture fails; tgir and ocir did not run
    (tmp_path / "itr").mkdir()
    (tmp_path / "itr" / "fashionvil_final.pth").write_bytes(b"")
    run = demo.subprocess.run

    def fake_run(command, **kwargs):
        if "retrieval" in command:
            return demo.subprocess.CompletedProcess(command, 2, "", "mmf-fashion plot retrieval: it broke\n")
        return run(command, **kwargs)

    monkeypatch.setattr(demo.subprocess, "run", fake_run)
    written = demo.write_pictures(str(tmp_path), str(tmp_path / "data"), parallel)
    output = capsys.readouterr().out
    assert written == [str(tmp_path / "pretrain_curves.png")]
    with Image.open(written[0]) as image:
        assert image.format == "PNG"
    assert "picture itr_grid.png not drawn: mmf-fashion plot retrieval: it broke" in output
    assert "picture tgir_grid.png skipped" in output and "picture ocir_grid.png skipped" in output
