//! Sample export: PNG grids and folders, `.npz` of uint8 NHWC, forecast quantile CSV and fan charts.
