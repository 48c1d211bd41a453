"""Device checks: run by benchmarks/gpu_check.py on a machine with CUDA; skipped elsewhere.

Every comparison with the CPU is exact only where the arithmetic is exact
(quarter-valued embeddings), and within a tolerance otherwise.
"""

import pytest
import torch
from tiny_models import align_batch, align_config, build_model

from mmf_fashion.metrics import ranking as R

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def quarter(n, seed, dim=8):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-3, 4, (n, dim), generator=g).float() / 4


def test_chunked_ranking_on_the_gpu_equals_the_cpu():
    queries, gallery = quarter(300, 0), quarter(500, 1)
    query_labels, gallery_labels = torch.arange(300) % 97, torch.arange(500) % 97
    cpu = R.first_positive_ranks(queries, gallery, query_labels, gallery_labels, chunk_size=64)
    gpu = R.first_positive_ranks(
        queries.cuda(), gallery.cuda(), query_labels.cuda(), gallery_labels.cuda(), chunk_size=64
    )
    assert torch.equal(gpu.cpu(), cpu)


def test_bf16_training_step_on_the_gpu_is_finite_and_close_to_fp32_on_the_cpu(mmf_registry):
    model = build_model(mmf_registry, "align", align_config(label_smoothing=0.0)).train()
    batch = align_batch()
    reference = float(model(batch)["losses"]["train/fashiongen/itc"])
    model = model.cuda().to(memory_format=torch.channels_last)
    with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
        loss = model(batch.to("cuda"))["losses"]["train/fashiongen/itc"]
    loss.float().backward()
    assert abs(float(loss) - reference) < 0.05 * max(1.0, abs(reference))
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
