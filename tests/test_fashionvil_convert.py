"""Official FashionViL checkpoints -> our `fashionvil`: a tiny model in the official layout
(MMF rc10's BertVisioLinguisticEmbeddings, transformers BertEncoder / BertPooler / heads,
a torchvision ResNet trunk) computes what the official code computes; after conversion our
registered model gives the same fused and unimodal outputs. Unmatched keys are named,
a checkpoint of another size or model is an error naming the file."""

import pytest
import torch
from tiny_models import build_fashionvil, fashionvil_batch, fashionvil_config
from torch import nn

from mmf_fashion.cli.main import main as cli_main
from mmf_fashion.convert import fashionvil as convert
from mmf_fashion.trainers.checkpointing import load_model_state, safe_torch_load

TOLERANCE = 1e-5
TASKS = {"itc": 0.4, "itm": 0.3, "mlm": 0.3}


class OfficialLayout(nn.Module):
    """The official parameter tree (image_encoder.model.*, model.bert.*, model.heads.*) and
    the fork's forward maths, written from its source; bypass_transformer: true."""

    def __init__(self, hidden=32, layers=1, heads=2, intermediate=64, seed=0):
        super().__init__()
        import torchvision
        from mmf.modules.embeddings import BertVisioLinguisticEmbeddings
        from transformers import BertConfig
        from transformers.models.bert.modeling_bert import (
            BertEncoder,
            BertLMPredictionHead,
            BertOnlyNSPHead,
            BertPooler,
        )

        torch.manual_seed(seed)
        config = BertConfig(
            hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=intermediate
        )
        config.visual_embedding_dim = 512  # resnet18's channels
        config._attn_implementation = "eager"  # modules used outside a BertModel
        self.image_encoder = nn.Module()
        self.image_encoder.model = nn.Sequential(*list(torchvision.models.resnet18().children())[:-2])
        self.model = nn.Module()
        self.model.bert = nn.Module()
        self.model.bert.embeddings = BertVisioLinguisticEmbeddings(config)
        self.model.bert.encoder = BertEncoder(config)
        self.model.bert.pooler = BertPooler(config)
        self.model.heads = nn.ModuleDict({"itm": BertOnlyNSPHead(config), "mlm": BertLMPredictionHead(config)})
        with torch.no_grad():  # every tensor distinct, so a swapped mapping shows
            for name, parameter in self.named_parameters():
                if "decoder.weight" not in name:
                    parameter.add_(0.05 * torch.randn_like(parameter))
            # tied as the fork's transformers (3.x) ties them: one weight, one bias
            mlm = self.model.heads["mlm"]
            mlm.decoder.weight = self.model.bert.embeddings.word_embeddings.weight
            mlm.decoder.bias = mlm.bias
        self.eval()

    def grid(self, images):
        return self.image_encoder.model(images).flatten(2).transpose(1, 2)

    def _embed(self, input_ids=None, token_type_ids=None, grid=None):
        # the fork's BertVisioLinguisticEmbeddings.forward: visual positions 0..N-1, visual type 0,
        # one LayerNorm over [text ; visual] (rc10's stock forward: position 0 for all, CUDA only)
        e = self.model.bert.embeddings
        parts = []
        if input_ids is not None:
            positions = torch.arange(input_ids.shape[1]).expand_as(input_ids)
            parts.append(
                e.word_embeddings(input_ids)
                + e.position_embeddings(positions)
                + e.token_type_embeddings(token_type_ids)
            )
        if grid is not None:
            b, n, _ = grid.shape
            positions = torch.arange(n).repeat(b, 1)
            types = torch.zeros(b, n, dtype=torch.long)
            parts.append(
                e.projection(grid) + e.position_embeddings_visual(positions) + e.token_type_embeddings_visual(types)
            )
        return e.dropout(e.LayerNorm(torch.cat(parts, dim=1)))

    def _bert(self, states, mask):
        extended = (1.0 - mask[:, None, None, :].to(states.dtype)) * -10000.0
        sequence = self.model.bert.encoder(states, attention_mask=extended)[0]
        return sequence, self.model.bert.pooler(sequence)

    @torch.no_grad()
    def outputs(self, batch):
        ids, mask, types = batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
        grid = self.grid(batch["image"])
        joint_mask = torch.cat([mask, mask.new_ones(grid.shape[:2])], dim=1)
        sequence, pooled = self._bert(self._embed(ids, types, grid), joint_mask)
        text_sequence, _ = self._bert(self._embed(ids, types), mask)
        weights = mask.unsqueeze(2).to(text_sequence.dtype)
        return {
            "fused_sequence": sequence,
            "fused_pooled": pooled,
            "composed": sequence[:, -grid.shape[1] :].mean(dim=1),
            "image": self.model.bert.embeddings.projection(grid).mean(dim=1),
            "text": (text_sequence * weights).sum(1) / weights.sum(1),
            "itm": self.model.heads["itm"](pooled),
            "mlm": self.model.heads["mlm"](sequence[:, : ids.shape[1]]),
        }


def ours_outputs(model, batch):
    ids, mask, types = batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
    with torch.no_grad():
        fused = model.fuse(ids, mask, types, model.image_tokens(batch["image"]))
        return {
            "fused_sequence": fused.sequence,
            "fused_pooled": fused.pooled,
            "composed": fused.visual_mean(),
            "image": model.image_embedding(batch["image"]),
            "text": model.text_embedding(ids, mask, types),
            "itm": model.itm_head(fused.pooled),
            "mlm": model.mlm_head(fused.text_states, model.text_encoder.embeddings.word_embeddings.weight),
        }


def save_official(module, path, extra=None):
    state = dict(module.state_dict())
    state.update(extra or {})
    torch.save({"model": state, "num_updates": 10}, path)  # MMF's checkpoint layout
    return str(path)


def our_model(mmf_registry, **extra):
    config = fashionvil_config("pretraining", contrastive_dim=0, **extra)
    config.pretraining.tasks = TASKS  # assigned, not merged: no MPFC / PAC / MVC heads
    return build_fashionvil(mmf_registry, config).eval()


@pytest.mark.parametrize("visual_token_type", [1, 0])
def test_converted_outputs_equal_official(mmf_registry, tmp_path, capsys, visual_token_type):
    official = OfficialLayout()
    source = save_official(official, tmp_path / "official.pth")
    out = tmp_path / "ours.pth"
    assert (
        cli_main(
            [
                "convert",
                "fashionvil",
                "--from",
                source,
                "--out",
                str(out),
                "--visual-token-type",
                str(visual_token_type),
            ]
        )
        == 0
    )
    assert "unmatched" in capsys.readouterr().out

    model = our_model(mmf_registry, visual_token_type=visual_token_type)
    missing, unexpected = load_model_state(model, safe_torch_load(str(out)), strict=False, source=str(out))
    assert unexpected == []
    # the official temperature is the NormalizationLayer's norm_s on both sides: not ours
    assert missing == ["logit_scale.log_scale"], f"our parameters the official file leaves unset: {missing}"

    batch = fashionvil_batch()
    expected, got = official.outputs(batch), ours_outputs(model, batch)
    differences = {name: float((got[name] - expected[name]).abs().max()) for name in expected}
    mlm = differences.pop("mlm")
    assert max(differences.values()) <= TOLERANCE, f"max abs differences: {sorted(differences.items())}"
    # MLM logits over the vocabulary reach ~10: compared relative to their size
    scale = float(expected["mlm"].abs().max())
    assert mlm <= TOLERANCE * max(1.0, scale), f"mlm logits (up to {scale}) differ by {mlm}"


def test_unmatched_keys_are_named(tmp_path, capsys):
    extra = {
        "model.heads.pac.projection": torch.randn(32, 6),
        "model.norm_layer.norm_s": torch.tensor([4.0]),
        "model.classifier.0.dense.weight": torch.randn(32, 32),
    }
    source = save_official(OfficialLayout(), tmp_path / "official.pth", extra)
    assert cli_main(["convert", "fashionvil", "--from", source, "--out", str(tmp_path / "o.pth")]) == 0
    printed = capsys.readouterr().out
    for name in extra:
        assert f"unmatched: {name}" in printed
    assert "derived: model.heads.mlm.decoder.weight" in printed
    _, report = convert.convert(safe_torch_load(source), source=source)
    assert sorted(report.unmatched) == sorted(extra)
    converted_from = {official for official, _ in report.mapped}
    assert converted_from | set(report.derived) | set(report.unmatched) == set(safe_torch_load(source)["model"])


def test_wrong_size_names_file_and_keys(mmf_registry, tmp_path):
    source = save_official(OfficialLayout(hidden=48), tmp_path / "official_base.pth")
    model = our_model(mmf_registry)
    with pytest.raises(ValueError, match=r"official_base\.pth(.|\n)*text_encoder\.embeddings"):
        convert.load_official(model, safe_torch_load(source), source=source)


def test_other_model_is_refused(mmf_registry, tmp_path):
    source = tmp_path / "ours_already.pth"
    torch.save(our_model(mmf_registry).state_dict(), source)
    with pytest.raises(ValueError, match=r"ours_already\.pth is not an official FashionViL(.|\n)*image_encoder"):
        convert.convert_file(str(source), str(tmp_path / "out.pth"))
    assert not convert.is_official(safe_torch_load(str(source)))


def test_resume_file_in_official_layout_is_converted(mmf_registry, tmp_path):
    """checkpoint.resume_file pointing at an official file: the trainer converts, then loads."""
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from mmf_fashion.trainers.fashion_trainer import FashionTrainer

    official = OfficialLayout()
    source = save_official(official, tmp_path / "official.pth")
    written = []
    trainer = SimpleNamespace(
        config=OmegaConf.create(
            {
                "checkpoint": {
                    "resume": False,
                    "resume_file": source,
                    "resume_pretrained": False,
                    "allow_unsafe_load": False,
                }
            }
        ),
        model=our_model(mmf_registry),
        writer=SimpleNamespace(write=lambda text, level="info": written.append(text)),
        _checkpoint_paths=lambda: {"current": str(tmp_path / "current.ckpt")},
    )
    FashionTrainer._load_checkpoint_if_any(trainer)
    assert torch.equal(trainer.model.image_projection.weight, official.model.bert.embeddings.projection.weight)
    assert "unmatched" in written[0] and source in written[0]
