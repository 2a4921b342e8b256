"""Check memaudit's StyleGAN2-ADA / StyleGAN3 pickle support against NVlabs' own code, on CPU.

    python experiments/check_stylegan_pickle.py --repo /path/to/stylegan2-ada-pytorch   # or a stylegan3 checkout

NVlabs' code is not part of memaudit (its license does not allow it), so this is a script, not a test: it puts
the checkout on the path, builds small random-weight networks with its `training.networks.Generator` and
`Discriminator` (16x16, unconditional and 3-class conditional), pickles them as its training loop does
({'G', 'D', 'G_ema', ...}), loads them back through recovery (generator.pickle, discriminator.pickle) and
prints, per search space, the MSE of recovering 3 of the generator's own images (W and Z below 1e-4 expected),
the optimized-noise search, and D's scores (per_image: True for StyleGAN's minibatch-std layer). Random
weights overshoot [-1, 1], so output_range is widened to [-10, 10] here; trained networks stay near [-1, 1].
"""

from __future__ import annotations

import argparse
import copy
import pickle
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recovery import ClassesSpec, GeneratorSpec, RecoverySettings, generated_labels, load_generator, recover, sample_generated  # noqa: E402
from recovery.discriminator import DiscriminatorSpec, load_discriminator  # noqa: E402

RANGE = (-10.0, 10.0)


def build(repo: Path, folder: Path, c_dim: int) -> Path:
    """A small network pickle written with NVlabs' classes."""
    sys.path.insert(0, str(repo))
    from training.networks import Discriminator, Generator  # noqa: PLC0415 - from the checkout given

    torch.manual_seed(c_dim)
    g = Generator(z_dim=16, c_dim=c_dim, w_dim=32, img_resolution=16, img_channels=3, mapping_kwargs={"num_layers": 2},
                  synthesis_kwargs={"channel_base": 512, "channel_max": 64, "num_fp16_res": 0})
    d = Discriminator(c_dim=c_dim, img_resolution=16, img_channels=3, channel_base=512, channel_max=64, num_fp16_res=0)
    with torch.no_grad():
        for m in g.modules():
            if hasattr(m, "noise_strength"):
                m.noise_strength.fill_(0.3)  # trained networks have non-zero noise; fresh ones start at 0
    path = folder / f"network-c{c_dim}.pkl"
    path.write_bytes(pickle.dumps({"G": g, "D": d, "G_ema": copy.deepcopy(g).eval(), "training_set_kwargs": None,
                                   "augment_pipe": None}))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repo", type=Path, required=True, help="a stylegan2-ada-pytorch or stylegan3 checkout")
    args = ap.parse_args()
    ids = ["image-0", "image-1", "image-2"]
    with tempfile.TemporaryDirectory() as tmp:
        plain, conditional = build(args.repo, Path(tmp), 0), build(args.repo, Path(tmp), 3)
        for space, noise in (("w", "const"), ("w_plus", "const"), ("z", "const"), ("w", "optimize")):
            g = load_generator(GeneratorSpec(pickle=str(plain), trust_checkpoint=True, space=space, noise=noise, output_range=RANGE),
                               device="cpu")
            _, x = sample_generated(g, ids, seed=0)
            t = time.perf_counter()
            mse = recover(g, x, ids, settings=RecoverySettings(batch_size=3)).column("mse").to_pylist()
            print(f"{space:<7} noise {noise:<9} latent {list(g.latent.shape)}: MSE {', '.join(f'{m:.1e}' for m in mse)}"
                  f" ({time.perf_counter() - t:.1f} s)")
        d = load_discriminator(DiscriminatorSpec(pickle=str(plain), trust_checkpoint=True), input_shape=g.output_shape)
        print(f"D scores {[round(float(s), 3) for s in d.score(x)]}, per_image {d.per_image}")
        classes = ClassesSpec(("a", "b", "c"))
        gc = load_generator(GeneratorSpec(pickle=str(conditional), trust_checkpoint=True, classes=classes, output_range=RANGE), device="cpu")
        labels = generated_labels(gc, ids, seed=0)
        _, x = sample_generated(gc, ids, seed=0)
        mse = recover(gc, x, ids, settings=RecoverySettings(batch_size=3), labels=labels).column("mse").to_pylist()
        dc = load_discriminator(DiscriminatorSpec(pickle=str(conditional), trust_checkpoint=True), input_shape=gc.output_shape,
                                classes=classes)
        print(f"conditional (c_dim 3), w: MSE {', '.join(f'{m:.1e}' for m in mse)}; D(x, c) {[round(float(s), 3) for s in dc.score(x, labels)]}")


if __name__ == "__main__":
    main()
