"""Fixtures for vsdm-eval's forecast metrics, computed by GluonTS itself.

    python -m venv /tmp/glvenv && /tmp/glvenv/bin/pip install gluonts==0.17.0 pandas numpy
    /tmp/glvenv/bin/python crates/vsdm-eval/scripts/gluonts_fixtures.py > crates/vsdm-eval/tests/fixtures/gluonts_metrics.json

Each case draws seeded random forecasts (S samples x T steps x D series, one forecast per test window) and a
truth, optionally with NaN holes, and runs the evaluator the diffusion-forecasting papers use (TimeGrad, CSDI,
VSMD): MultivariateEvaluator(quantiles=(np.arange(20)/20.0)[1:], target_agg_funcs={'sum': np.sum}). D = 1 uses
the univariate Evaluator (the multivariate one refuses D = 1), and its sum metrics are the same series.
Values are float32-representable so that both sides read identical inputs.
"""
import json
import sys

import numpy as np
import pandas as pd
from gluonts.evaluation import Evaluator, MultivariateEvaluator
from gluonts.model.forecast import SampleForecast

QUANTILES = (np.arange(20) / 20.0)[1:]
KEYS = ["mean_wQuantileLoss", "ND", "NRMSE", "MSE", "RMSE", "abs_error", "abs_target_sum"]


def case(name, seed, S, T, D, W, holes=0.0):
    rng = np.random.default_rng(seed)
    level = rng.uniform(1.0, 10.0, size=D)
    windows = []
    tss, fcsts = [], []
    for w in range(W):
        truth = (level + rng.normal(0.0, 1.0, size=(T, D)) * level * 0.2).astype(np.float32)
        if holes > 0:
            truth[rng.uniform(size=(T, D)) < holes] = np.nan
        samples = (level + rng.normal(0.2, 1.2, size=(S, T, D)) * level * 0.2).astype(np.float32)
        start = pd.Period("2020-01-01 00:00", freq="h") + w * T
        index = pd.period_range(start=start, periods=T, freq="h")
        if D == 1:
            tss.append(pd.DataFrame(truth[:, 0].astype(np.float64), index=index))
            fcsts.append(SampleForecast(samples=samples[:, :, 0].astype(np.float64), start_date=start))
        else:
            tss.append(pd.DataFrame(truth.astype(np.float64), index=index))
            fcsts.append(SampleForecast(samples=samples.astype(np.float64), start_date=start))
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
    return {
        "name": name,
        "shape": {"samples": S, "steps": T, "series": D, "windows": W},
        "windows": windows,
        "expected": {k: float(agg[k]) for k in KEYS},
        "expected_sum": summed,
    }


cases = [
    case("multivariate", 1, S=100, T=8, D=4, W=2),
    case("univariate D=1", 2, S=100, T=12, D=1, W=3),
    case("odd sample count", 3, S=51, T=6, D=3, W=2),
    case("missing values", 4, S=100, T=10, D=3, W=2, holes=0.15),
]
json.dump({"gluonts": __import__("gluonts").__version__, "quantiles": QUANTILES.tolist(), "cases": cases}, sys.stdout)
