"""recovery/: what a user relies on when calling recover() on one device."""

from __future__ import annotations

import io

import numpy as np
import pyarrow.compute as pc
import pytest
import torch
from PIL import Image

from recovery import (
    GeneratorSpec,
    ImageError,
    LatentSpec,
    OperatorSpec,
    RecoveryError,
    RecoverySettings,
    load_generator,
    recover,
    render,
    sample_generated,
    target_shape,
    to_png,
    to_target,
    wrap_generator,
)
from recovery.models import DCGAN

torch.set_num_threads(2)
LATENT = LatentSpec((16, 1, 1), "normal")


def make_dcgan(seed: int = 0, nz: int = 16, nc: int = 3) -> DCGAN:
    """A built-in DCGAN with non-trivial batch-norm running statistics."""
    torch.manual_seed(seed)
    net = DCGAN(nz=nz, ngf=16, nc=nc, size=32)
    net.train()
    with torch.no_grad():
        for _ in range(10):
            net(torch.randn(32, nz) * 1.5)
    return net.eval()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("g") / "dcgan.pt"
    torch.save({"g_ema": make_dcgan().state_dict(), "step": 3}, path)
    return str(path)


@pytest.fixture(scope="module")
def g(checkpoint):
    spec = GeneratorSpec(
        builtin="dcgan", kwargs={"nz": 16, "ngf": 16, "nc": 3, "size": 32}, checkpoint=checkpoint, checkpoint_key="g_ema", latent=LATENT
    )
    return load_generator(spec, device="cpu")


@pytest.fixture(scope="module")
def unreachable(g):
    """Images of another generator: not exactly recoverable, so errors sit at a real minimum, not at float noise."""
    other = wrap_generator(make_dcgan(seed=1), latent=LATENT, device="cpu")
    ids = [f"real-{i}" for i in range(32)]
    return ids, sample_generated(other, ids, seed=4)[1]


@pytest.fixture(scope="module")
def generated(g):
    ids = [f"gen-{i}" for i in range(32)]
    z0, x = sample_generated(g, ids, seed=3)
    return ids, z0, x


def drop_seconds(t):
    return t.drop_columns(["seconds"])


# -- the method works -----------------------------------------------------------------------------


def test_generated_images_are_recovered(g, generated):
    ids, _, x = generated
    t = recover(g, x, ids)  # the default: adaptive restarts within a budget
    assert t.num_rows == 32 and t.column("image_id").to_pylist() == ids
    mse = t.column("mse").to_numpy()
    assert (mse < 1e-3).mean() >= 0.95 and np.median(mse) < 1e-4
    to_exact = t.column("evaluations_to_exact").to_numpy(zero_copy_only=False)
    assert (to_exact[mse < 1e-3] <= t.column("evaluations").to_numpy()[mse < 1e-3]).all()
    assert pc.all(pc.is_null(t.column("failure"))).as_py()


def test_image_alone_equals_image_in_batch_of_32(g, unreachable):
    ids, x = unreachable
    batch = recover(g, x, ids, settings=RecoverySettings(batch_size=32, budget=150))  # screened, adaptive restarts
    assert (batch.column("restarts").to_numpy() > 1).any()
    for k in (0, 17):
        alone = recover(g, x[k : k + 1], ids[k : k + 1], settings=RecoverySettings(batch_size=1, budget=150))
        np.testing.assert_allclose(alone.column("error")[0].as_py(), batch.column("error")[k].as_py(), rtol=1e-6)
        for name in ("iterations", "restarts", "evaluations", "best_restart"):
            assert alone.column(name)[0].as_py() == batch.column(name)[k].as_py(), name


def test_result_does_not_depend_on_batch_size_or_order(g, unreachable):
    ids, x = unreachable
    ids, x = ids[:12], x[:12]
    a = recover(g, x, ids, settings=RecoverySettings(batch_size=5, budget=150))
    perm = list(reversed(range(12)))
    b = recover(g, x[perm], [ids[i] for i in perm], settings=RecoverySettings(batch_size=12, budget=150))
    b = b.take(perm)
    np.testing.assert_allclose(a.column("error").to_numpy(), b.column("error").to_numpy(), rtol=1e-6)
    assert a.column("iterations").to_pylist() == b.column("iterations").to_pylist()


def test_same_seed_same_table_other_seed_other_starts(g, generated):
    ids, _, x = generated
    s = RecoverySettings(iterations=5, restarts=2, seed=7, keep_latent=True)
    assert drop_seconds(recover(g, x[:6], ids[:6], settings=s)).equals(drop_seconds(recover(g, x[:6], ids[:6], settings=s)))
    other = recover(g, x[:6], ids[:6], settings=RecoverySettings(iterations=5, restarts=2, seed=8, keep_latent=True))
    assert not drop_seconds(other).equals(drop_seconds(recover(g, x[:6], ids[:6], settings=s)))


@pytest.mark.parametrize("optimizer,iterations", [("lbfgs", 10), ("adam", 40), ("sgd", 40)])
def test_each_optimizer_lowers_the_loss(g, generated, optimizer, iterations):
    ids, _, x = generated
    s = RecoverySettings(protocol="paper", optimizer=optimizer, iterations=iterations, keep_trace=True)
    t = recover(g, x[:8], ids[:8], settings=s)
    for trace, err in zip(t.column("trace").to_pylist(), t.column("error").to_pylist()):
        assert err < 0.5 * trace[0], (optimizer, trace[0], err)
        assert err == pytest.approx(min(v for v in trace if v == v), rel=1e-6)


def test_more_restarts_never_worse_and_adaptive_saves_restarts(g, generated):
    ids, _, x = generated
    one = recover(g, x[:8], ids[:8], settings=RecoverySettings(protocol="paper", iterations=4, restarts=1))
    four = recover(g, x[:8], ids[:8], settings=RecoverySettings(protocol="paper", iterations=4, restarts=4))
    assert (four.column("error").to_numpy() <= one.column("error").to_numpy() + 1e-12).all()
    assert four.column("restarts").to_pylist() == [4] * 8
    threshold = float(np.median(one.column("error").to_numpy()))
    s = RecoverySettings(protocol="paper", iterations=4, restarts=4, adaptive_threshold=threshold)
    adaptive = recover(g, x[:8], ids[:8], settings=s)
    runs = np.array(adaptive.column("restarts").to_pylist())
    first_ok = one.column("error").to_numpy() <= threshold
    assert (runs[first_ok] == 1).all() and (runs[~first_ok] > 1).all()


def test_recovered_latent_renders_the_reported_error(g, generated):
    ids, _, x = generated
    t = recover(g, x[:4], ids[:4], settings=RecoverySettings(iterations=8, keep_latent=True))
    z = torch.tensor(np.stack(t.column("latent").to_numpy(zero_copy_only=False)))
    mse = (render(g, z) - x[:4]).square().flatten(1).mean(1).double().numpy()
    np.testing.assert_allclose(mse, t.column("mse").to_numpy(), rtol=1e-4)
    np.testing.assert_allclose(t.column("psnr").to_numpy(), 10 * np.log10(4 / mse), rtol=1e-4)


def test_sphere_prior_latents_stay_on_the_sphere():
    g = wrap_generator(make_dcgan(nz=8), latent=LatentSpec((8,), "sphere"), device="cpu")
    ids = ["a", "b", "c"]
    _, x = sample_generated(g, ids, seed=0)
    t = recover(g, x, ids, settings=RecoverySettings(iterations=10, keep_latent=True))
    norms = np.linalg.norm(np.stack(t.column("latent").to_numpy(zero_copy_only=False)), axis=1)
    np.testing.assert_allclose(norms, 1.0, rtol=1e-5)


# -- operators and losses on inputs with a known answer ---------------------------------------------


def test_operators_and_losses_known_answers(g):
    c, h, w = g.output_shape
    x = torch.zeros(1, c, h, w)
    y = torch.zeros(1, c, h, w)
    y[:, :, :4, :4] = 1.0  # differs only in the top-left 4x4 block
    from recovery.objective import absolute_error, build_operator, squared_error

    ident = build_operator(OperatorSpec("identity"), (c, h, w), torch.device("cpu"))
    assert squared_error(ident(x), ident(y), ident.count).item() == pytest.approx(16 / (h * w))
    assert absolute_error(ident(x), ident(y), ident.count).item() == pytest.approx(16 / (h * w))
    inside = build_operator(OperatorSpec("mask", boxes=((0, 0, 8, 8),)), (c, h, w), torch.device("cpu"))
    assert squared_error(inside(x), inside(y), inside.count).item() == pytest.approx(16 / 64)
    outside = build_operator(OperatorSpec("mask", boxes=((8, 8, 8, 8),)), (c, h, w), torch.device("cpu"))
    assert squared_error(outside(x), outside(y), outside.count).item() == 0.0
    pool = build_operator(OperatorSpec("pool", factor=4), (c, h, w), torch.device("cpu"))
    assert pool(y).shape == (1, c, h // 4, w // 4)
    assert squared_error(pool(x), pool(y), pool.count).item() == pytest.approx(1 / (h * w / 16))  # one pooled pixel of 1.0
    sub = torch.zeros(1, c, h, w)
    sub[:, :, 0::2, 0::2] = 1.0  # mean 0.25 everywhere once pooled by 2: invisible to a coarse audit of a flat 0.25 image
    pool2 = build_operator(OperatorSpec("pool", factor=2), (c, h, w), torch.device("cpu"))
    assert squared_error(pool2(sub), pool2(torch.full_like(sub, 0.25)), pool2.count).item() == pytest.approx(0.0, abs=1e-12)


def test_mask_recovery_ignores_pixels_outside_the_boxes(g, generated):
    ids, _, x = generated
    damaged = x[:4].clone()
    damaged[:, :, 16:, :] = 1.0  # bottom half destroyed
    s_mask = RecoverySettings(operator=OperatorSpec("mask", boxes=((0, 0, 16, 32),)), iterations=30, restarts=2)
    t_mask = recover(g, damaged, ids[:4], settings=s_mask)
    t_full = recover(g, damaged, ids[:4], settings=RecoverySettings(iterations=30, restarts=2))
    assert np.median(t_mask.column("error").to_numpy()) < 1e-3
    assert np.median(t_full.column("error").to_numpy()) > 10 * np.median(t_mask.column("error").to_numpy())


def test_features_loss_needs_and_uses_a_feature_net(g, generated):
    ids, _, x = generated
    with pytest.raises(RecoveryError, match="feature"):
        recover(g, x[:2], ids[:2], settings=RecoverySettings(loss="features"))
    feat = torch.nn.Sequential(torch.nn.AvgPool2d(2), torch.nn.Flatten())
    t = recover(g, x[:2], ids[:2], settings=RecoverySettings(loss="features", iterations=10), feature_net=feat)
    assert (t.column("error").to_numpy() < t.column("mse").to_numpy() * 1.0001).all()  # pooled features forgive detail


def test_audit_resolution_pools_the_generator_output(g, generated):
    ids, _, x = generated
    s = RecoverySettings(resolution=16, iterations=20)
    assert target_shape(g, s) == (3, 16, 16)
    small = torch.nn.functional.avg_pool2d(x[:3], 2)
    t = recover(g, small, ids[:3], settings=s)
    assert np.median(t.column("mse").to_numpy()) < 1e-3
    with pytest.raises(RecoveryError, match="recovery.resolution"):
        target_shape(g, RecoverySettings(resolution=64))


# -- robustness: a failing generator touches only its own images ----------------------------------


class Flaky(torch.nn.Module):
    """Returns NaN (or raises) for latents whose first coordinate is above 1.0."""

    def __init__(self, inner, mode):
        super().__init__()
        self.inner, self.mode = inner, mode

    def forward(self, z):
        out = self.inner(z)
        bad = z.reshape(len(z), -1)[:, 0] > 1.0
        if bad.any() and self.mode == "raise":
            raise ValueError("latent out of the model's domain")
        return torch.where(bad[:, None, None, None], torch.full_like(out, float("nan")), out)


@pytest.mark.parametrize("mode", ["nan", "raise"])
def test_failing_latents_do_not_touch_neighbours(mode):
    clean = make_dcgan(nz=8)
    g_clean = wrap_generator(clean, latent=LatentSpec((8,)), device="cpu")
    ids = [f"i{k}" for k in range(16)]
    _, x = sample_generated(g_clean, ids, seed=5)
    flaky = Flaky(clean, mode)
    flaky.inner.eval()
    from recovery.loaded import LoadedGenerator

    g = LoadedGenerator(flaky.eval(), g_clean.spec, g_clean.output_shape, torch.device("cpu"))
    s = RecoverySettings(protocol="paper", iterations=15)  # unscreened starts, so some land where G fails
    batch = recover(g, x, ids, settings=s)
    failed = batch.column("failure").is_valid().to_numpy(zero_copy_only=False)
    assert failed.any() and not failed.all()  # some starts land in the bad region, some do not
    assert np.isnan(batch.column("error").to_numpy()[failed]).all()
    if mode == "raise":
        assert all("latent out of the model's domain" in r for r in batch.column("failure").drop_null().to_pylist())
    for k in np.flatnonzero(~failed)[:3]:
        alone = recover(g, x[k : k + 1], ids[k : k + 1], settings=s)
        assert alone.column("error")[0].as_py() == pytest.approx(batch.column("error")[int(k)].as_py(), rel=1e-6)


# -- bad generators are refused with a clear message ------------------------------------------------


def _spec(checkpoint, **kw):
    base = dict(builtin="dcgan", kwargs={"nz": 16, "ngf": 16, "nc": 3, "size": 32}, checkpoint=checkpoint, checkpoint_key="g_ema", latent=LATENT)
    base.update(kw)
    return GeneratorSpec(**base)


def test_bad_generator_specs_are_refused(checkpoint, tmp_path):
    with pytest.raises(RecoveryError, match="exactly one of torchscript, factory, builtin"):
        GeneratorSpec(latent=LATENT)
    with pytest.raises(RecoveryError, match="generator.latent.prior"):
        LatentSpec((8,), "cauchy")
    with pytest.raises(RecoveryError, match="generator.builtin: 'stylegan9' is not one of dcgan"):
        load_generator(_spec(checkpoint, builtin="stylegan9"), device="cpu")
    with pytest.raises(RecoveryError, match="file not found"):
        load_generator(_spec(str(tmp_path / "missing.pt")), device="cpu")
    with pytest.raises(RecoveryError, match="checkpoint_key: 'G' not in .*g_ema"):
        load_generator(_spec(checkpoint, checkpoint_key="G"), device="cpu")
    with pytest.raises(RecoveryError, match="does not fit builtin dcgan"):
        load_generator(_spec(checkpoint, kwargs={"nz": 16, "ngf": 8, "nc": 3, "size": 32}), device="cpu")
    with pytest.raises(RecoveryError, match="forward pass .* failed.*generator.latent.shape"):
        load_generator(_spec(checkpoint, latent=LatentSpec((20,))), device="cpu")
    with pytest.raises(RecoveryError, match="outside the declared generator.output_range"):
        load_generator(_spec(checkpoint, output_range=(0, 0.5)), device="cpu")
    with pytest.raises(RecoveryError, match="cannot import 'nosuchpkg.mod:G'"):
        load_generator(GeneratorSpec(factory="nosuchpkg.mod:G", latent=LATENT), device="cpu")


def test_pickled_checkpoint_needs_trust(tmp_path):
    path = tmp_path / "pickled.pt"
    torch.save({"g_ema": make_dcgan(), "note": object.__new__(Flaky)}, path)  # arbitrary objects need pickle
    with pytest.raises(RecoveryError, match="weights_only=True.*trust_checkpoint: true"):
        load_generator(_spec(str(path)), device="cpu")
    g = load_generator(_spec(str(path), trust_checkpoint=True), device="cpu")
    assert g.output_shape == (3, 32, 32)


def test_batch_dependent_and_nan_generators_are_refused():
    net = make_dcgan(nz=8).train()  # batch norm in training mode couples the batch
    from recovery.generators import _check
    from recovery.loaded import LoadedGenerator

    loaded = LoadedGenerator(net, GeneratorSpec(latent=LatentSpec((8,)), factory="x:y"), (0, 0, 0), torch.device("cpu"))
    with pytest.raises(RecoveryError, match="depends on the rest of its batch"):
        _check(loaded, "train-mode dcgan")

    class NaNs(torch.nn.Module):
        def forward(self, z):
            return torch.full((len(z), 1, 8, 8), float("nan"))

    with pytest.raises(RecoveryError, match="not finite"):
        wrap_generator(NaNs(), latent=LatentSpec((4,)), device="cpu")


def test_torchscript_from_an_fsspec_url_and_caller_model_untouched():
    import fsspec

    net = make_dcgan(nz=8, nc=1)
    scripted = torch.jit.script(net)
    buf = io.BytesIO()
    torch.jit.save(scripted, buf)
    with fsspec.open("memory://models/g.pt", "wb") as f:
        f.write(buf.getvalue())
    g = load_generator(GeneratorSpec(torchscript="memory://models/g.pt", latent=LatentSpec((8,))), device="cpu")
    assert g.output_shape == (1, 32, 32)
    with pytest.raises(RecoveryError, match="neither a TorchScript file nor a torch.export program"):
        with fsspec.open("memory://models/junk.pt", "wb") as f:
            f.write(b"not a model")
        load_generator(GeneratorSpec(torchscript="memory://models/junk.pt", latent=LatentSpec((8,))), device="cpu")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    wrap_generator(net.eval(), latent=LatentSpec((8,)), device="cpu")
    assert all(p.requires_grad for p in net.parameters())  # the caller's model is not frozen or moved
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


# -- targets into the generator's space -------------------------------------------------------------


def png(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def test_to_target_channel_rules_and_range():
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[..., 0] = 255
    t = to_target(png(rgb), shape=(1, 32, 32))  # red -> luma 0.299
    assert torch.allclose(t, torch.full_like(t, 0.299 * 2 - 1), atol=2 / 255)
    gray = np.full((32, 32), 255, np.uint8)
    t = to_target(png(gray), shape=(3, 32, 32), output_range=(0, 1))
    assert t.shape == (3, 32, 32) and torch.allclose(t, torch.ones_like(t))
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., 1] = 255  # green, fully transparent: alpha is dropped
    t = to_target(png(rgba), shape=(3, 32, 32), output_range=(0, 1))
    assert torch.allclose(t[1], torch.ones(32, 32)) and torch.allclose(t[0], torch.zeros(32, 32))
    deep = np.full((32, 32), 32768, np.uint16)  # 16-bit keeps its precision
    t = to_target(png(deep), shape=(1, 32, 32), output_range=(0, 1))
    assert torch.allclose(t, torch.full_like(t, 32768 / 65535), atol=1e-6)
    arr = np.arange(32 * 32, dtype=np.uint16).reshape(32, 32).astype(np.uint8)
    assert torch.allclose(to_target(arr, shape=(1, 32, 32)), to_target(png(arr), shape=(1, 32, 32)))


def test_to_target_resizes_shorter_side_and_center_crops():
    img = np.zeros((64, 96), np.uint8)
    img[:, 8:88] = 255  # white except 8-pixel black bands at the far left and right
    t = to_target(png(img), shape=(1, 32, 32), output_range=(0, 1))
    assert t.shape == (1, 32, 32) and t.min() > 0.99  # 64 -> 32 high, 96 -> 48 wide, center 32 kept: no black band
    tall = to_target(png(np.ascontiguousarray(img.T)), shape=(1, 32, 32), output_range=(0, 1))
    assert tall.min() > 0.99


def test_bad_images_raise_image_errors():
    good = png(np.zeros((32, 32), np.uint8))
    with pytest.raises(ImageError, match="smaller than the audit resolution"):
        to_target(png(np.zeros((8, 8), np.uint8)), shape=(1, 32, 32))
    assert to_target(png(np.zeros((8, 8), np.uint8)), shape=(1, 32, 32), upscale=True).shape == (1, 32, 32)
    with pytest.raises(ImageError, match="truncated|not a decodable"):
        to_target(good[: len(good) // 2], shape=(1, 32, 32))
    with pytest.raises(ImageError, match="not a decodable image"):
        to_target(b"hello, not an image", shape=(1, 32, 32))
    with pytest.raises(ImageError, match="empty"):
        to_target(b"", shape=(1, 32, 32))
    with pytest.raises(ImageError, match="dtype float32"):
        to_target(np.zeros((32, 32), np.float32), shape=(1, 32, 32))


def test_to_png_round_trips_8_bit_images(g, generated):
    _, _, x = generated
    data = to_png(x[0], output_range=(-1, 1))
    back = to_target(data, shape=(3, 32, 32))
    assert (back - x[0]).abs().max() <= 1 / 255 + 1e-6


def test_torch_export_program_and_factory_generators(tmp_path):
    net = make_dcgan(nz=8, nc=1)
    program = torch.export.export(net, (torch.randn(2, 8),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, tmp_path / "g.pt2")
    g = load_generator(GeneratorSpec(torchscript=str(tmp_path / "g.pt2"), latent=LatentSpec((8,))), device="cpu")
    z = torch.randn(3, 8)
    assert torch.allclose(g(z), net(z), atol=1e-5)
    torch.save(net.state_dict(), tmp_path / "state.pt")
    spec = GeneratorSpec(
        factory="recovery.models.dcgan:DCGAN", kwargs={"nz": 8, "ngf": 16, "nc": 1, "size": 32}, checkpoint=str(tmp_path / "state.pt"), latent=LatentSpec((8,))
    )
    assert torch.allclose(load_generator(spec, device="cpu")(z), net(z), atol=1e-6)
