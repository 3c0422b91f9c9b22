//! Inception-v3 (TF inception-2015-12-05, pool3) for FID, preprocessing, Fréchet distance, statistics files.
