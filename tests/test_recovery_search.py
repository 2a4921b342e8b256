"""The search's budget, restarts, starts, geometry and stopping: what a user of recover() relies on."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from recovery import LatentSpec, RecoveryError, RecoverySettings, recover, sample_generated, wrap_generator
from recovery.models import DCGAN
from recovery.objective import LOSSES
from recovery.optim import CONVERGED_STOPS, NONFINITE, StopRules, Task
from recovery.optimizers import make_optimizer
from recovery.settings import LOSSES as LOSS_CHOICES
from recovery.settings import OPTIMIZERS

torch.set_num_threads(2)


def _dcgan(seed: int, nz: int = 8) -> DCGAN:
    torch.manual_seed(seed)
    net = DCGAN(nz=nz, ngf=8, nc=1, size=16)
    net.train()
    with torch.no_grad():
        for _ in range(5):
            net(torch.randn(32, nz) * 1.5)
    return net.eval()


@pytest.fixture(scope="module")
def g():
    return wrap_generator(_dcgan(0), latent=LatentSpec((8,)), device="cpu")


@pytest.fixture(scope="module")
def unreachable():
    """Another generator's images: no latent of g reproduces them, so every start stalls or converges above 1e-3."""
    other = wrap_generator(_dcgan(1), latent=LatentSpec((8,)), device="cpu")
    ids = [f"u{i}" for i in range(6)]
    return ids, sample_generated(other, ids, seed=2)[1]


def test_paper_protocol_is_one_unscreened_start_of_50_iterations(g, unreachable):
    ids, x = unreachable
    t = recover(g, x, ids, settings=RecoverySettings(protocol="paper", keep_trace=True))
    assert t.column("restarts").to_pylist() == [1] * len(ids)
    assert max(t.column("iterations").to_pylist()) <= 50
    assert all(len(tr) == n + 1 for tr, n in zip(t.column("trace").to_pylist(), t.column("iterations").to_pylist()))
    assert RecoverySettings(protocol="paper").plan().screening == 1


def test_adaptive_search_restarts_unrecovered_images_within_the_budget(g, unreachable):
    ids, x = unreachable
    budget = 200
    t = recover(g, x, ids, settings=RecoverySettings(budget=budget))
    evaluations = t.column("evaluations").to_numpy()
    assert (evaluations <= budget).all()
    assert (t.column("mse").to_numpy() > 1e-3).all()  # unreachable: none recovered ...
    assert (t.column("restarts").to_numpy() > 1).all()  # ... so each one started again ...
    assert (evaluations >= budget - 16 - 10).all()  # ... until its budget could not pay for another screened start
    assert t.column("evaluations_to_exact").null_count == len(ids)


def test_a_recovered_image_stops_and_records_when(g):
    ids = [f"g{i}" for i in range(6)]
    _, x = sample_generated(g, ids, seed=1)
    t = recover(g, x, ids, settings=RecoverySettings(budget=400))
    mse = t.column("mse").to_numpy()
    assert (mse < 1e-4).all()  # stop_mse: ended as recovered
    assert set(t.column("stop").to_pylist()) == {"exact"} and all(t.column("converged").to_pylist())
    to_exact = t.column("evaluations_to_exact").to_numpy()
    assert (to_exact >= 1).all() and (to_exact <= t.column("evaluations").to_numpy()).all()
    deeper = recover(g, x, ids, settings=RecoverySettings(budget=400, stop_mse=0.0))
    assert np.median(deeper.column("mse").to_numpy()) < 1e-2 * np.median(mse)  # 0: on to float32 precision


def test_screening_starts_closer_than_a_single_draw(g, unreachable):
    ids, x = unreachable
    first = {k: recover(g, x, ids, settings=RecoverySettings(protocol="paper", iterations=1, screening=k, keep_trace=True))
             for k in (1, 32)}
    start = {k: np.array([tr[0] for tr in t.column("trace").to_pylist()]) for k, t in first.items()}
    assert np.median(start[32]) < np.median(start[1])


def test_shell_geometry_keeps_latents_on_the_sqrt_d_sphere(g, unreachable):
    ids, x = unreachable
    t = recover(g, x, ids, settings=RecoverySettings(geometry="shell", budget=60, keep_latent=True))
    np.testing.assert_allclose(t.column("latent_norm").to_numpy(), 1.0, rtol=1e-5)
    z = np.stack(t.column("latent").to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), np.sqrt(8), rtol=1e-5)
    sphere = wrap_generator(_dcgan(0), latent=LatentSpec((8,), "sphere"), device="cpu")
    with pytest.raises(RecoveryError, match="recovery.geometry: 'shell' is for a normal prior"):
        recover(sphere, x, ids, settings=RecoverySettings(geometry="shell"))


def test_latent_penalty_pulls_recoveries_towards_the_prior(g, unreachable):
    ids, x = unreachable
    s = dict(protocol="paper", iterations=30)
    free = recover(g, x, ids, settings=RecoverySettings(**s))
    held = recover(g, x, ids, settings=RecoverySettings(latent_penalty=1.0, **s))
    assert np.median(held.column("latent_norm").to_numpy()) < np.median(free.column("latent_norm").to_numpy())
    # the reported error is the loss alone, without the penalty that was optimized with it
    np.testing.assert_allclose(held.column("error").to_numpy(), held.column("mse").to_numpy())


def _run(method: str, evaluate, start: torch.Tensor, **rules):
    """One task through a slot optimizer on a synthetic objective."""
    base = dict(exact_level=1e-3, patience=20, stall_ratio=0.5, tolerance=1e-5, stop_mse=0.0)
    opt = make_optimizer(method, evaluate, start.numel(), slots=1, lr=None, history=5,
                         rules=StopRules(**{**base, **rules}), keep_trace=True, trace_length=200, device=torch.device("cpu"))
    tasks, done = [Task(0, 0, start, None, 200)], []
    opt.run(lambda k: [tasks.pop()] if tasks else [], done.append)
    return done[0]


def _quadratic(nan_where=None):
    """loss = |u - 3|^2 / D per point, NaN where nan_where(u) holds."""

    def evaluate(u, index):
        f = (u - 3.0).square().mean(1)
        g = 2 * (u - 3.0) / u.shape[1]
        if nan_where is not None:
            bad = nan_where(u)
            f = torch.where(bad, torch.full_like(f, float("nan")), f)
        return f, f.detach(), f.detach(), g, [None] * len(u)

    return evaluate


def test_a_line_search_that_only_meets_nan_is_not_converged():
    start = torch.zeros(4)
    result = _run("lbfgs", _quadratic(lambda u: (u - start).abs().amax(1) > 0), start)  # finite only at the start
    assert result.stop == NONFINITE and not result.converged
    assert result.loss == pytest.approx(9.0)


@pytest.mark.parametrize("method", ["adam", "sgd", "lbfgs"])
def test_nan_regions_reset_the_slot_and_it_still_converges(method):
    result = _run(method, _quadratic(lambda u: u[:, 0] > 3.5), torch.zeros(4))  # NaN just past the minimum
    assert result.loss < 1e-3 * 9.0, (method, result.stop, result.loss)
    assert np.isfinite(result.trace.numpy()).all()


def test_registries_cover_the_config_choices():
    from recovery.first_order import Adam, SGD
    from recovery.lbfgs import LBFGS

    assert set(LOSSES) == set(LOSS_CHOICES)
    kinds = {m: type(make_optimizer(m, _quadratic(), 2, slots=1, lr=None, history=2, keep_trace=False, trace_length=1,
                                    rules=StopRules(1e-3, 5, 0.5, 1e-5, 0.0), device=torch.device("cpu"))) for m in OPTIMIZERS}
    assert kinds == {"lbfgs": LBFGS, "adam": Adam, "sgd": SGD}
    assert set(CONVERGED_STOPS) == {"exact", "converged", "no descent"}


@pytest.mark.parametrize("field,value,match", [
    ("protocol", "fast", "recovery.protocol: 'fast' is not one of adaptive, paper"),
    ("budget", 0, "recovery.budget: must be >= 1"),
    ("screening", 0, "recovery.screening: must be >= 1"),
    ("stop_mse", 0.01, "recovery.stop_mse: must be in"),
    ("geometry", "torus", "recovery.geometry: 'torus' is not one of free, shell"),
    ("latent_penalty", -1.0, "recovery.latent_penalty: must be >= 0"),
    ("stall_ratio", 1.5, "recovery.stall_ratio"),
])
def test_bad_search_settings_name_the_field(field, value, match):
    with pytest.raises(RecoveryError, match=match):
        RecoverySettings(**{field: value})


def test_explicit_fields_override_the_protocol():
    plan = RecoverySettings(protocol="paper", iterations=200, restarts=4).plan()
    assert (plan.iterations, plan.restarts, plan.screening, plan.budget) == (200, 4, 1, None)
    adaptive = RecoverySettings().plan()
    assert adaptive.iterations is None and adaptive.restarts is None and adaptive.budget >= 100
    fixed = RecoverySettings(restarts=4).plan()
    assert (fixed.restarts, fixed.iterations, fixed.budget) == (4, 50, None)  # a fixed count is not cut by a budget
    assert RecoverySettings(iterations=5).plan().restarts == 1


def test_a_learned_start_is_trained_on_samples_only_and_starts_closer(g):
    from recovery import train_encoder

    ids = [f"e{i}" for i in range(8)]
    _, x = sample_generated(g, ids, seed=9)
    settings = RecoverySettings(protocol="paper", iterations=1, start="encoder", keep_trace=True)
    encoder = train_encoder(g, settings=settings, steps=300, seed=0)
    again = train_encoder(g, settings=settings, steps=300, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(encoder.state_dict().values(), again.state_dict().values()))
    learned = recover(g, x, ids, settings=settings, encoder=encoder)
    prior = recover(g, x, ids, settings=RecoverySettings(protocol="paper", iterations=1, keep_trace=True))
    start = {k: np.array([tr[0] for tr in t.column("trace").to_pylist()]) for k, t in (("e", learned), ("p", prior))}
    assert np.median(start["e"]) < 0.5 * np.median(start["p"])
    assert (learned.column("evaluations").to_numpy() >= 2).all()  # the guess and the draw were both scored
    with pytest.raises(RecoveryError, match="recovery.start: 'encoder' needs an encoder"):
        recover(g, x, ids, settings=settings)
    with pytest.raises(RecoveryError, match="is 'prior', so the encoder passed would be ignored"):
        recover(g, x, ids, settings=replace(settings, start="prior"), encoder=encoder)
    auto = recover(g, x, ids, settings=replace(settings, start="auto"), encoder=encoder)  # auto + an encoder: used
    assert auto.drop_columns(["seconds"]).equals(learned.drop_columns(["seconds"]))
