"""Official X-VLM checkpoints -> our `xvlm`: a tiny state dict in the official layout (the
Swin of zengyan-97/X-VLM, xbert's BERT split 2 text + 2 fusion layers whose cross-attention
reads the vision width, its heads and temperature) converts, loads, and our network then
computes what the official code computes: image tokens equal transformers' SwinModel run
with the official weights ([CLS] = mean of the last stage), the text half equals a
transformers BertModel, the fusion, ITM, box, ITC and MLM outputs equal the official maths
written out below. Unmatched keys are named; a wrong file, a model of another size and a
pickled object are refused."""

import math

import pytest
import torch
import torch.nn.functional as F
from tiny_models import build_xvlm

from mmf_fashion.cli.main import main as cli_main
from mmf_fashion.convert import xvlm as convert
from mmf_fashion.modules.xvlm import XVLMNetwork
from mmf_fashion.trainers.checkpointing import load_model_state, safe_torch_load

TOLERANCE = 1e-5
IMAGE, WINDOW, SWIN_DIM, DEPTHS, SWIN_HEADS = 32, 4, 24, [2, 2], [2, 4]
VISION_WIDTH = SWIN_DIM * 2 ** (len(DEPTHS) - 1)  # 48: not the text width, as Swin-B (1024) vs BERT (768)
HIDDEN, TEXT_LAYERS, FUSION_LAYERS, HEADS, FFN, VOCAB, EMBED = 32, 2, 2, 2, 64, 99, 16
B, L = 2, 6


def our_config(key_value_width="vision", hidden=HIDDEN):
    return {
        "image_encoder": {
            "type": "swin",
            "name": "swin_b",
            "image_size": IMAGE,
            "window_size": WINDOW,
            "embed_dim": SWIN_DIM,
            "depths": DEPTHS,
            "num_heads": SWIN_HEADS,
        },
        "text_encoder": {
            "name": "tiny",
            "hidden_size": hidden,
            "num_hidden_layers": TEXT_LAYERS + FUSION_LAYERS,
            "num_attention_heads": HEADS,
            "intermediate_size": FFN,
            "vocab_size": VOCAB,
        },
        "cross_encoder": {"key_value_width": key_value_width},
        "embed_dim": EMBED,
        "tokenizer": "tiny",
    }


def official_state(layout="pretrain", seed=0):
    """The official state dict at tiny size: Swin weights from a torchvision Swin renamed to the
    official names (with the official buffers), BERT/heads random, every tensor distinct."""
    from torchvision.models.swin_transformer import SwinTransformer
    from transformers import SwinConfig, SwinModel

    torch.manual_seed(seed)
    swin = SwinTransformer([4, 4], SWIN_DIM, DEPTHS, SWIN_HEADS, [WINDOW, WINDOW])
    state = {}
    for key, value in swin.state_dict().items():
        value = value if "relative_position_index" in key else value + 0.05 * torch.randn_like(value)
        parts = key.split(".")
        if key.startswith("features.0.0."):
            name = "patch_embed.proj." + parts[-1]
        elif key.startswith("features.0.2."):
            name = "patch_embed.norm." + parts[-1]
        elif key.startswith("features."):
            index = int(parts[1])
            if index % 2:  # a stage's blocks
                rest = ".".join(parts[3:]).replace("mlp.0.", "mlp.fc1.").replace("mlp.3.", "mlp.fc2.")
                if rest == "attn.relative_position_index":
                    value = value.view(WINDOW**2, WINDOW**2)
                name = f"layers.{index // 2}.blocks.{parts[2]}.{rest}"
            else:  # patch merging after stage index / 2 - 1
                name = f"layers.{index // 2 - 1}.downsample.{'.'.join(parts[2:])}"
        elif key.startswith("norm."):
            name = key
        else:
            continue  # the classifier: X-VLM's Swin has none
        state["vision_encoder." + name] = value
    # the shifted blocks' masks, as the official code registers them (stage 0 only: stage 1 is one window)
    config = SwinConfig(image_size=IMAGE, embed_dim=SWIN_DIM, depths=DEPTHS, num_heads=SWIN_HEADS, window_size=WINDOW)
    hf = SwinModel(config)
    state["vision_encoder.layers.0.blocks.1.attn.attn_mask"] = (
        hf.encoder.layers[0].blocks[1].get_attn_mask(IMAGE // 4, IMAGE // 4, torch.float32, "cpu")
    )

    def rand(*shape):
        return 0.2 * torch.randn(*shape)

    def ln(prefix, width):
        state[prefix + "weight"], state[prefix + "bias"] = 1 + rand(width), rand(width)

    def linear(prefix, out, inp):
        state[prefix + "weight"], state[prefix + "bias"] = rand(out, inp) / math.sqrt(inp) * 5, rand(out)

    bert = "text_encoder.bert." if layout == "pretrain" else "text_encoder."
    state[bert + "embeddings.word_embeddings.weight"] = rand(VOCAB, HIDDEN) * 5
    state[bert + "embeddings.position_embeddings.weight"] = rand(512, HIDDEN)
    state[bert + "embeddings.token_type_embeddings.weight"] = rand(2, HIDDEN)
    state[bert + "embeddings.position_ids"] = torch.arange(512).expand(1, -1)
    ln(bert + "embeddings.LayerNorm.", HIDDEN)
    for n in range(TEXT_LAYERS + FUSION_LAYERS):
        layer = f"{bert}encoder.layer.{n}."
        blocks = ["attention."] + (["crossattention."] if n >= TEXT_LAYERS else [])
        for block in blocks:
            width = VISION_WIDTH if block == "crossattention." else HIDDEN
            linear(layer + block + "self.query.", HIDDEN, HIDDEN)
            linear(layer + block + "self.key.", HIDDEN, width)
            linear(layer + block + "self.value.", HIDDEN, width)
            linear(layer + block + "output.dense.", HIDDEN, HIDDEN)
            ln(layer + block + "output.LayerNorm.", HIDDEN)
        linear(layer + "intermediate.dense.", FFN, HIDDEN)
        linear(layer + "output.dense.", HIDDEN, FFN)
        ln(layer + "output.LayerNorm.", HIDDEN)
    linear("vision_proj.", EMBED, VISION_WIDTH)
    linear("text_proj.", EMBED, HIDDEN)
    for head, outputs in (("itm_head.", 2), ("bbox_head.", 4)):
        linear(head + "0.", 2 * HIDDEN, HIDDEN)
        ln(head + "1.", 2 * HIDDEN)
        linear(head + "3.", outputs, 2 * HIDDEN)
    state["temp"] = torch.tensor(0.05)
    if layout == "pretrain":  # BertForMaskedLM's head, decoder tied as transformers ties it
        mlm = "text_encoder.cls.predictions."
        linear(mlm + "transform.dense.", HIDDEN, HIDDEN)
        ln(mlm + "transform.LayerNorm.", HIDDEN)
        state[mlm + "bias"] = rand(VOCAB)
        state[mlm + "decoder.weight"] = state[bert + "embeddings.word_embeddings.weight"]
        state[mlm + "decoder.bias"] = state[mlm + "bias"]
    return state


# ---------------------------------------------------------------- the official maths, written out
def hf_swin_tokens(state, images):
    """transformers' SwinModel (an independent port of the official Swin) with the official
    weights: [mean-pooled token ; last-stage tokens], as X-VLM's SwinTransformer.forward."""
    from transformers import SwinConfig, SwinModel

    config = SwinConfig(image_size=IMAGE, embed_dim=SWIN_DIM, depths=DEPTHS, num_heads=SWIN_HEADS, window_size=WINDOW)
    model = SwinModel(config, add_pooling_layer=True).eval()
    renamed = {}
    for key, value in state.items():
        if not key.startswith(("vision_encoder.layers.", "vision_encoder.patch_embed.", "vision_encoder.norm.")):
            continue
        if key.endswith(("attn_mask", "relative_position_index")):  # buffers the port rebuilds
            continue
        key = key[len("vision_encoder.") :]
        key = key.replace("patch_embed.proj.", "embeddings.patch_embeddings.projection.")
        key = key.replace("patch_embed.norm.", "embeddings.norm.").replace("layers.", "encoder.layers.")
        key = key.replace(".norm1.", ".layernorm_before.").replace(".norm2.", ".layernorm_after.")
        key = key.replace("attn.proj.", "attention.o_proj.")
        table = "relative_position_bias_table"
        key = key.replace(f"attn.{table}", f"attention.relative_position_bias.{table}")
        key = "layernorm." + key[len("norm.") :] if key.startswith("norm.") else key
        if "attn.qkv." in key:
            for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                renamed[key.replace("attn.qkv.", f"attention.{name}.")] = part
            continue
        renamed[key] = value
    missing, unexpected = model.load_state_dict(renamed, strict=False)
    assert not unexpected and all("relative_position_index" in key for key in missing), (missing, unexpected)
    with torch.no_grad():
        out = model(pixel_values=images)
    return torch.cat((out.pooler_output.unsqueeze(1), out.last_hidden_state), dim=1)


def hf_text(state, prefix, input_ids, mask):
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        num_hidden_layers=TEXT_LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=FFN,
    )
    model = BertModel(config, add_pooling_layer=False).eval()
    weights = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix) and "position_ids" not in k}
    weights = {
        k: v for k, v in weights.items() if not k.startswith("encoder.layer.") or int(k.split(".")[2]) < TEXT_LAYERS
    }
    missing, unexpected = model.load_state_dict(weights, strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    with torch.no_grad():
        return model(input_ids=input_ids, attention_mask=mask).last_hidden_state


def _lin(state, prefix, x):
    return F.linear(x, state[prefix + "weight"], state[prefix + "bias"])


def _ln(state, prefix, x, eps=1e-12):
    return F.layer_norm(x, x.shape[-1:], state[prefix + "weight"], state[prefix + "bias"], eps)


def _attention(state, prefix, x, context, mask):
    """xbert's BertAttention: scaled dot product with (1 - mask) * -10000, output dense + residual LN."""

    def heads(t):
        return t.view(t.shape[0], t.shape[1], HEADS, -1).transpose(1, 2)

    q, k, v = (
        heads(_lin(state, prefix + f"self.{n}.", t)) for n, t in (("query", x), ("key", context), ("value", context))
    )
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + (1.0 - mask[:, None, None, :].float()) * -10000.0
    ctx = (scores.softmax(-1) @ v).transpose(1, 2).reshape(x.shape)
    return _ln(state, prefix + "output.LayerNorm.", _lin(state, prefix + "output.dense.", ctx) + x)


def official_fusion(state, prefix, text, text_mask, image, image_mask):
    """xbert's BertEncoder in mode='fusion': layers TEXT_LAYERS.. with self- then cross-attention, then the FFN."""
    x = text
    for n in range(TEXT_LAYERS, TEXT_LAYERS + FUSION_LAYERS):
        layer = f"{prefix}encoder.layer.{n}."
        x = _attention(state, layer + "attention.", x, x, text_mask)
        x = _attention(state, layer + "crossattention.", x, image, image_mask)
        hidden = F.gelu(_lin(state, layer + "intermediate.dense.", x))
        x = _ln(state, layer + "output.LayerNorm.", _lin(state, layer + "output.dense.", hidden) + x)
    return x


def official_mlp(state, prefix, x):
    """build_mlp: Linear(d, 2d) - LayerNorm - GELU - Linear(2d, out)."""
    return _lin(state, prefix + "3.", F.gelu(_ln(state, prefix + "1.", _lin(state, prefix + "0.", x), eps=1e-5)))


def inputs():
    torch.manual_seed(3)
    ids = torch.randint(5, VOCAB, (B, L))
    mask = torch.ones(B, L, dtype=torch.long)
    mask[1, 4:] = 0
    return torch.randn(B, 3, IMAGE, IMAGE), ids, mask


def converted_network(state, **config):
    net = XVLMNetwork(our_config(**config)).eval()
    report = convert.load_official(net, state, source="official.th")
    return net, report


# ---------------------------------------------------------------- tests
@pytest.mark.parametrize("layout", ["pretrain", "finetuned"])
def test_converted_outputs_equal_official_maths(layout):
    state = official_state(layout)
    prefix = "text_encoder.bert." if layout == "pretrain" else "text_encoder."
    net, report = converted_network(state)
    assert report.unmatched == [] and report.not_set == (
        []
        if layout == "pretrain"
        else ["mlm_head.bias", *[f"mlm_head.transform.{i}.{p}" for i in (0, 2) for p in ("bias", "weight")]]
    )
    images, ids, mask = inputs()
    expected = {}
    tokens = hf_swin_tokens(state, images)
    text = hf_text(state, prefix, ids, mask)
    full = torch.ones(tokens.shape[:2], dtype=torch.long)
    fused = official_fusion(state, prefix, text, mask, tokens, full)
    expected["image_tokens"] = tokens
    expected["text_hidden"] = text
    expected["fused"] = fused
    expected["itm"] = official_mlp(state, "itm_head.", fused[:, 0])
    expected["boxes"] = official_mlp(state, "bbox_head.", fused[:, 0]).sigmoid()
    expected["image_feat"] = F.normalize(_lin(state, "vision_proj.", tokens[:, 0]), dim=-1)
    expected["text_feat"] = F.normalize(_lin(state, "text_proj.", text[:, 0]), dim=-1)
    with torch.no_grad():
        got = {
            "image_tokens": net.encode_image(images),
            "text_hidden": net.encode_text(ids, mask),
        }
        got["fused"] = net.fuse(got["text_hidden"], mask, got["image_tokens"], full)
        got["itm"] = net.itm_logits(got["image_tokens"], full, got["text_hidden"], mask)
        got["boxes"] = net.predict_boxes(images, ids[:, None], mask[:, None])[:, 0]
        got["image_feat"] = net.embed_images(images)
        got["text_feat"] = net.text_features(got["text_hidden"][:, 0])
        scores = net.match_scores(images, ids, mask)
    # padded text positions are not compared: their values depend on the padding rule only
    real = mask.bool()
    for name in ("text_hidden", "fused"):
        expected[name], got[name] = expected[name][real], got[name][real]
    differences = {name: float((got[name] - expected[name]).abs().max()) for name in expected}
    assert max(differences.values()) <= TOLERANCE, sorted(differences.items())
    assert torch.allclose(scores, expected["itm"][:, 1] - expected["itm"][:, 0], atol=TOLERANCE)
    assert math.isclose(float(net.itc_scale().detach()), 1 / 0.05, rel_tol=1e-6)
    if layout == "pretrain":
        mlm = "text_encoder.cls.predictions."
        transformed = _ln(state, mlm + "transform.LayerNorm.", F.gelu(_lin(state, mlm + "transform.dense.", fused)))
        official_logits = transformed @ state[mlm + "decoder.weight"].t() + state[mlm + "bias"]
        with torch.no_grad():
            ours = net.mlm_head(net.fuse(net.encode_text(ids, mask), mask, net.encode_image(images), full))
        assert float((ours[real] - official_logits[real]).abs().max()) <= TOLERANCE * max(
            1.0, float(official_logits.abs().max())
        )


def test_region_concept_follows_the_swin_grid():
    """Boxes map to the 4 x 4 grid of the last Swin stage (stride 8 at 32 px); the region's
    [CLS] is the mean of the tokens inside and its cross-attention sees only them (X-VLM)."""
    state = official_state()
    net, _ = converted_network(state)
    assert net.grid_hw == (4, 4) and net.image_encoder.patch_size == 8
    images, ids, mask = inputs()
    # pixels x 0..16, y 8..16: columns 0-1 of row 1 -> tokens 4, 5
    boxes = torch.tensor([[[0.25, 0.375, 0.5, 0.25]], [[0.25, 0.375, 0.5, 0.25]]])
    inside = torch.zeros(16, dtype=torch.bool)
    inside[[4, 5]] = True
    assert torch.equal(net.region_patch_masks(boxes[:, 0]), inside.expand(B, -1))
    tokens = hf_swin_tokens(state, images)
    region_cls = tokens[:, 1:][:, inside].mean(dim=1)
    with torch.no_grad():
        pairs = net.build_pairs(
            net.encode_image(images), boxes=boxes, box_input_ids=ids[:, None], box_attention_mask=mask[:, None]
        )
        itm = net.itm_logits(pairs.concept_tokens, pairs.concept_mask, pairs.text_hidden, pairs.text_mask)
    assert float((pairs.concept_tokens[:, 0] - region_cls).abs().max()) <= TOLERANCE
    region_feat = F.normalize(_lin(state, "vision_proj.", region_cls), dim=-1)
    assert float((pairs.concept_feat - region_feat).abs().max()) <= TOLERANCE
    image_atts = torch.cat((torch.ones(B, 1, dtype=torch.long), inside.long().expand(B, -1)), dim=1)
    official_tokens = torch.cat((region_cls.unsqueeze(1), tokens[:, 1:]), dim=1)
    text = hf_text(state, "text_encoder.bert.", ids, mask)
    fused = official_fusion(state, "text_encoder.bert.", text, mask, official_tokens, image_atts)
    assert float((itm - official_mlp(state, "itm_head.", fused[:, 0])).abs().max()) <= TOLERANCE


def save(state, path, wrap=False):
    torch.save({"model": state, "epoch": 3, "config": {"temp": 0.07}} if wrap else state, path)
    return str(path)


def test_cli_reports_every_key_and_the_file_loads_into_the_registered_model(mmf_registry, tmp_path, capsys):
    extra = {
        "text_encoder.bert.pooler.dense.weight": torch.randn(HIDDEN, HIDDEN),
        "text_decoder.cls.predictions.bias": torch.randn(VOCAB),
        "vision_encoder.head.weight": torch.randn(10, VISION_WIDTH),
    }
    state = {**official_state(), **extra}
    source = save(state, tmp_path / "official.th", wrap=True)
    out = tmp_path / "ours.pth"
    assert cli_main(["convert", "xvlm", "--from", source, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for name in extra:
        assert f"unmatched: {name}" in printed
    for name in (
        "vision_encoder.layers.0.blocks.1.attn.attn_mask",
        "text_encoder.cls.predictions.decoder.weight",
        "text_encoder.cls.predictions.decoder.bias",
        "text_encoder.bert.embeddings.position_ids",
    ):
        assert f"derived: {name}" in printed
    _, report = convert.convert(safe_torch_load(source), source=source)
    mapped = {official for official, _ in report.mapped}
    assert sorted(report.unmatched) == sorted(extra)
    assert mapped | set(report.derived) | set(report.unmatched) == set(state)
    assert len(mapped) == len(report.mapped) == len(state) - len(extra) - 4

    # the converted file through the trainer's resume_pretrained path: every parameter set
    model = build_xvlm(mmf_registry, **our_config()).eval()
    missing, unexpected = load_model_state(model, safe_torch_load(str(out)), strict=False, source=str(out))
    assert missing == [] and unexpected == []
    assert torch.equal(model.cross_encoder.split, torch.tensor([TEXT_LAYERS, FUSION_LAYERS]))
    images, ids, mask = inputs()
    with torch.no_grad():
        assert float((model.encode_image(images) - hf_swin_tokens(state, images)).abs().max()) <= TOLERANCE


def test_a_changed_tied_copy_or_buffer_is_unmatched_not_derived():
    state = official_state()
    state["text_encoder.cls.predictions.decoder.weight"] = state["text_encoder.cls.predictions.decoder.weight"] + 1
    state["vision_encoder.layers.0.blocks.1.attn.attn_mask"] = torch.zeros(4, 16, 16)
    _, report = convert.convert(state)
    assert sorted(report.unmatched) == [
        "text_encoder.cls.predictions.decoder.weight",
        "vision_encoder.layers.0.blocks.1.attn.attn_mask",
    ]


def test_other_files_are_refused_by_name(tmp_path):
    ours = tmp_path / "ours_already.pth"
    torch.save(XVLMNetwork(our_config()).state_dict(), ours)
    assert not convert.is_official(safe_torch_load(str(ours)))
    with pytest.raises(ValueError, match=r"ours_already\.pth is not an official X-VLM(.|\n)*cross_encoder"):
        convert.convert_file(str(ours), str(tmp_path / "out.pth"))
    # an X-VLM trained with CLIP-ViT or DeiT: named, not half converted
    state = {k: v for k, v in official_state().items() if not k.startswith("vision_encoder.")}
    state["vision_encoder.pos_embed.weight"] = torch.zeros(17, 48)
    clip = save(state, tmp_path / "xvlm_clip.th")
    assert convert.is_official(safe_torch_load(clip))
    with pytest.raises(ValueError, match=r"xvlm_clip\.th: only X-VLM checkpoints with a Swin(.|\n)*pos_embed"):
        convert.convert_file(clip, str(tmp_path / "out.pth"))


@pytest.mark.parametrize(
    "config, key, option",
    [
        ({"key_value_width": "text"}, "crossattention.self.key.weight", "key_value_width: vision"),
        ({"hidden": 48}, "cross_encoder.layers.0", "text_encoder"),
    ],
)
def test_a_model_of_another_size_is_refused_with_the_option(config, key, option):
    net = XVLMNetwork(our_config(**config))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(ValueError, match=rf"official_base\.th(.|\n)*{key}(.|\n)*{option}"):
        convert.load_official(net, official_state(), source="official_base.th")
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # nothing loaded


def test_default_xvlm_is_unchanged_by_the_swin_options():
    net = XVLMNetwork(our_config(key_value_width="text"))
    assert isinstance(net.vision_to_cross, torch.nn.Linear)  # 48 -> 32, shared by the fusion layers
    assert net.cross_encoder.layers[0].crossattention.self.key.in_features == HIDDEN
    with pytest.raises(ValueError, match="window_size"):
        XVLMNetwork({**our_config(), "image_encoder": {**our_config()["image_encoder"], "window_size": 3}})


def _trainer_resuming_from(source, model, tmp_path, written):
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    checkpoint = {"resume": False, "resume_file": source, "resume_pretrained": False, "allow_unsafe_load": False}
    return SimpleNamespace(
        config=OmegaConf.create({"checkpoint": checkpoint}),
        model=model,
        writer=SimpleNamespace(write=lambda text, level="info": written.append(text)),
        _checkpoint_paths=lambda: {"current": str(tmp_path / "current.ckpt")},
    )


def test_resume_file_in_official_layout_is_converted_by_the_trainer(mmf_registry, tmp_path):
    """checkpoint.resume_file pointing at an official X-VLM file: the trainer converts, then loads."""
    from mmf_fashion.trainers.fashion_trainer import FashionTrainer

    state = official_state(layout="finetuned")
    source = save(state, tmp_path / "official.th", wrap=True)
    written = []
    trainer = _trainer_resuming_from(source, build_xvlm(mmf_registry, **our_config()).eval(), tmp_path, written)
    FashionTrainer._load_checkpoint_if_any(trainer)
    assert source in written[0]
    images, _, _ = inputs()
    with torch.no_grad():
        assert float((trainer.model.encode_image(images) - hf_swin_tokens(state, images)).abs().max()) <= TOLERANCE

    # the same file into another model is refused by name, not silently half loaded
    other = _trainer_resuming_from(source, torch.nn.Linear(2, 2), tmp_path, written)
    with pytest.raises(ValueError, match="none of the converted keys belong to this model"):
        FashionTrainer._load_checkpoint_if_any(other)
