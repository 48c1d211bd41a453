"""benchmarks/learning.py: the statistics, the resume and the row construction (no training)."""

import json
import os

import numpy as np
import pytest
from scipy import stats

from benchmarks import learning


def make_args(tmp_path, *extra):
    data = tmp_path / "world"
    return learning.parse_args(
        [
            "--data-dir",
            str(data),
            "--save-dir",
            str(tmp_path / "save"),
            "--out",
            str(tmp_path / "out" / "learning.md"),
            *extra,
        ]
    )


def plan_for(tmp_path, *extra):
    args = make_args(tmp_path, *extra)
    return args, learning.make_plan(args)


def instance(plan, name, seed):
    return next(run for run in plan.instances([seed]) if run.name == name)


def write_metrics(plan, name, seed, metrics):
    """A finished run as execute() leaves it: metrics.json and the record of its inputs."""
    save_dir = plan.run_dir(name, seed)
    os.makedirs(save_dir, exist_ok=True)
    with open(os.path.join(save_dir, "metrics.json"), "w") as handle:
        json.dump(metrics, handle)
    learning.record_inputs(plan, learning.Run(**{**plan.runs[name].__dict__, "seed": seed}))


# ------------------------------------------------------------------------------------------ statistics


@pytest.mark.parametrize("values", [[1.0, 2.0, 4.0], [10.5, 3.25], [0.0, 0.0, 0.0, 7.0, 1.5]])
def test_mean_std_matches_numpy(values):
    mean, std, n = learning.mean_std(values)
    assert n == len(values)
    assert mean == pytest.approx(np.mean(values))
    assert std == pytest.approx(np.std(values, ddof=1))


def test_mean_std_edge_cases():
    mean, std, n = learning.mean_std([3.0])
    assert (mean, n) == (3.0, 1) and std != std  # one value: no spread
    mean, std, n = learning.mean_std([])
    assert n == 0 and mean != mean


def test_paired_difference_matches_scipy():
    variant = {0: 28.5, 1: 39.3, 2: 31.0, 7: 99.0}  # seed 7 has no reference: left out
    reference = {0: 13.4, 1: 10.6, 2: 15.2, 3: 1.0}
    paired = learning.paired_difference(variant, reference)
    differences = np.array([28.5 - 13.4, 39.3 - 10.6, 31.0 - 15.2])
    assert paired["seeds"] == [0, 1, 2] and paired["n"] == 3
    assert paired["differences"] == pytest.approx(differences.tolist())
    assert paired["mean"] == pytest.approx(differences.mean())
    assert paired["std"] == pytest.approx(differences.std(ddof=1))
    low, high = stats.t.interval(0.95, 2, loc=differences.mean(), scale=stats.sem(differences))
    assert (paired["ci95_low"], paired["ci95_high"]) == pytest.approx((low, high))
    # the same numbers as a paired t-test on the two samples
    t = stats.ttest_rel([28.5, 39.3, 31.0], [13.4, 10.6, 15.2]).statistic
    assert paired["mean"] / (paired["std"] / np.sqrt(3)) == pytest.approx(t)


def test_paired_difference_of_one_seed_has_no_interval():
    paired = learning.paired_difference({0: 5.0}, {0: 2.0})
    assert paired["mean"] == 3.0 and paired["n"] == 1 and paired["ci95_low"] != paired["ci95_low"]


def test_table_data_per_metric(tmp_path):
    args, plan = plan_for(tmp_path, "--rows", "fashionvil", "--tasks", "itr", "--seeds", "0,1,2")
    plan.make_tables()
    table = next(t for t in plan.tables["fashionvil"] if t.title.startswith("ITR"))
    scratch = {0: 2.0, 1: 4.0, 2: 3.0}
    full = {0: 7.0, 1: 12.0}  # seed 2 missing
    results = {
        "fashionvil_itr_scratch": {
            s: {"metrics": {"val/fashiongen/r@k_general/i2t_r@1": v}, "seconds": 1.0} for s, v in scratch.items()
        },
        "fashionvil_itr_full": {
            s: {"metrics": {"val/fashiongen/r@k_general/i2t_r@1": v}, "seconds": 1.0} for s, v in full.items()
        },
    }
    data = learning.table_data(table, results, [0, 1, 2])
    cell = data["variants"]["scratch"]["metrics"]["R@1"]
    assert cell["mean"] == pytest.approx(3.0) and cell["std"] == pytest.approx(1.0) and cell["n"] == 3
    assert "paired" not in cell  # the reference
    paired = data["variants"]["full"]["metrics"]["R@1"]["paired"]
    assert paired["seeds"] == [0, 1] and paired["mean"] == pytest.approx(6.5)
    assert paired["std"] == pytest.approx(np.std([5.0, 8.0], ddof=1))
    assert data["variants"]["untrained"]["metrics"]["R@1"]["n"] == 0


# ------------------------------------------------------------------------------------------ rows


def test_fashionvil_rows_and_overrides(tmp_path):
    args, plan = plan_for(tmp_path, "--rows", "fashionvil", "--tasks", "itr,tgir", "--seeds", "0,1,2")
    names = set(plan.runs)
    for variant in ("full", "no_mvc", "no_pac", "no_mpfc"):
        assert f"fashionvil_pretrain_{variant}" in names
        for task in ("itr", "tgir"):
            assert f"fashionvil_{task}_{variant}" in names
    assert {"fashionvil_itr_untrained", "fashionvil_itr_scratch", "fashionvil_tgir_scratch"} <= names
    assert not any("_scr_" in n or "_ocir_" in n for n in names)

    for variant, task in (("no_mvc", "mvc"), ("no_pac", "pac"), ("no_mpfc", "mpfc")):
        items = plan.command_args(instance(plan, f"fashionvil_pretrain_{variant}", 1))
        assert f"model_config.fashionvil.pretraining.tasks.{task}=0.0" in items
        assert "training.seed=1" in items and "run_type=train_val" in items
    full = plan.command_args(instance(plan, "fashionvil_pretrain_full", 0))
    assert not any("pretraining.tasks" in item for item in full)
    tokenizer = [i for i in full if i.startswith("model_config.fashionvil.tokenizer_checkpoint=")][0]
    assert tokenizer.endswith(os.path.join("fashionvil_tokenizer", "fashion_vqvae_final.pth"))

    tuned = plan.command_args(instance(plan, "fashionvil_tgir_no_pac", 2))
    resume = [i for i in tuned if i.startswith("checkpoint.resume_file=")]
    expected = plan.checkpoint("fashionvil_pretrain_no_pac", 2, "fashionvil_final.pth")
    assert resume == [f"checkpoint.resume_file={expected}"]
    assert os.path.join("fashionvil_pretrain_no_pac", "seed2") in resume[0]
    assert "training.seed=2" in tuned
    untrained = plan.command_args(instance(plan, "fashionvil_itr_untrained", 0))
    assert "run_type=val" in untrained and "checkpoint.resume_file=null" in untrained
    assert f"env.save_dir={os.path.abspath(plan.run_dir('fashionvil_itr_untrained', 0))}" in untrained
    # the tokenizer: one run for every seed, no training.seed
    token = plan.command_args(instance(plan, "fashionvil_tokenizer", 0))
    assert "run_type=train" in token and not any(i.startswith("training.seed=") for i in token)


def test_max_updates_caps_training_runs_only(tmp_path):
    args, plan = plan_for(tmp_path, "--rows", "fashionvil", "--tasks", "itr", "--max-updates", "3")
    assert "training.max_updates=3" in plan.command_args(instance(plan, "fashionvil_itr_scratch", 0))
    assert not any(
        i.startswith("training.max_updates") for i in plan.command_args(instance(plan, "fashionvil_itr_untrained", 0))
    )


def test_other_groups(tmp_path):
    args, plan = plan_for(tmp_path, "--cots-queue", "64")
    minilm = plan.command_args(instance(plan, "fashionvil_tgir_minilm", 0))
    assert "model_config.fashionvil.text_encoder.name=minilm" in minilm
    assert "checkpoint.resume_file=null" in minilm

    cots = {
        name: plan.command_args(instance(plan, name, 0))
        for name in ("cots_in-batch", "cots_queue", "cots_queue_filter")
    }
    assert "model_config.cots.queue_size=0" in cots["cots_in-batch"]
    assert "model_config.cots.queue_size=64" in cots["cots_queue"]
    assert "model_config.cots.queue_size=64" in cots["cots_queue_filter"]
    assert "model_config.cots.filter.enabled=false" in cots["cots_queue"]
    assert "model_config.cots.filter.enabled=true" in cots["cots_queue_filter"]
    for items in cots.values():
        assert f"env.data_dir={os.path.abspath(args.noisy_data_dir)}" in items
        assert "model_config.cots.loss_weights.cmlm=0.0" in items
    assert args.noisy_data_dir.endswith("world_noise20")

    no_box = plan.command_args(instance(plan, "xvlm_pretrain_no_box", 0))
    assert "model_config.xvlm.loss_weights.box_l1=0.0" in no_box
    itr = plan.command_args(instance(plan, "xvlm_itr_no_box", 1))
    assert f"checkpoint.resume_file={plan.checkpoint('xvlm_pretrain_no_box', 1, 'xvlm_final.pth')}" in itr
    assert "model_config.fashionbert.loss_weighting.mode=fixed" in plan.command_args(
        instance(plan, "fashionbert_pretrain_fixed", 0)
    )
    zeroshot = plan.command_args(instance(plan, "align_zeroshot", 0))
    assert "run_type=val" in zeroshot
    assert f"checkpoint.resume_file={plan.checkpoint('align_pretrain', 0, 'align_final.pth')}" in zeroshot


def test_unknown_rows_are_refused(tmp_path):
    with pytest.raises(SystemExit):
        make_args(tmp_path, "--rows", "fashionvil,nope")


# ------------------------------------------------------------------------------------------ resume


def test_finished_runs_are_not_run_again(tmp_path, monkeypatch):
    args, plan = plan_for(tmp_path, "--rows", "fashionvil", "--tasks", "itr", "--seeds", "0,1")
    instances = plan.instances([0, 1])
    write_metrics(plan, "fashionvil_tokenizer", None, {})
    write_metrics(plan, "fashionvil_pretrain_full", 0, {})
    write_metrics(plan, "fashionvil_itr_scratch", 1, {"val/fashiongen/r@k_general/i2t_r@1": 1.0})
    waiting = {(run.name, run.seed) for run in learning.pending(plan, instances)}
    assert ("fashionvil_pretrain_full", 0) not in waiting and ("fashionvil_itr_scratch", 1) not in waiting
    assert ("fashionvil_tokenizer", None) not in waiting
    assert ("fashionvil_pretrain_full", 1) in waiting and ("fashionvil_itr_full", 0) in waiting
    assert len(waiting) == len(instances) - 3

    executed = []

    def fake_execute(plan_, run, threads):
        executed.append((run.name, run.seed))
        write_metrics(plan_, run.name, run.seed, {})
        return True

    monkeypatch.setattr(learning, "execute", fake_execute)
    states = learning.run_all(plan, instances, jobs=2, threads=1)
    assert set(executed) == waiting
    assert states[("fashionvil_pretrain_full", 0)] == "reused"
    for name, seed in executed:  # each started after what it needs
        for need in plan.runs[name].needs:
            key = (need, None if need == learning.TOKENIZER else seed)
            assert key not in executed or executed.index(key) < executed.index((name, seed))
    # a second call finds everything finished and starts nothing
    executed.clear()
    learning.run_all(plan, instances, jobs=2, threads=1)
    assert executed == [] and learning.pending(plan, instances) == []


def test_changed_inputs_make_a_run_and_its_dependants_stale(tmp_path):
    args, plan = plan_for(tmp_path, "--rows", "fashionvil", "--tasks", "itr", "--seeds", "0")
    instances = plan.instances([0])
    for run in instances:
        write_metrics(plan, run.name, run.seed, {})
    assert learning.pending(plan, instances) == []
    # a metrics.json without the record of its inputs (an older runner, a copied folder) is not trusted
    os.remove(os.path.join(plan.run_dir("fashionvil_itr_untrained", 0), learning.INPUTS_FILE))
    assert [(r.name, r.seed) for r in learning.pending(plan, instances)] == [("fashionvil_itr_untrained", 0)]
    write_metrics(plan, "fashionvil_itr_untrained", 0, {})
    # another setting for one pretraining: it and the fine-tunes that start from it are stale, nothing else
    plan.runs["fashionvil_pretrain_no_pac"].overrides.append("optimizer.params.lr=1.0e-3")
    stale = {r.name for r in learning.pending(plan, instances)}
    assert stale == {"fashionvil_pretrain_no_pac", "fashionvil_itr_no_pac"}
    # the world changed: every run on it is stale
    os.makedirs(args.data_dir, exist_ok=True)
    with open(os.path.join(args.data_dir, "synth_manifest.json"), "w") as handle:
        json.dump({"version": "9.9.9"}, handle)
    assert len(learning.pending(plan, instances)) == len(instances)


def test_a_stale_run_starts_afresh(tmp_path, monkeypatch):
    args, plan = plan_for(tmp_path, "--rows", "fashionvil", "--tasks", "itr", "--seeds", "0")
    run = instance(plan, "fashionvil_itr_scratch", 0)
    save_dir = plan.run_dir(run.name, 0)
    os.makedirs(save_dir)
    with open(os.path.join(save_dir, "current.ckpt"), "w") as handle:
        handle.write("an older run's checkpoint that MMF would otherwise resume from")

    class Done:
        returncode = 0

    def fake_run(command, **kwargs):
        assert os.listdir(save_dir) == []  # MMF finds nothing to resume from
        write_metrics(plan, run.name, 0, {"val/fashiongen/r@k_general/i2t_r@1": 3.0})
        return Done()

    monkeypatch.setattr(learning.subprocess, "run", fake_run)
    assert learning.execute(plan, run, threads=1)
    assert os.path.exists(os.path.join(save_dir + ".stale", "current.ckpt"))
    assert learning.finished(plan, run) == {"val/fashiongen/r@k_general/i2t_r@1": 3.0}


def test_failed_prerequisite_skips_dependants(tmp_path, monkeypatch):
    args, plan = plan_for(tmp_path, "--rows", "fashionvil", "--tasks", "itr", "--seeds", "0")
    executed = []

    def fake_execute(plan_, run, threads):
        executed.append(run.name)
        if run.name == "fashionvil_pretrain_no_mvc":
            return False
        write_metrics(plan_, run.name, run.seed, {})
        return True

    monkeypatch.setattr(learning, "execute", fake_execute)
    states = learning.run_all(plan, plan.instances([0]), jobs=1, threads=1)
    assert states[("fashionvil_itr_no_mvc", 0)] == "skipped" and "fashionvil_itr_no_mvc" not in executed
    assert states[("fashionvil_itr_no_pac", 0)] == "done"


def test_report_from_finished_runs(tmp_path):
    args, plan = plan_for(tmp_path, "--rows", "fashionvil", "--tasks", "itr", "--seeds", "0,1", "--report-only")
    for seed, (scratch, full) in enumerate([(2.0, 7.0), (4.0, 12.0)]):
        write_metrics(plan, "fashionvil_itr_scratch", seed, {"val/fashiongen/r@k_general/i2t_r@1": scratch})
        write_metrics(plan, "fashionvil_itr_full", seed, {"val/fashiongen/r@k_general/i2t_r@1": full})
    report = learning.write_report(plan, [0, 1], {}, 0.0)
    text = open(args.out).read()
    assert "| full | 2/2 | 9.50 ± 3.54" in text
    assert "+6.50 ± 2.12" in text
    assert "## Missing runs" in text and "`fashionvil_pretrain_full` seeds 0, 1" in text
    with open(os.path.splitext(args.out)[0] + ".json") as handle:
        saved = json.load(handle)  # standard JSON: NaN written as null
    assert saved["groups"]["fashionvil"]["tables"] == json.loads(
        json.dumps(learning.finite(report["groups"]["fashionvil"]["tables"]))
    )


def test_a_failed_run_is_tried_once_more(tmp_path, monkeypatch):
    args, plan = plan_for(tmp_path, "--rows", "fashionvil", "--tasks", "itr", "--seeds", "0")
    run = instance(plan, "fashionvil_itr_scratch", 0)
    calls = []

    class Done:
        def __init__(self, code):
            self.returncode = code

    def fake_run(command, **kwargs):
        calls.append(command)
        if len(calls) == 1:
            return Done(1)  # start-up failure: no metrics.json
        write_metrics(plan, run.name, run.seed, {})
        return Done(0)

    monkeypatch.setattr(learning.subprocess, "run", fake_run)
    monkeypatch.setattr(learning, "RETRY_PAUSE_S", 0.0)
    assert learning.execute(plan, run, threads=1)
    assert len(calls) == 2 and calls[0] == calls[1]
    assert os.path.exists(plan.run_dir(run.name, 0) + ".log.failed")
    assert os.path.exists(os.path.join(plan.run_dir(run.name, 0), learning.WALL_TIME_FILE))


def test_a_world_of_another_generator_or_size_is_generated_again(tmp_path, monkeypatch):
    from mmf_fashion.data.synth import GENERATOR_VERSION, preset_arguments

    calls = []
    monkeypatch.setattr(learning.subprocess, "run", lambda command, **kwargs: calls.append(command))

    def world(**fields):
        path = tmp_path / f"world{len(list(tmp_path.iterdir()))}"
        path.mkdir()
        manifest = {"generator": "mmf_fashion.data.synth", "version": GENERATOR_VERSION, "noise_fraction": 0.0}
        manifest.update(preset_arguments("evidence"))
        manifest.update(fields)
        (path / "synth_manifest.json").write_text(json.dumps(manifest))
        return str(path)

    learning.ensure_world(world(), 0.0, "evidence")
    assert calls == []  # the right world is used as it is
    for stale, noise in ((world(version="0.9.0"), 0.0), (world(products=1200), 0.0), (world(), 0.2)):
        learning.ensure_world(stale, noise, "evidence")
        assert calls[-1][calls[-1].index("--out") + 1] == stale and "evidence" in calls[-1]
        assert not os.path.exists(stale)  # the old world is removed before generating
    assert calls[-1][-2:] == ["--noise", "0.2"]
    # a folder that is not a generated world (real data) is never touched
    real = tmp_path / "real"
    real.mkdir()
    (real / "synth_manifest.json").write_text(json.dumps({"generator": "someone else"}))
    learning.ensure_world(str(real), 0.0, "evidence")
    assert len(calls) == 3 and real.exists()


def test_ablations_are_also_paired_against_the_full_pretraining(tmp_path):
    args, plan = plan_for(tmp_path, "--rows", "fashionvil", "--tasks", "tgir", "--seeds", "0,1,2", "--report-only")
    key = "val/fashioniq/r@k_fashioniq/r@10"
    full, no_mvc = [10.0, 12.0, 11.0], [8.0, 9.0, 10.0]
    for seed in range(3):
        write_metrics(plan, "fashionvil_tgir_full", seed, {key: full[seed]})
        write_metrics(plan, "fashionvil_tgir_no_mvc", seed, {key: no_mvc[seed]})
        write_metrics(plan, "fashionvil_tgir_scratch", seed, {key: 1.0})
    report = learning.write_report(plan, [0, 1, 2], {}, 0.0)
    differences = [n - f for n, f in zip(no_mvc, full)]
    expected = stats.t.interval(0.95, 2, loc=np.mean(differences), scale=stats.sem(differences))
    table = next(t for t in report["groups"]["fashionvil"]["tables"] if t["title"].startswith("TGIR"))
    pair = next(p for p in table["also"] if p["variant"] == "no_mvc")
    assert pair["reference"] == "full"
    assert pair["metrics"]["R@10"]["mean"] == pytest.approx(np.mean(differences))
    assert (pair["metrics"]["R@10"]["ci95_low"], pair["metrics"]["R@10"]["ci95_high"]) == pytest.approx(expected)
    text = open(args.out).read()
    assert "| no_mvc - full | -2.00 ± 1.00 [-4.48, +0.48] (3) |" in text


def test_noisy_pair_figures_against_sklearn_and_by_hand():
    from sklearn.metrics import roc_auc_score

    from benchmarks.noisy_pairs import noisy_pair_figures

    noisy = np.array([True, False, False, True, False, False, False, False, False, False])
    separated = np.where(noisy, -1.0, 1.0) + np.linspace(0, 0.1, 10)
    figures = noisy_pair_figures(separated, noisy)
    assert figures["noisy_pairs/auroc"] == pytest.approx(100.0)
    assert figures["noisy_pairs/precision"] == pytest.approx(100.0)
    assert figures["noisy_pairs/chance_precision"] == pytest.approx(20.0)
    memorised = -separated  # the mismatched pairs scored highest
    assert noisy_pair_figures(memorised, noisy)["noisy_pairs/auroc"] == pytest.approx(0.0)
    assert noisy_pair_figures(memorised, noisy)["noisy_pairs/precision"] == pytest.approx(0.0)

    rng = np.random.default_rng(0)
    scores = rng.normal(size=200)
    labels = rng.random(200) < 0.2
    figures = noisy_pair_figures(scores, labels)
    assert figures["noisy_pairs/auroc"] == pytest.approx(100 * roc_auc_score(labels, -scores))
    lowest = np.argsort(scores)[: labels.sum()]
    assert figures["noisy_pairs/precision"] == pytest.approx(100 * labels[lowest].mean())
    with pytest.raises(ValueError, match="both kinds"):
        noisy_pair_figures(scores, np.zeros(200, dtype=bool))


def test_the_cots_report_reads_the_noisy_pair_figures_next_to_the_metrics(tmp_path):
    args, plan = plan_for(tmp_path, "--rows", "cots")
    write_metrics(plan, "cots_in-batch", 0, {"val/fashiongen/r@k_general/i2t_r@10": 60.0})
    save_dir = plan.run_dir("cots_in-batch", 0)
    with open(os.path.join(save_dir, "noisy_pairs.json"), "w") as handle:
        json.dump({"noisy_pairs/auroc": 97.0, "noisy_pairs/precision": 85.0}, handle)
    metrics = learning.finished(plan, instance(plan, "cots_in-batch", 0))
    assert metrics["noisy_pairs/auroc"] == 97.0 and metrics["val/fashiongen/r@k_general/i2t_r@10"] == 60.0
    assert learning.metric(metrics, "noisy_pairs/auroc") == 97.0
    assert learning.metric(metrics, "r@k_general/i2t_r@10") == 60.0
    plan.make_tables()
    titles = [table.title for table in plan.tables["cots"]]
    assert any("mismatched training pairs" in title for title in titles)
