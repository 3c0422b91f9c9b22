"""Times GluonTS's MultivariateEvaluator (the papers' settings: quantiles 0.05..0.95, target_agg_funcs sum) on
electricity's test shape, 100 samples x 24 steps x 370 series x 7 windows, single process, on the same data as
`cargo bench -p vsdm-eval --bench forecast` (both draw value k of the run from the counter hash below), and prints
the metrics so that the two sides can be compared number for number.

    /tmp/glvenv/bin/python crates/vsdm-eval/scripts/gluonts_timing.py [repeats]

See docs/benchmarks/eval-forecast.md.
"""
import sys
import time
import warnings

import numpy as np
import pandas as pd
from gluonts.evaluation import MultivariateEvaluator
from gluonts.model.forecast import SampleForecast

S, T, D, W = 100, 24, 370, 7


def uniform(start, n):
    """splitmix64 of the counters start..start+n, top 24 bits as a float32 in [0, 1) (bench_data in the bench)."""
    z = (np.arange(start, start + n, dtype=np.uint64) + np.uint64(1)) * np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return ((z >> np.uint64(40)).astype(np.float64) / float(1 << 24)).astype(np.float32)


def data():
    tss, fcsts, k = [], [], 0
    for w in range(W):
        samples = uniform(k, S * T * D).reshape(S, T, D)
        k += S * T * D
        truth = uniform(k, T * D).reshape(T, D)
        k += T * D
        start = pd.Period("2020-01-01 00:00", freq="h") + w * T
        index = pd.period_range(start, periods=T, freq="h")
        tss.append(pd.DataFrame(truth.astype(np.float64), index=index))
        fcsts.append(SampleForecast(samples=samples.astype(np.float64), start_date=start))
    return tss, fcsts


def main():
    warnings.simplefilter("ignore")
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    tss, fcsts = data()
    ev = MultivariateEvaluator(
        quantiles=(np.arange(20) / 20.0)[1:], target_agg_funcs={"sum": np.sum}, num_workers=0
    )
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        agg, _ = ev(iter(tss), iter(fcsts))
        times.append(time.perf_counter() - t0)
    print(
        f"GluonTS {__import__('gluonts').__version__} MultivariateEvaluator, {S}x{T}x{D}x{W}: "
        f"min {min(times):.3f} s, median {np.median(times):.3f} s over {repeats} runs"
    )
    print(
        f"CRPS {agg['mean_wQuantileLoss']:.10f} CRPS-sum {agg['m_sum_mean_wQuantileLoss']:.10f} "
        f"ND {agg['ND']:.10f} NRMSE {agg['NRMSE']:.10f} MSE {agg['MSE']:.10f}"
    )


if __name__ == "__main__":
    main()
