"""Style-based generators: W and W+ recovery on the bundled trained StyleGAN2-like generator, and loading.

The subject is jobs/assets/models/style/style-digits.pt (experiments/train_style.py): mapping MLP, modulated
convolutions, noise inputs, GAN-trained on the digits. Its generated images must be recovered to the
exact-recovery level (MSE 1e-3) in W and in W+, whichever route it is loaded by.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

from recovery import GeneratorSpec, LatentSpec, RecoveryError, RecoverySettings, load_generator, recover, sample_generated
from recovery.models.style import StyleGenerator

STYLE = Path(__file__).resolve().parents[1] / "jobs" / "assets" / "models" / "style"
ENTRY = json.loads((STYLE / "models.json").read_text())["style-digits.pt"]
IDS = [f"generated-{i}" for i in range(4)]
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")


def spec(**kw) -> GeneratorSpec:
    return GeneratorSpec(factory=ENTRY["factory"], kwargs=ENTRY["kwargs"], checkpoint=str(STYLE / "style-digits.pt"), **kw)


def trained() -> StyleGenerator:
    g = StyleGenerator(**ENTRY["kwargs"])
    g.load_state_dict(torch.load(STYLE / "style-digits.pt", weights_only=True))
    return g.eval()


@pytest.mark.parametrize("space", ["w", "w_plus"])
def test_generated_images_are_recovered_exactly(space):
    g = load_generator(spec(space=space), device="cpu")
    assert g.space == space and g.latent.prior == "mapped"
    assert g.latent.shape == ((64,) if space == "w" else (ENTRY["num_ws"], 64))
    _, x = sample_generated(g, IDS, seed=0)
    table = recover(g, x, IDS, settings=RecoverySettings(batch_size=4))
    mse = table.column("mse").to_pylist()
    assert max(mse) < 1e-3, mse  # the exact-recovery level (DESIGN.md §1)


def test_w_start_is_the_mapping_w_avg():
    g = load_generator(spec(), device="cpu")
    torch.testing.assert_close(g.anchor, trained().mapping.w_avg)
    # Without the buffer, the mean of 10^4 mapped draws; the exported buffer is such a mean (other draws).
    module = trained()
    module.mapping.w_avg.zero_()
    from recovery import wrap_generator

    mean = wrap_generator(module, latent=None, device="cpu").anchor
    assert float((mean - trained().mapping.w_avg).norm() / mean.norm()) < 0.05


def test_routes_load_the_same_generator(tmp_path):
    """Factory + checkpoint, TorchScript mapping + synthesis, and a network pickle give the same images."""
    module = trained()
    torch.jit.save(torch.jit.script(module.mapping), str(tmp_path / "mapping.pt"))
    torch.jit.save(torch.jit.script(module.synthesis), str(tmp_path / "synthesis.pt"))
    (tmp_path / "network.pkl").write_bytes(pickle.dumps({"G_ema": module, "D": torch.nn.Linear(1, 1)}))
    routes = [
        spec(),
        GeneratorSpec(torchscript={"mapping": str(tmp_path / "mapping.pt"), "synthesis": str(tmp_path / "synthesis.pt")}),
        GeneratorSpec(pickle=str(tmp_path / "network.pkl"), trust_checkpoint=True),
    ]
    images = []
    for s in routes:
        g = load_generator(s, device="cpu")
        images.append(sample_generated(g, IDS[:3], seed=1)[1])
    torch.testing.assert_close(images[1], images[0])
    torch.testing.assert_close(images[2], images[0])


def test_pickles_need_trust_and_name_torch_utils(tmp_path):
    with pytest.raises(RecoveryError, match="trust_checkpoint: true"):
        GeneratorSpec(pickle="network-snapshot-025000.pkl")
    # What a StyleGAN2-ADA pickle references first; the repository is not on this path.
    path = tmp_path / "network.pkl"
    path.write_bytes(b"\x80\x02ctorch_utils.persistence\n_reconstruct_persistent_obj\n)R.")
    with pytest.raises(RecoveryError, match=r"torch_utils.*dnnlib.*PYTHONPATH"):
        load_generator(GeneratorSpec(pickle=str(path), trust_checkpoint=True), device="cpu")
    (tmp_path / "other.pkl").write_bytes(pickle.dumps({"G": trained()}))
    with pytest.raises(RecoveryError, match="pickle_key: 'G_ema' is not in .* it has G"):
        load_generator(GeneratorSpec(pickle=str(tmp_path / "other.pkl"), trust_checkpoint=True), device="cpu")


def test_w_space_needs_a_mapping_network():
    dcgan = GeneratorSpec(builtin="dcgan", kwargs={"nz": 8, "ngf": 8, "nc": 1, "size": 8}, latent=LatentSpec((8,)), space="w")
    with pytest.raises(RecoveryError, match="generator.space: 'w' needs a style-based generator"):
        load_generator(dcgan, device="cpu")


def test_optimized_noise_is_per_image():
    """noise: optimize searches each image's own noise maps: a row does not depend on its batch neighbours."""
    g = load_generator(spec(noise="optimize"), device="cpu")
    noise = sum(h * w for h, w in g.module.shape.noise_shapes)
    assert g.latent.shape == (64 + noise,)
    _, x = sample_generated(g, IDS[:2], seed=2)
    settings = RecoverySettings(iterations=8, restarts=1, screening=2, batch_size=2)
    together = recover(g, x, IDS[:2], settings=settings)
    alone = recover(g, x[1:], IDS[1:2], settings=settings)
    assert together.column("mse")[1].as_py() == pytest.approx(alone.column("mse")[0].as_py(), rel=1e-4)
    assert together.column("mse")[1].as_py() < 1e-2
