"""Two gloo processes (torchrun, CPU) train exactly like one process with the same global batch.

training.batch_size is global: each of the two ranks gets half of it, and the
ResumableSampler deals the epoch's order out rank::world, so the global batch b
is the same set of samples as the one-process batch b, only gathered in another
order (rank 0's rows, then rank 1's). The contrastive losses below compare each
query with every key of the global batch and carry their labels along with that
order, so they do not depend on it; the COTS queues do keep it, so they are
compared after undoing it.

Determinism: no dropout, BatchNorm frozen (training.freeze_batchnorm: its batch
statistics differ per shard), no random crop / flip, one sample per image
(unit: image; one per product would draw a view at random), and no
token-level tasks (their random masks are drawn per rank).

Each rank's weights: the trainer saves rank 0's only, so the processes run this
file as their script (see the bottom): mmf_run, plus a dump of the rank's
state_dict before and after training, of what each evaluation ranks, and of
the COTS filter's decisions.

Portable on any CPU and thread count: the two runs sum the same numbers in
another order (gradient all-reduce, gathered batches), so they agree to about
1e-6, never bit for bit. Continuous quantities (losses, weights, embeddings)
are compared with a tolerance. Discontinuous ones are not compared across the
runs on their own: the recalls of each evaluation are checked against the
embeddings that run ranked (computed once from one set), and those embeddings
against the other run's within the tolerance; the filter's keep decisions are
compared only after asserting that every similarity lies farther from its
threshold than the runs can disagree (tests/margins.py).
"""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from margins import threshold_margin

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
THIS = os.path.abspath(__file__)
pytestmark = pytest.mark.slow

GLOBAL_BATCH = 8
WORLD = 2

TINY_TEXT = (
    "{name: tiny, hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 64, dropout: 0.0}"
)
COMMON = f"""
dataset_config:
  fashiongen:
    unit: image
    mlm: false
    second_view: false
    patch_mask: false
    attribute_labels: false
    processors:
      image_processor:
        params: {{size: 32, train_crop: none, horizontal_flip: 0.0}}
evaluation:
  metrics:
  - type: r@k_general
    params: {{ks: [1, 5, 10]}}
optimizer:
  type: SGD
  params: {{lr: 0.05, momentum: 0.9, weight_decay: 0.0}}
  lr_multipliers: {{}}
scheduler:
  type: warmup_cosine
  params: {{num_warmup_steps: 0, num_training_steps: 8}}
training:
  batch_size: {GLOBAL_BATCH}
  num_workers: 0
  max_updates: 4
  log_interval: 1
  evaluation_interval: 2
  checkpoint_interval: 100
  seed: 11
  freeze_batchnorm: true
  device: cpu
"""

# FashionViL pretraining with the ITC task only (every other ratio 0).
FASHIONVIL_ITC = (
    f"""
includes: [{REPO}/projects/fashionvil/configs/pretrain.yaml]
model_config:
  fashionvil:
    image_encoder: {{name: resnet18, pretrained: null}}
    text_encoder: {TINY_TEXT}
    pretraining:
      tasks: {{itc: 1.0, itm: 0.0, mlm: 0.0, mpfc: 0.0, mvc: 0.0, pac: 0.0}}
"""
    + COMMON
)

# COTS: instance-level ITC and task-level KL against the momentum queues (24
# rows, 8 per update: they wrap around in the 4 updates), with the adaptive
# momentum filter on: its history is the previous global batch (size 8, k 0:
# a pair is dropped when its similarity is below the previous batch's mean),
# which here drops pairs unevenly between the ranks (checked below).
COTS = (
    f"""
includes: [{REPO}/projects/cots/configs/pretrain.yaml]
model_config:
  cots:
    image_encoder: resnet18
    text_encoder: {TINY_TEXT}
    embed_dim: 16
    momentum: 0.99
    queue_size: 24
    loss_weights: {{itc: 1.0, kl: 1.0, cmlm: 0.0, cmvm: 0.0}}
    filter: {{enabled: true, k: 0.0, size: 8, min_count: 8, start_update: 0}}
"""
    + COMMON
)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """The synthetic world with 13 validation images: 7 on rank 0 (batches of 4
    and 3), 6 on rank 1 (4 and 2), so the ranks evaluate unequal batches."""
    from mmf_fashion.data.synth import make_fixture

    world = make_fixture(str(tmp_path_factory.mktemp("world")), products=40, image_size=32, seed=0)
    val_info = os.path.join(world, "fashiongen", "val_info.json")
    entries = json.loads(open(val_info).read())
    assert sum(len(e["images"]) for e in entries) == 14
    entry = next(e for e in entries if len(e["images"]) > 1)
    entry["images"] = entry["images"][:-1]
    open(val_info, "w").write(json.dumps(entries))
    return str(world)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train(tmp_path, name, config_text, model, data_dir, world, *overrides):
    config = tmp_path / f"{name}.yaml"
    config.write_text(config_text)
    save = tmp_path / f"{name}_{world}"
    if world == 1:
        launcher = [sys.executable, THIS]
    else:
        launcher = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={world}",
            f"--master_port={free_port()}",
            THIS,
        ]
    command = launcher + [
        f"config={config}",
        f"model={model}",
        "dataset=fashiongen",
        "run_type=train_val",
        f"env.save_dir={save}",
        f"env.data_dir={data_dir}",
        *overrides,
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", MMF_SAVE_DIR=str(save))
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return save


def logged_train_losses(save):
    """{update: {loss name: value}} from train.jsonl (rank 0 records the mean over ranks)."""
    losses = {}
    for line in open(os.path.join(save, "train.jsonl")):
        record = json.loads(line)
        losses[record["num_updates"]] = {
            key.split("/")[-1]: value for key, value in record.items() if key.startswith("train/fashiongen/")
        }
    return losses


def evaluations(save):
    return [json.loads(line) for line in open(os.path.join(save, "metrics.jsonl"))]


def state(save, when, rank=0):
    return torch.load(os.path.join(save, f"{when}_rank{rank}.pth"), weights_only=True)


def kept_pairs(save, rank):
    """The filter's decision of every update, recorded by the rank: keep ('1' kept,
    '0' dropped), the pairs' similarities and the threshold they were compared with."""
    return [json.loads(line) for line in open(os.path.join(save, f"keep_rank{rank}.jsonl"))]


def ranked(save, index, rank=0):
    """What the index-th evaluation of a rank ranked: the gathered inputs and the recalls."""
    return torch.load(os.path.join(save, f"ranked{index}_rank{rank}.pth"), weights_only=True)


def assert_same_evaluation_set(one, two):
    """Both runs rank the same 13 images and texts (the two-process rows come
    rank by rank: aligned by image id) with embeddings equal within tolerance."""
    assert one["image_ids"].numel() == two["image_ids"].numel() == 13
    order_one, order_two = one["image_ids"].argsort(), two["image_ids"].argsort()
    assert torch.equal(one["image_ids"][order_one], two["image_ids"][order_two])
    assert torch.equal(one["products"][order_one], two["products"][order_two])
    for field in ("image", "text"):
        torch.testing.assert_close(
            two[field][order_two], one[field][order_one], rtol=1e-4, atol=1e-4, msg=lambda m: f"{field} embeddings: {m}"
        )


def assert_same_training(one, two, loss_names, reordered=()):
    """What a user compares between the runs: the logged losses, the evaluations, the
    weights (all but the buffers named by a prefix in `reordered`: compared by the caller)."""
    losses_one, losses_two = logged_train_losses(one), logged_train_losses(two)
    assert sorted(losses_one) == sorted(losses_two) == [1, 2, 3, 4]
    for update in losses_one:
        assert set(losses_one[update]) == set(losses_two[update]) == set(loss_names)
        for name, value in losses_one[update].items():
            assert losses_two[update][name] == pytest.approx(value, rel=1e-5, abs=1e-6), (update, name)
    # the runs learn something: the weights compared below moved
    assert any(abs(losses_one[4][n] - losses_one[1][n]) > 1e-3 for n in loss_names), losses_one

    # retrieval metrics are computed on embeddings gathered from both ranks (the
    # in-batch evaluation losses are not comparable: each rank scores its own half batch)
    evals_one, evals_two = evaluations(one), evaluations(two)
    assert [e["num_updates"] for e in evals_one] == [e["num_updates"] for e in evals_two] == [2, 4]
    for index, (e1, e2) in enumerate(zip(evals_one, evals_two)):
        recall = sorted(k for k in e1 if "/r@k_general/" in k)
        assert len(recall) == 7 and recall == sorted(k for k in e2 if "/r@k_general/" in k)
        ranked_one = ranked(one, index)
        ranked_two = [ranked(two, index, rank) for rank in range(WORLD)]
        # every rank ranks the whole gathered set, and the same one
        for field, value in ranked_two[0]["inputs"].items():
            assert torch.equal(value, ranked_two[1]["inputs"][field]), field
        assert_same_evaluation_set(ranked_one["inputs"], ranked_two[0]["inputs"])
        # each run reports the recalls of the embeddings it ranked (ranks are not
        # compared across the runs: a near-tie may flip on another CPU)
        for e, dump in ((e1, ranked_one), (e2, ranked_two[0])):
            for key, value in dump["recalls"].items():
                assert e[f"val/fashiongen/r@k_general/{key}"] == pytest.approx(value, abs=1e-9), key
    assert json.loads(open(os.path.join(two, "metrics.json")).read()) == evals_two[-1]

    init, final_one = state(one, "init"), state(one, "final")
    final = {rank: state(two, "final", rank) for rank in range(WORLD)}
    assert set(final_one) == set(final[0]) == set(final[1])
    moved = max((final_one[k].float() - init[k].float()).abs().max().item() for k in final_one if k in init)
    worst = 0.0
    for key, value in final_one.items():
        assert torch.equal(final[0][key], final[1][key]), f"ranks disagree on {key}"
        if key.startswith(tuple(reordered)):
            continue
        if value.is_floating_point():
            torch.testing.assert_close(final[0][key], value, rtol=1e-4, atol=2e-5, msg=lambda m: f"{key}: {m}")
            worst = max(worst, (final[0][key] - value).abs().max().item())
        else:
            assert torch.equal(final[0][key], value), key
    assert moved > 1000 * max(worst, 1e-8), (moved, worst)
    # the trainer's own final weights (rank 0) are the dumped ones
    saved = torch.load(
        os.path.join(two, [f for f in os.listdir(two) if f.endswith("_final.pth")][0]), weights_only=True
    )
    for key, value in saved.items():
        assert torch.equal(value, final[0][key]), key
    return final_one, final


def test_fashionvil_itc_pretraining_two_processes_equal_one(tmp_path, data_dir):
    # also: the ranks evaluate batches of unequal size, which must not be
    # exchanged between ranks (the evaluation ITC used to all_gather them and crash)
    one = train(tmp_path, "fashionvil", FASHIONVIL_ITC, "fashionvil", data_dir, 1)
    two = train(tmp_path, "fashionvil", FASHIONVIL_ITC, "fashionvil", data_dir, WORLD)
    assert_same_training(one, two, ["itc"])


def test_cots_two_processes_equal_one_and_queues_agree(tmp_path, data_dir):
    one = train(tmp_path, "cots", COTS, "cots", data_dir, 1)
    two = train(tmp_path, "cots", COTS, "cots", data_dir, WORLD)
    final_one, final = assert_same_training(one, two, ["itc", "kl"], reordered=("queue.", "momentum_filter.history."))

    # the filter dropped pairs, and not as many on each rank (each rank averages over its
    # own kept pairs: the losses must still be those of the global batch)
    keep_one = kept_pairs(one, 0)
    keep_two = [kept_pairs(two, rank) for rank in range(WORLD)]
    assert len(keep_one) == len(keep_two[0]) == len(keep_two[1]) == 4
    for update, decision in enumerate(keep_one):
        # the decisions can be compared only because no similarity lies within the
        # runs' disagreement of its threshold (else: change the fixture's seed)
        assert threshold_margin(decision["similarity"], decision["threshold"]) > 1e-4, (update, decision)
        halves = [keep_two[rank][update] for rank in range(WORLD)]
        assert halves[0]["threshold"] == pytest.approx(decision["threshold"], abs=1e-5), update
        torch.testing.assert_close(
            torch.tensor(halves[0]["similarity"] + halves[1]["similarity"]),
            torch.tensor(decision["similarity"][0::2] + decision["similarity"][1::2]),
            rtol=1e-4,
            atol=1e-5,
        )
        assert halves[0]["keep"] + halves[1]["keep"] == decision["keep"][0::2] + decision["keep"][1::2], update
    assert any(d["keep"].count("0") for d in keep_one), keep_one
    assert any(a["keep"].count("0") != b["keep"].count("0") for a, b in zip(*keep_two)), keep_two

    # queues: filled from the gathered batch of both ranks, identical on both ranks
    for field in ("queue.image", "queue.text", "queue.ids", "queue.pointer", "queue.count"):
        assert torch.equal(final[0][field], final[1][field]), field
    assert int(final_one["queue.count"]) == int(final[0]["queue.count"]) == 24
    assert int(final_one["queue.pointer"]) == int(final[0]["queue.pointer"]) == 32 % 24
    # each block of 8 rows is one global batch: rank 0's rows (global positions
    # 0, 2, 4, 6 of the one-process batch) then rank 1's (1, 3, 5, 7)
    per_rank = GLOBAL_BATCH // WORLD
    order = [rank + WORLD * k for rank in range(WORLD) for k in range(per_rank)]
    permutation = torch.tensor([block + i for block in range(0, 24, GLOBAL_BATCH) for i in order])
    assert torch.equal(final[0]["queue.ids"], final_one["queue.ids"][permutation])
    assert len(set(final_one["queue.ids"].flatten().tolist())) > 8  # real product ids, not zeros
    for field in ("queue.image", "queue.text"):
        torch.testing.assert_close(final[0][field], final_one[field][permutation], rtol=1e-4, atol=2e-5)
    # the filter's history (8 slots): the last global batch's similarities, in the same order
    history_order = torch.tensor(order)
    torch.testing.assert_close(
        final[0]["momentum_filter.history.similarity"],
        final_one["momentum_filter.history.similarity"][history_order],
        rtol=1e-4,
        atol=2e-5,
    )


if __name__ == "__main__":
    # The processes of the tests above: mmf_run, plus this rank's weights
    # before and after training (<save_dir>/{init,final}_rank<r>.pth).
    from mmf_fashion.trainers.fashion_trainer import FashionTrainer

    def current_rank():
        return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0

    def dump(trainer, when):
        torch.save(trainer.model.state_dict(), os.path.join(trainer.save_dir, f"{when}_rank{current_rank()}.pth"))

    load, finalize = FashionTrainer.load, FashionTrainer._finalize

    def load_and_dump(self):
        load(self)
        dump(self, "init")

    def finalize_and_dump(self):
        finalize(self)
        dump(self, "final")

    from mmf_fashion.models.cots import COTS

    keep_mask = COTS._keep_mask

    def recorded_keep_mask(self, similarity):
        keep = keep_mask(self, similarity)
        record = {
            "keep": "".join("1" if k else "0" for k in keep.tolist()),
            "similarity": similarity.detach().double().tolist(),
            "threshold": float(self.momentum_filter.threshold()),
        }
        with open(os.path.join(os.environ["MMF_SAVE_DIR"], f"keep_rank{current_rank()}.jsonl"), "a") as f:
            f.write(json.dumps(record) + "\n")
        return keep

    from mmf_fashion.metrics import ranking

    general_recalls, evaluations_ranked = ranking.general_recalls, []

    def recorded_general_recalls(image, text, products, image_ids=None, **kwargs):
        recalls = general_recalls(image, text, products, image_ids=image_ids, **kwargs)
        inputs = {"image": image, "text": text, "products": products, "image_ids": image_ids}
        path = os.path.join(os.environ["MMF_SAVE_DIR"], f"ranked{len(evaluations_ranked)}_rank{current_rank()}.pth")
        torch.save({"inputs": {k: v.detach().cpu() for k, v in inputs.items()}, "recalls": recalls}, path)
        evaluations_ranked.append(path)
        return recalls

    FashionTrainer.load, FashionTrainer._finalize, COTS._keep_mask = (
        load_and_dump,
        finalize_and_dump,
        recorded_keep_mask,
    )
    ranking.general_recalls = recorded_general_recalls
    from mmf_cli.run import run

    run()
