"""The VQ-VAE image tokenizer: codes shape and range, the image encoder's grid,
learning, frozen loading from the files the fashion_vqvae model writes."""

import pytest
import torch
from tiny_models import VQVAE_TINY as TINY
from tiny_models import build_model, vqvae_batch, vqvae_config
from tiny_models import vqvae_images as images

from mmf_fashion.modules.encoders import build_image_encoder
from mmf_fashion.modules.vqvae import VQVAE, VQTokenizer, load_frozen_tokenizer


def test_codes_have_the_grid_shape_and_codebook_range():
    torch.manual_seed(0)
    vqvae = VQVAE(**TINY)
    codes = vqvae.encode_codes(images(size=64))
    assert codes.dtype == torch.long and codes.shape == (4, 16)  # 64 / 16 = 4 -> 4x4 grid
    assert int(codes.min()) >= 0 and int(codes.max()) < 16
    out = vqvae(images(size=64))
    assert out["reconstruction"].shape == (4, 3, 64, 64) and out["codes"].shape == (4, 4, 4)


def test_the_tokenizer_grid_matches_the_image_encoder_grid():
    """MPFC predicts one code per grid cell: same stride as the ResNet (32)."""
    encoder = build_image_encoder("resnet18")
    vqvae = VQVAE(**{**TINY, "downsample": 32})
    for size in (64, 96):
        grid = encoder(torch.zeros(1, 3, size, size)).shape[-2:]
        assert vqvae.encode_codes(torch.zeros(1, 3, size, size)).shape[1] == grid[0] * grid[1]


def test_bad_options_and_sizes_are_refused():
    with pytest.raises(ValueError, match="power of two"):
        VQVAE(downsample=24)
    with pytest.raises(ValueError, match="unknown options"):
        VQVAE(codebook=12)
    with pytest.raises(ValueError, match="not divisible by downsample 16"):
        VQVAE(**TINY).encode_codes(torch.zeros(1, 3, 40, 40))


def test_training_reduces_the_reconstruction_error_and_moves_the_codebook_by_ema():
    torch.manual_seed(0)
    vqvae = VQVAE(**TINY)
    # flat-coloured images with a bright square: compressible, unlike noise
    generator = torch.Generator().manual_seed(1)
    batch = torch.rand(8, 3, 1, 1, generator=generator).expand(8, 3, 32, 32).clone() * 2 - 1
    batch[::2, :, 8:24, 8:24] = 1.0
    assert not any(name.startswith("quantizer._codebook") for name, _ in vqvae.named_parameters())
    codebook = vqvae.quantizer.codebook.clone()
    optimizer = torch.optim.Adam(vqvae.parameters(), lr=3e-3)
    first = None
    for _ in range(30):
        out = vqvae(batch)
        loss = out["reconstruction_loss"] + out["commitment_loss"]
        first = first if first is not None else float(out["reconstruction_loss"])
        optimizer.zero_grad()
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in vqvae.parameters())
        optimizer.step()
    assert float(vqvae(batch)["reconstruction_loss"]) < 0.8 * first
    assert not torch.equal(codebook, vqvae.quantizer.codebook)


def test_encode_codes_never_updates_the_codebook_even_in_training_mode():
    vqvae = VQVAE(**TINY).train()
    state = {k: v.clone() for k, v in vqvae.state_dict().items()}
    first = vqvae.encode_codes(images())
    assert torch.equal(first, vqvae.encode_codes(images()))
    assert all(torch.equal(state[k], v) for k, v in vqvae.state_dict().items())
    assert vqvae.quantizer.training


@pytest.mark.parametrize("layout", ["mmf_checkpoint", "final_pth", "plain_state_dict"])
def test_frozen_loading_gives_the_same_codes(tmp_path, layout):
    torch.manual_seed(0)
    vqvae = VQVAE(**TINY)
    vqvae(images())  # one EMA step so the codebook differs from a fresh one
    vqvae.eval()
    prefixed = {"vqvae." + k: v for k, v in vqvae.state_dict().items()}
    content = {
        "mmf_checkpoint": {
            "model": prefixed,
            "num_updates": 3,
            "config": {"model_config": {"fashion_vqvae": dict(TINY)}},
        },
        "final_pth": prefixed,
        "plain_state_dict": vqvae.state_dict(),
    }[layout]
    path = tmp_path / "vq.pth"
    torch.save(content, path)
    config = None if layout == "mmf_checkpoint" else TINY  # the MMF checkpoint carries its config
    tokenizer = load_frozen_tokenizer(str(path), config)
    assert isinstance(tokenizer, VQTokenizer) and tokenizer.codebook_size == 16
    assert not any(p.requires_grad for p in tokenizer.parameters())
    tokenizer.train()
    assert not tokenizer.training and not tokenizer.vqvae.quantizer.training
    assert torch.equal(tokenizer.encode_codes(images(seed=3)), vqvae.encode_codes(images(seed=3)))


def test_loading_errors_name_the_file_and_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_frozen_tokenizer(str(tmp_path / "missing.pth"), TINY)
    path = tmp_path / "vq.pth"
    torch.save(VQVAE(**TINY).state_dict(), path)
    with pytest.raises(ValueError, match="does not match the VQVAE config"):
        load_frozen_tokenizer(str(path), {**TINY, "codebook_size": 32})
    other = tmp_path / "other.pth"
    torch.save({"model": {"encoder.weight": torch.zeros(2)}}, other)
    with pytest.raises(ValueError, match="no VQ-VAE weights"):
        load_frozen_tokenizer(str(other), TINY)


def test_fashion_vqvae_model_trains_through_mmf_and_its_final_file_loads(mmf_registry, tmp_path):
    # finite gradients and the state_dict round trip: tests/test_registry.py
    config = vqvae_config()
    model = build_model(mmf_registry, "fashion_vqvae", config)
    output = model(vqvae_batch())
    assert set(output["losses"]) == {"train/fashiongen/reconstruction", "train/fashiongen/commitment"}
    assert 1.0 <= float(output["perplexity"]) <= 16.0
    path = tmp_path / "fashion_vqvae_final.pth"
    torch.save(model.state_dict(), path)  # what the trainer writes at the end
    tokenizer = load_frozen_tokenizer(str(path), config)
    model.eval()
    assert torch.equal(tokenizer.encode_codes(images(seed=5)), model.encode_codes(images(seed=5)))


def test_commitment_loss_is_the_weighted_distance_to_the_chosen_codes_in_both_modes():
    torch.manual_seed(0)
    # no dead-code re-seeding: at the first step it copies batch latents into the codebook
    vqvae = VQVAE(**{**TINY, "commitment_weight": 0.5, "dead_code_threshold": 0})
    for training in (True, False):
        vqvae.train(training)
        batch = images(seed=7)
        codebook = vqvae.quantizer.codebook.detach().clone()  # before this step's EMA update
        out = vqvae(batch)
        latent = vqvae.encoder(batch).detach()
        chosen = codebook[out["codes"]].permute(0, 3, 1, 2)
        expected = 0.5 * ((latent - chosen) ** 2).mean()
        assert float(out["commitment_loss"]) > 0
        assert torch.allclose(out["commitment_loss"], expected, rtol=1e-4, atol=1e-6)
