"""`projection.init: lstsq`: the ridge fit recovers a known linear map (checked against numpy's least squares), and
stage 1 started from it begins at a lower distillation loss than from a random P."""

import json

import numpy as np
import pytest
import torch
from corpus import make_pairs
from test_trainer import TINY, _train

from mimo_ds.config import ConfigError, load_config
from mimo_ds.projection_init import ridge_fit


def _linear_data(seed: int, n: int, d_in: int, d_out: int, noise: float):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d_in)) * rng.uniform(0.2, 3.0, size=d_in) + rng.normal(size=d_in)
    weight, bias = rng.normal(size=(d_out, d_in)), rng.normal(size=d_out)
    y = x @ weight.T + bias + noise * rng.normal(size=(n, d_out))
    return x, y, weight, bias


@pytest.mark.parametrize("seed, n, d_in, d_out", [(0, 301, 23, 17), (1, 97, 41, 29)])
def test_a_tiny_ridge_recovers_the_map_numpy_lstsq_finds(seed, n, d_in, d_out):
    x, y, weight, bias = _linear_data(seed, n, d_in, d_out, noise=0.01)
    fitted_w, fitted_b = ridge_fit(torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32), 1e-9)
    solution = np.linalg.lstsq(np.hstack([x, np.ones((n, 1))]), y, rcond=None)[0]
    np.testing.assert_allclose(fitted_w.numpy(), solution[:-1].T, atol=2e-4)
    np.testing.assert_allclose(fitted_b.numpy(), solution[-1], atol=2e-4)
    np.testing.assert_allclose(fitted_w.numpy(), weight, atol=0.02)  # the map itself, within the noise
    np.testing.assert_allclose(fitted_b.numpy(), bias, atol=0.05)


def test_the_ridge_penalty_is_the_augmented_least_squares_one():
    """With λ > 0 the fit solves min ‖[x 1]β − y‖² + λ‖W‖²: least squares on rows √λ·I (bias column 0) appended."""
    x, y, _, _ = _linear_data(2, 53, 31, 11, noise=0.5)
    ridge = 0.3
    centred = x - x.mean(axis=0)
    lam = ridge * np.trace(centred.T @ centred) / x.shape[1]
    design = np.vstack([np.hstack([x, np.ones((len(x), 1))]),
                        np.hstack([np.sqrt(lam) * np.eye(x.shape[1]), np.zeros((x.shape[1], 1))])])
    target = np.vstack([y, np.zeros((x.shape[1], y.shape[1]))])
    solution = np.linalg.lstsq(design, target, rcond=None)[0]
    fitted_w, fitted_b = ridge_fit(torch.tensor(x), torch.tensor(y), ridge)
    np.testing.assert_allclose(fitted_w.numpy(), solution[:-1].T, atol=1e-5)
    np.testing.assert_allclose(fitted_b.numpy(), solution[-1], atol=1e-5)


def test_lstsq_is_refused_for_stage_two():
    with pytest.raises(ConfigError, match="projection.init: lstsq fits P on stage-1 pairs"):
        load_config(TINY / "stage2_mimo.yaml", ["projection.init=lstsq"])


@pytest.mark.slow
def test_stage_one_from_lstsq_starts_at_a_lower_loss(tmp_path):
    """The tiny recipe's stage 1 at 2 ranks under ZeRO-3 (random 2-layer student and teacher, synthetic
    translations): the first step's loss (computed before any update) with the fitted P against the same run with
    nn.Linear's random P."""
    pairs = make_pairs(tmp_path / "pairs", n=96)
    first = {}
    for init in ("random", "lstsq"):
        out = tmp_path / init
        history = _train(2, "stage1.yaml", [f"data.train={pairs}", f"output_dir={out}", "max_steps=1",
                                            f"projection.init={init}", "projection.samples=64"])
        first[init] = history[0]["loss/total"]
        assert json.loads((out / "mimo_ds_student.json").read_text())["steps"] == 1
    assert first["lstsq"] < 0.8 * first["random"], first
