"""Fixtures for vsdm-eval's forecast metrics, computed by GluonTS itself.

    python -m venv /tmp/glvenv && /tmp/glvenv/bin/pip install gluonts==0.17.0 pandas numpy scoringrules==0.10.0
    /tmp/glvenv/bin/python crates/vsdm-eval/scripts/gluonts_fixtures.py > crates/vsdm-eval/tests/fixtures/gluonts_metrics.json

Each case draws seeded random forecasts (S samples x T steps x D series, one forecast per test window) and a
truth, optionally with NaN holes, and runs the evaluator the diffusion-forecasting papers use (TimeGrad, CSDI,
VSMD): MultivariateEvaluator(quantiles=(np.arange(20)/20.0)[1:], target_agg_funcs={'sum': np.sum}). D = 1 uses
the univariate Evaluator (the multivariate one refuses D = 1), and its sum metrics are the same series.
Values are float32-representable so that both sides read identical inputs.

The proper scores come from scoringrules (an independent library): the exact sample CRPS
(`crps_ensemble(estimator="nrg")`) summed over observed values and divided by abs_target_sum, marginally and on
the sum over series, and the energy score (`es_ensemble`, "nrg") of each window's T*D vector (missing entries
dropped), averaged over windows.
"""
import json
import sys

import numpy as np
import pandas as pd
from gluonts.evaluation import Evaluator, MultivariateEvaluator
from gluonts.model.forecast import SampleForecast
import scoringrules as sr

QUANTILES = (np.arange(20) / 20.0)[1:]
KEYS = ["mean_wQuantileLoss", "ND", "NRMSE", "MSE", "RMSE", "abs_error", "abs_target_sum", "abs_target_mean",
        "num_masked_target_values"] + [f"wQuantileLoss[{q}]" for q in QUANTILES]


def sample_crps(truths, samples_list):
    """Sum over observed values of the empirical CRPS, over sum |y|."""
    total, norm = 0.0, 0.0
    for y, x in zip(truths, samples_list):
        ok = np.isfinite(y)
        c = sr.crps_ensemble(y[ok], np.moveaxis(x, 0, -1)[ok], m_axis=-1, estimator="nrg", backend="numpy")
        total += float(np.sum(c))
        norm += float(np.sum(np.abs(y[ok])))
    return total / norm


def energy(truths, samples_list):
    scores = []
    for y, x in zip(truths, samples_list):
        ok = np.isfinite(y).reshape(-1)
        if ok.any():
            fct = x.reshape(x.shape[0], -1)[:, ok]
            scores.append(float(sr.es_ensemble(y.reshape(-1)[ok], fct, m_axis=-2, v_axis=-1, backend="numpy")))
    return float(np.mean(scores))


def case(name, seed, S, T, D, W, holes=0.0, blank_series=None, blank_step=None):
    rng = np.random.default_rng(seed)
    level = rng.uniform(1.0, 10.0, size=D)
    windows = []
    tss, fcsts = [], []
    all_truth, all_samples = [], []
    for w in range(W):
        truth = (level + rng.normal(0.0, 1.0, size=(T, D)) * level * 0.2).astype(np.float32)
        if holes > 0:
            truth[rng.uniform(size=(T, D)) < holes] = np.nan
        if blank_series is not None and w == 0:
            truth[:, blank_series] = np.nan
        if blank_step is not None and w == W - 1:
            truth[blank_step, :] = np.nan
        samples = (level + rng.normal(0.2, 1.2, size=(S, T, D)) * level * 0.2).astype(np.float32)
        start = pd.Period("2020-01-01 00:00", freq="h") + w * T
        index = pd.period_range(start=start, periods=T, freq="h")
        if D == 1:
            tss.append(pd.DataFrame(truth[:, 0].astype(np.float64), index=index))
            fcsts.append(SampleForecast(samples=samples[:, :, 0].astype(np.float64), start_date=start))
        else:
            tss.append(pd.DataFrame(truth.astype(np.float64), index=index))
            fcsts.append(SampleForecast(samples=samples.astype(np.float64), start_date=start))
        all_truth.append(truth.astype(np.float64))
        all_samples.append(samples.astype(np.float64))
        windows.append({
            "truth": [[None if np.isnan(v) else float(v) for v in row] for row in truth],
            "samples": samples.astype(np.float64).round(10).tolist(),
        })
    if D == 1:
        agg, _ = Evaluator(quantiles=QUANTILES, num_workers=0)(tss, fcsts)
        summed = {k: float(agg[k]) for k in KEYS}
    else:
        ev = MultivariateEvaluator(quantiles=QUANTILES, target_agg_funcs={"sum": np.sum}, num_workers=0)
        agg, _ = ev(tss, fcsts)
        summed = {k: float(agg["m_sum_" + k]) for k in KEYS}
    sums_truth = [pd.DataFrame(y).agg(np.sum, axis=1).to_numpy() for y in all_truth]
    sums_samples = [x.sum(axis=2) for x in all_samples]
    return {
        "name": name,
        "shape": {"samples": S, "steps": T, "series": D, "windows": W},
        "windows": windows,
        "expected": {k: float(agg[k]) for k in KEYS},
        "expected_sum": summed,
        "scoringrules": {
            "crps_sample": sample_crps(all_truth, all_samples),
            "crps_sum_sample": sample_crps(sums_truth, sums_samples),
            "energy_score": energy(all_truth, all_samples),
        },
    }


cases = [
    case("multivariate", 1, S=100, T=8, D=4, W=2),
    case("univariate D=1", 2, S=100, T=12, D=1, W=3),
    case("odd sample count", 3, S=51, T=6, D=3, W=2),
    case("missing values", 4, S=100, T=10, D=3, W=2, holes=0.15),
    case("missing series and step", 5, S=40, T=6, D=3, W=2, holes=0.1, blank_series=1, blank_step=2),
]
json.dump({"gluonts": __import__("gluonts").__version__, "quantiles": QUANTILES.tolist(), "cases": cases}, sys.stdout)
