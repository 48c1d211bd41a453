"""Guarded losses: a NaN stops with the update named, or is skipped by config; never saved."""

import os

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture()
def trainer_factory(tmp_path, mmf_registry):
    from mmf_fashion.data.synth import make_fixture
    from mmf_fashion.runtime import load_config

    data_dir = str(make_fixture(str(tmp_path / "world"), products=40, image_size=32, seed=0))

    def make(*overrides):
        config = load_config(
            os.path.join(REPO, "tests", "configs", "tiny_align.yaml"),
            "align",
            "fashiongen",
            [f"env.data_dir={data_dir}", f"env.save_dir={tmp_path / 'save'}", *overrides],
        )
        trainer = mmf_registry.get_trainer_class("fashion_trainer")(config)
        trainer.load()
        trainer.max_updates = 10
        trainer._timer, trainer._start_update = 0.0, 0
        return trainer

    return make


def _poison(trainer):
    with torch.no_grad():
        next(p for p in trainer.model.parameters() if p.requires_grad).fill_(float("nan"))


def test_nan_loss_stops_naming_the_update(trainer_factory):
    from mmf_fashion.trainers.fashion_trainer import NonFiniteLossError

    trainer = trainer_factory()
    batch = next(iter(trainer.loaders["train"][0]))
    _poison(trainer)
    losses = trainer._forward_backward(batch, sync=True)
    with pytest.raises(NonFiniteLossError, match="update 1"):
        trainer._optimizer_step(losses)
    with pytest.raises(NonFiniteLossError, match="non-finite model"):
        trainer.save_checkpoint()
    assert not os.path.exists(os.path.join(trainer.save_dir, "current.ckpt"))


def test_nan_loss_is_skipped_when_configured(trainer_factory):
    trainer = trainer_factory("training.on_nonfinite_loss=skip")
    batch = next(iter(trainer.loaders["train"][0]))
    name, poisoned = next((n, p) for n, p in trainer.model.named_parameters() if p.requires_grad)
    others = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if n != name}
    _poison(trainer)
    trainer._optimizer_step(trainer._forward_backward(batch, sync=True))
    assert trainer.num_updates == 0 and trainer.skipped_nonfinite == 1
    for n, p in trainer.model.named_parameters():
        if n != name:
            assert torch.equal(p, others[n]), n
