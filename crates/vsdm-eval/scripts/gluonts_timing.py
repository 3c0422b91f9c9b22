"""Times GluonTS's MultivariateEvaluator on electricity's test shape (100 samples x 24 steps x 370 series x 7
windows, CRPS + CRPS-sum), single process, for the ratio in docs/BENCHMARKS.md.

    /tmp/glvenv/bin/python crates/vsdm-eval/scripts/gluonts_timing.py
"""
import time
import warnings

import numpy as np
import pandas as pd
from gluonts.evaluation import MultivariateEvaluator
from gluonts.model.forecast import SampleForecast

warnings.simplefilter("ignore")
S, T, D, W = 100, 24, 370, 7
rng = np.random.default_rng(0)
tss, fcsts = [], []
for w in range(W):
    start = pd.Period("2020-01-01 00:00", freq="h") + w * T
    tss.append(pd.DataFrame(rng.uniform(size=(T, D)), index=pd.period_range(start, periods=T, freq="h")))
    fcsts.append(SampleForecast(samples=rng.uniform(size=(S, T, D)), start_date=start))
ev = MultivariateEvaluator(quantiles=(np.arange(20) / 20.0)[1:], target_agg_funcs={"sum": np.sum}, num_workers=0)
t0 = time.perf_counter()
agg, _ = ev(iter(tss), iter(fcsts))
dt = time.perf_counter() - t0
print(f"GluonTS {__import__('gluonts').__version__}: {dt:.3f} s (CRPS {agg['mean_wQuantileLoss']:.4f}, CRPS-sum {agg['m_sum_mean_wQuantileLoss']:.4f})")
