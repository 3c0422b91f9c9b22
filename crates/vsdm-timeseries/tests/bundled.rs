//! The shipped artefacts work together offline: the bundled exchange-rate archive loads through the registry
//! into a fresh cache, and each bundled set of weights loads and forecasts a test window. (A smoke test of the
//! artefacts; their measured accuracy is in docs/results/timeseries.md.)

use candle_core::Device;
use vsdm_core::{SamplerConfig, SamplerKind};
use vsdm_timeseries::data::registry::default_assets_dir;
use vsdm_timeseries::data::DataSources;
use vsdm_timeseries::forecast;
use vsdm_timeseries::weights;

#[test]
fn bundled_weights_forecast_the_bundled_exchange_rate_offline() {
    let Some(assets) = default_assets_dir() else {
        eprintln!("skipped: no assets/ folder next to the crate");
        return;
    };
    let cache = tempfile::tempdir().unwrap();
    let mut src = DataSources::new(Some(cache.path().to_path_buf()));
    src.allow_download = false;
    let data = src.load("exchange_rate").unwrap();
    let dev = Device::Cpu;
    for method in ["vp", "vsdm", "vsmd"] {
        let dir = assets
            .join("timeseries-weights")
            .join(format!("exchange_rate-{method}"));
        let loaded = weights::load(&dir, &dev).unwrap();
        assert_eq!(loaded.cfg.method.name(), method);
        assert_eq!(loaded.cfg.dataset, "exchange_rate");
        let fc = loaded.forecaster(SamplerConfig::new(SamplerKind::EulerMaruyama, 10), 16, &dev);
        let ends = forecast::select_windows(&data.test, Some(1));
        let f = fc.forecast(&data.test, &ends, 16, 0).unwrap();
        let r = forecast::score(&f).unwrap();
        // Exchange rates move about 1% over 30 business days: a forecast in the data's units that is finite and
        // within a few per cent (weights loaded into the right tensors, scaling undone) scores well below 0.1.
        assert!(
            r.marginal.crps.is_finite() && r.marginal.crps < 0.1,
            "{method}: CRPS {}",
            r.marginal.crps
        );
    }
}
