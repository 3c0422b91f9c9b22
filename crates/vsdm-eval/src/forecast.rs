//! Forecast metrics: CRPS, CRPS-sum, ND, NRMSE, MSE as GluonTS computes them; energy score.
