"""Every path that reads a torch file written by someone else refuses a file
whose unpickling would run code, and says which file and how to opt in.

The malicious file holds an object whose unpickling creates a marker file
(the stand-in for any code an attacker would run). One list of LOADERS is
walked: the mmf-fashion commands (through cli.main.main, the converters included), the model builder,
the trainer's resume paths, the VQ tokenizer, the image encoder weights, the
FashionBERT patch cache and shortlist towers, the index embeddings file and
MMF's own checkpoint readers. Each must fail, name the file and both
spellings of the opt-in, and leave no marker. The last tests show that the
opt-in does load a trusted file that is not weights-only.
"""

import json
import pathlib
import pickle
import types

import pytest
import torch
from omegaconf import OmegaConf

from mmf_fashion.cli.main import main
from mmf_fashion.trainers import checkpointing as ckpt

OPT_INS = ("checkpoint.allow_unsafe_load=True", "--allow-unsafe-load")
TINY_TEXT = {
    "name": "tiny",
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 64,
}
TINY_MODEL = "test_safe_loading_tiny"


class TouchMarker:
    """Unpickling it touches `marker`: what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = pathlib.Path(marker)

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


class Harmless:
    """A trusted object that is not a tensor: only a full unpickling rebuilds it."""

    def __init__(self, text):
        self.text = text


def test_the_payload_is_live(tmp_path):
    """Plain unpickling does run it, so the refusals below are not vacuous."""
    marker = tmp_path / "pwned"
    pickle.loads(pickle.dumps(TouchMarker(marker)))
    assert marker.exists()


# ------------------------------------------------------------------ helpers
@pytest.fixture
def env(tmp_path, capsys, request, restore_mmf_state):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save(
        {
            "model": {"weight": torch.zeros(2)},
            "config": {"model": "align"},
            "features": {},
            "signature": {},
            "payload": TouchMarker(marker),
        },
        evil,
    )
    texts = tmp_path / "texts.txt"
    texts.write_text("red dress\nblue jeans\n")
    return types.SimpleNamespace(tmp=tmp_path, evil=evil, marker=marker, texts=texts, capsys=capsys, request=request)


def error_of(call) -> str:
    with pytest.raises(Exception) as raised:
        call()
    return str(raised.value)


def cli_error(env, *argv) -> str:
    code = main([str(arg) for arg in argv])
    captured = env.capsys.readouterr()
    assert code != 0, captured.out + captured.err
    return captured.err


def torch_index(path, model_info=None):
    from mmf_fashion.retrieval import EmbeddingIndex

    index = EmbeddingIndex(
        torch.eye(2, 4), [{"text": "a"}, {"text": "b"}], modality="text", model_info=model_info or {}, backend="torch"
    )
    index.save(path)
    return path


class TrainerStub:
    """What FashionTrainer._load_checkpoint_if_any reads, without a training run."""

    def __init__(self, save_dir, **checkpoint):
        from mmf_fashion.trainers.fashion_trainer import FashionTrainer

        section = {
            "resume": False,
            "resume_file": None,
            "resume_pretrained": False,
            "pretrained_state_mapping": {},
            "allow_unsafe_load": False,
            "reset": {"all": False, "optimizer": False, "counts": False},
        }
        section.update(checkpoint)
        self.config = OmegaConf.create({"model": "align", "checkpoint": section})
        self.save_dir = str(save_dir)
        self.model = torch.nn.Linear(2, 2)
        self.writer = types.SimpleNamespace(write=lambda *args, **kwargs: None)
        self.resumed = []
        self._checkpoint_paths = types.MethodType(FashionTrainer._checkpoint_paths, self)
        self.load = types.MethodType(FashionTrainer._load_checkpoint_if_any, self)

    def _resume_from(self, state, source):
        self.resumed.append((state, source))


# ------------------------------------------------------------------ loaders
# Each loader feeds the malicious file to one path and returns
# (the error message, the file the message must name).
def load_safe_torch_load(env):
    return error_of(lambda: ckpt.safe_torch_load(env.evil)), env.evil


def load_index_build_checkpoint(env):
    return cli_error(
        env,
        "index",
        "build",
        "--checkpoint",
        env.evil,
        "--texts",
        env.texts,
        "--out",
        env.tmp / "x.index",
        "--no-progress",
    ), env.evil


def load_index_build_image_weights(env):
    # a file the model reads while it builds: the command's decision reaches it
    return cli_error(
        env,
        "index",
        "build",
        "--model",
        "align",
        "--set",
        "image_encoder=mobilenet_v3_small",
        "--set",
        f"image_pretrained={env.evil}",
        "--set",
        "embed_dim=16",
        "--texts",
        env.texts,
        "--out",
        env.tmp / "x.index",
        "--no-progress",
    ), env.evil


def load_index_search_stored_checkpoint(env):
    # the sidecar of someone else's index may name any checkpoint
    index = torch_index(env.tmp / "ok.index", {"name": "align", "checkpoint": str(env.evil)})
    return cli_error(env, "index", "search", "--index", index, "--text", "red"), env.evil


def _evil_embeddings(env):
    path = torch_index(env.tmp / "bad.index")
    path.write_bytes(env.evil.read_bytes())
    return path


def load_index_search_embeddings_file(env):
    path = _evil_embeddings(env)
    return cli_error(env, "index", "search", "--index", path, "--text", "red"), path


def load_embedding_index_load(env):
    from mmf_fashion.retrieval import EmbeddingIndex

    path = _evil_embeddings(env)
    return error_of(lambda: EmbeddingIndex.load(path)), path


def load_plot_embeddings(env):
    world = env.request.getfixturevalue("synthetic_world")
    config = env.tmp / "tiny.yaml"
    config.write_text(
        "dataset_config:\n  fashiongen:\n    processors:\n"
        "      image_processor: {params: {size: 32}}\n      text_processor: {params: {max_length: 16}}\n"
        "training:\n  device: cpu\n"
    )
    return cli_error(
        env,
        "plot",
        "embeddings",
        "--config",
        config,
        "--model",
        "align",
        "--dataset",
        "fashiongen",
        "--checkpoint",
        env.evil,
        "--out",
        env.tmp / "x.png",
        f"env.data_dir={world}",
    ), env.evil


def load_build_model_from_config(env):
    from mmf_fashion import runtime

    config = OmegaConf.create({"model": "align", "model_config": {"align": {"image_encoder": "mobilenet_v3_small"}}})
    return error_of(lambda: runtime.build_model_from_config(config, checkpoint=str(env.evil))), env.evil


def load_trainer_resume_current(env):
    save_dir = env.tmp / "save"
    save_dir.mkdir()
    (save_dir / "current.ckpt").write_bytes(env.evil.read_bytes())
    stub = TrainerStub(save_dir, resume=True)
    message = error_of(stub.load)
    assert stub.resumed == []
    return message, save_dir / "current.ckpt"


def load_trainer_resume_file(env):
    return error_of(TrainerStub(env.tmp, resume_file=str(env.evil)).load), env.evil


def load_trainer_resume_pretrained(env):
    return error_of(TrainerStub(env.tmp, resume_file=str(env.evil), resume_pretrained=True).load), env.evil


def load_vq_tokenizer(env):
    from mmf_fashion.modules.vqvae import load_frozen_tokenizer

    return error_of(lambda: load_frozen_tokenizer(str(env.evil))), env.evil


def load_image_encoder_weights(env):
    from mmf_fashion.modules.encoders import build_image_encoder

    return error_of(lambda: build_image_encoder("mobilenet_v3_small", pretrained=str(env.evil))), env.evil


def load_patch_cache(env):
    from mmf_fashion.modules.fashionbert_patches import PatchFeatureCache

    return error_of(lambda: PatchFeatureCache(str(env.evil), {"encoder": "resnet18"})), env.evil


def load_fashionbert_shortlist(env):
    from mmf_fashion.models.fashionbert import ShortlistTowers

    config = {
        "image_encoder": "mobilenet_v3_small",
        "text_encoder": TINY_TEXT,
        "embed_dim": 16,
        "checkpoint": str(env.evil),
    }
    return error_of(lambda: ShortlistTowers(config)), env.evil


def load_mmf_load_pretrained_model(env):
    from mmf.utils.checkpoint import load_pretrained_model

    return error_of(lambda: load_pretrained_model(str(env.tmp))), env.evil  # the folder holds evil.pth


def load_mmf_checkpoint_class(env):
    from mmf.utils.checkpoint import Checkpoint

    return error_of(lambda: Checkpoint._torch_load(types.SimpleNamespace(device="cpu"), str(env.evil))), env.evil


def load_convert_fashionvil(env):
    return cli_error(env, "convert", "fashionvil", "--from", env.evil, "--out", env.tmp / "out.pth"), env.evil


def load_convert_xvlm(env):
    return cli_error(env, "convert", "xvlm", "--from", env.evil, "--out", env.tmp / "out.pth"), env.evil


LOADERS = [
    load_safe_torch_load,
    load_convert_fashionvil,
    load_convert_xvlm,
    load_index_build_checkpoint,
    load_index_build_image_weights,
    load_index_search_stored_checkpoint,
    load_index_search_embeddings_file,
    load_embedding_index_load,
    load_plot_embeddings,
    load_build_model_from_config,
    load_trainer_resume_current,
    load_trainer_resume_file,
    load_trainer_resume_pretrained,
    load_vq_tokenizer,
    load_image_encoder_weights,
    load_patch_cache,
    load_fashionbert_shortlist,
    load_mmf_load_pretrained_model,
    load_mmf_checkpoint_class,
]


@pytest.mark.parametrize("loader", LOADERS, ids=[f.__name__[len("load_") :] for f in LOADERS])
def test_a_malicious_file_is_refused_everywhere(env, loader):
    message, named = loader(env)
    assert not env.marker.exists(), f"{loader.__name__} ran the file's code"
    assert str(named) in message, message
    for opt_in in OPT_INS:
        assert opt_in in message, message


def test_missing_and_broken_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth: no such file"):
        ckpt.safe_torch_load(tmp_path / "nope.pth")
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="broken.pth: not a readable torch file"):
        ckpt.safe_torch_load(broken)


# ------------------------------------------------------------------ the opt-in
@pytest.fixture
def tiny_model_registered(mmf_registry):
    """A registered model with a text embedding, cheap to build."""
    from mmf.models.base_model import BaseModel

    if mmf_registry.get_model_class(TINY_MODEL) is None:

        class TinyTextModel(BaseModel):
            def build(self):
                self.proj = torch.nn.Linear(3, int(self.config.get("dim", 4)), bias=False)

            def embed_texts(self, texts):
                lengths = torch.tensor([[len(t), t.count(" "), 1.0] for t in texts], dtype=torch.float)
                return self.proj(lengths)

        mmf_registry.register_model(TINY_MODEL)(TinyTextModel)
    return TINY_MODEL


def test_the_opt_in_loads_a_trusted_file(env, tiny_model_registered):
    trusted = env.tmp / "trusted.pth"
    weights = {"proj.weight": torch.arange(12.0).view(4, 3)}
    torch.save({"model": weights, "config": {"model": TINY_MODEL}, "note": Harmless("trusted")}, trusted)

    # the function: refused by default, loaded with the explicit opt-in
    with pytest.raises(ckpt.UnsafeCheckpointError):
        ckpt.safe_torch_load(trusted)
    with pytest.warns(UserWarning, match="full unpickling"):
        state = ckpt.safe_torch_load(trusted, allow_unsafe=True)
    assert state["note"].text == "trusted" and torch.equal(state["model"]["proj.weight"], weights["proj.weight"])

    # the commands: --allow-unsafe-load is passed down, and an index does not remember it
    out = env.tmp / "x.index"
    build = [
        "index",
        "build",
        "--checkpoint",
        trusted,
        "--texts",
        env.texts,
        "--out",
        out,
        "--backend",
        "torch",
        "--no-progress",
    ]
    assert "--allow-unsafe-load" in cli_error(env, *build)
    assert main([str(a) for a in build + ["--allow-unsafe-load"]]) == 0
    assert f"with '{TINY_MODEL}'" in env.capsys.readouterr().out
    search = ["index", "search", "--index", out, "--text", "red dress", "--json"]
    assert str(trusted) in cli_error(env, *search)
    assert main([str(a) for a in search + ["--allow-unsafe-load"]]) == 0
    hits = json.loads(env.capsys.readouterr().out)
    assert [hit["text"] for hit in hits][0] == "red dress"

    # mmf_run: checkpoint.allow_unsafe_load=true in the config
    stub = TrainerStub(env.tmp, resume_file=str(trusted))
    with pytest.raises(ckpt.UnsafeCheckpointError):
        stub.load()
    stub = TrainerStub(env.tmp, resume_file=str(trusted), allow_unsafe_load=True)
    stub.load()
    assert stub.resumed[0][0]["note"].text == "trusted"


def test_the_decision_of_a_build_reaches_the_files_it_reads(tmp_path):
    """A loader inside a model build (here image encoder weights) follows the
    builder's decision, and only within that build."""
    import torchvision

    from mmf_fashion.modules.encoders import build_image_encoder

    weights = tmp_path / "encoder.pth"
    state = torchvision.models.get_model("mobilenet_v3_small", weights=None).state_dict()
    torch.save({**state, "note": Harmless("trusted")}, weights)
    with pytest.raises(ckpt.UnsafeCheckpointError):
        build_image_encoder("mobilenet_v3_small", pretrained=str(weights))
    with ckpt.unsafe_loading(True), pytest.warns(UserWarning, match="full unpickling"):
        encoder = build_image_encoder("mobilenet_v3_small", pretrained=str(weights))
    assert encoder is not None
    assert ckpt.unsafe_load_allowed(OmegaConf.create({"checkpoint": {}})) is False
    assert ckpt.unsafe_load_allowed(OmegaConf.create({"checkpoint": {"allow_unsafe_load": "false"}})) is False
    assert ckpt.unsafe_load_allowed(OmegaConf.create({"checkpoint": {"allow_unsafe_load": True}})) is True
