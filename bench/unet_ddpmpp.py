#!/usr/bin/env python3
"""PyTorch reference of vsdm-image's U-Net: EDM's DDPM++ (SongUNet, Karras et al. 2022) with the same module
tree and tensor names as the candle network (`crates/vsdm-image/src/unet`).

    python bench/unet_ddpmpp.py count                  # parameter counts of the presets
    python bench/unet_ddpmpp.py bench --batch 8        # train/forward images/s (CPU, or CUDA when available)
    python bench/unet_ddpmpp.py forward IN.safetensors CONFIG.json OUT.safetensors
        # runs the network stored in IN (weights named like the module tree, plus inputs `x`, `t` and optional
        # `cond`) with the U-Net config of CONFIG.json and writes IN's tensors plus `torch_out`

Needs torch (and safetensors for `forward`).
"""
import argparse
import json
import math
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

TINY = dict(resolution=32, in_channels=3, out_channels=3, model_channels=32, channel_mult=[1, 2],
            channel_mult_emb=4, num_blocks=1, attn_resolutions=[16], dropout=0.0, label_dim=0, time_scale=999.0)
DDPMPP = dict(TINY, model_channels=128, channel_mult=[2, 2, 2], num_blocks=4, dropout=0.13)


def group_norm(ch):
    return nn.GroupNorm(min(32, ch // 4), ch, eps=1e-6)


class Block(nn.Module):
    """Residual block: GN-SiLU-(resample)-conv3, + dense(emb) shift, GN-SiLU-dropout-conv3, 1x1 skip, x sqrt(1/2),
    then optional one-head attention."""

    def __init__(self, cin, cout, emb, resample="keep", attention=False, dropout=0.0):
        super().__init__()
        self.resample, self.dropout = resample, dropout
        self.norm0 = group_norm(cin)
        self.conv0 = nn.Conv2d(cin, cout, 3, padding=1)
        self.affine = nn.Linear(emb, cout)
        self.norm1 = group_norm(cout)
        self.conv1 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if (cin != cout or resample != "keep") else None
        self.attention = attention
        if attention:
            self.norm2 = group_norm(cout)
            self.qkv = nn.Conv2d(cout, 3 * cout, 1)
            self.proj = nn.Conv2d(cout, cout, 1)

    def rs(self, x):
        if self.resample == "up":
            return F.interpolate(x, scale_factor=2, mode="nearest")
        if self.resample == "down":
            return F.avg_pool2d(x, 2)
        return x

    def forward(self, x, emb):
        h = self.conv0(self.rs(F.silu(self.norm0(x))))
        h = F.silu(self.norm1(h + self.affine(emb)[:, :, None, None]))
        h = self.conv1(F.dropout(h, self.dropout, self.training))
        h = (h + (self.skip(self.rs(x)) if self.skip is not None else x)) * math.sqrt(0.5)
        if self.attention:
            b, c, hh, ww = h.shape
            q, k, v = self.qkv(self.norm2(h)).reshape(b, c, 3, hh * ww).unbind(2)
            w = torch.softmax(torch.einsum("bcq,bck->bqk", q, k / math.sqrt(c)), dim=2)
            a = torch.einsum("bqk,bck->bcq", w, v).reshape(b, c, hh, ww)
            h = (self.proj(a) + h) * math.sqrt(0.5)
        return h


class UNet(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        mc, res0 = cfg["model_channels"], cfg["resolution"]
        emb = mc * cfg["channel_mult_emb"]
        self.map_label = nn.Linear(cfg["label_dim"], mc) if cfg["label_dim"] else None
        self.map_layer0 = nn.Linear(mc, emb)
        self.map_layer1 = nn.Linear(emb, emb)
        kw = dict(emb=emb, dropout=cfg["dropout"])
        self.enc = nn.ModuleDict()
        skips, cout = [], cfg["in_channels"]
        for level, mult in enumerate(cfg["channel_mult"]):
            res = res0 >> level
            if level == 0:
                self.enc[f"{res}x{res}_conv"] = nn.Conv2d(cout, mc, 3, padding=1)
                cout = mc
            else:
                self.enc[f"{res}x{res}_down"] = Block(cout, cout, resample="down", **kw)
            skips.append(cout)
            for i in range(cfg["num_blocks"]):
                cin, cout = cout, mc * mult
                self.enc[f"{res}x{res}_block{i}"] = Block(cin, cout, attention=res in cfg["attn_resolutions"], **kw)
                skips.append(cout)
        self.dec = nn.ModuleDict()
        levels = len(cfg["channel_mult"])
        for level, mult in reversed(list(enumerate(cfg["channel_mult"]))):
            res = res0 >> level
            if level == levels - 1:
                self.dec[f"{res}x{res}_in0"] = Block(cout, cout, attention=True, **kw)
                self.dec[f"{res}x{res}_in1"] = Block(cout, cout, **kw)
            else:
                self.dec[f"{res}x{res}_up"] = Block(cout, cout, resample="up", **kw)
            for i in range(cfg["num_blocks"] + 1):
                cin, cout = cout + skips.pop(), mc * mult
                attn = i == cfg["num_blocks"] and res in cfg["attn_resolutions"]
                self.dec[f"{res}x{res}_block{i}"] = Block(cin, cout, attention=attn, **kw)
        self.dec[f"{res0}x{res0}_aux_norm"] = group_norm(cout)
        self.dec[f"{res0}x{res0}_aux_conv"] = nn.Conv2d(cout, cfg["out_channels"], 3, padding=1)

    def embedding(self, t, cond):
        half = self.cfg["model_channels"] // 2
        freqs = (1e-4) ** (torch.arange(half, dtype=torch.float64, device=t.device) / (half - 1))
        args = (t.double() * self.cfg["time_scale"])[:, None] * freqs[None, :]
        emb = torch.cat([args.sin(), args.cos()], dim=1).float()
        if self.map_label is not None:
            emb = emb + self.map_label(cond * math.sqrt(self.cfg["label_dim"]))
        return F.silu(self.map_layer1(F.silu(self.map_layer0(emb))))

    def forward(self, x, t, cond=None):
        emb = self.embedding(t, cond)
        skips = []
        for m in self.enc.values():
            x = m(x, emb) if isinstance(m, Block) else m(x)
            skips.append(x)
        names = list(self.dec.keys())
        for name in names[:-2]:
            m = self.dec[name]
            if x.shape[1] != m.norm0.num_channels:
                x = torch.cat([x, skips.pop()], dim=1)
            x = m(x, emb)
        return self.dec[names[-1]](F.silu(self.dec[names[-2]](x)))


def count(cfg):
    return sum(p.numel() for p in UNet(cfg).parameters())


CUDNN_BENCHMARK = True


def set_precision(precision):
    """f32: true f32 everywhere (cuDNN's TF32 off, which PyTorch turns on for convolutions by default);
    tf32: TF32 tensor cores for convolutions and matmuls (PyTorch's default for convolutions);
    bf16: autocast to bf16 with f32 master weights and optimiser state."""
    if torch.cuda.is_available():
        tf32 = precision == "tf32"
        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
        # benchmark=True autotunes each convolution (cudnnFind); False takes cuDNN's heuristic choice, which is
        # what candle's --conv cudnn does (cudarc exposes no cudnnFind): run both for a like-for-like ratio.
        torch.backends.cudnn.benchmark = CUDNN_BENCHMARK


def training_step(cfg, batch, device, precision, compile_):
    """A fresh network on random data: (step function, model, x, t, autocast context) for the precision."""
    set_precision(precision)
    net = UNet(cfg).to(device).train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    x = torch.randn(batch, cfg["in_channels"], 32, 32, device=device)
    eps = torch.randn(batch, cfg["out_channels"], 32, 32, device=device)
    t = torch.full((batch,), 0.5, device=device)
    model = torch.compile(net) if compile_ else net
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    def step():
        opt.zero_grad(set_to_none=True)
        with autocast:
            loss = (model(x, t).float() - eps).square().mean()
        loss.backward()
        opt.step()

    return step, model, x, t, autocast


def bench(cfg, batch, iters, device, precision="f32", compile_=False):
    step, model, x, t, autocast = training_step(cfg, batch, device, precision, compile_)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    # Warm-up: cuDNN autotuning, and compilation when asked (several steps, as both settle over the first few).
    for _ in range(3 if (compile_ or device.type == "cuda") else 1):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    sync()
    train = iters * batch / (time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    if compile_:
        # The no-grad forward is a second graph to compile (minutes on the H100 for this network): compiled runs
        # report the training rate only.
        return train, float("nan"), peak
    with torch.no_grad(), autocast:
        for _ in range(2):
            model(x, t)
        sync()
        t0 = time.perf_counter()
        for _ in range(iters):
            model(x, t)
        sync()
    fwd = iters * batch / (time.perf_counter() - t0)
    return train, fwd, peak


def profile_step(cfg, batch, device, precision, compile_):
    """Kernel-time breakdown of one training step after warm-up (torch.profiler, CUDA activity)."""
    from torch.profiler import ProfilerActivity, profile

    step = training_step(cfg, batch, device, precision, compile_)[0]
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="self_device_time_total", row_limit=25, max_name_column_width=90))


def forward_file(src, config, dst):
    from safetensors.torch import load_file, save_file
    with open(config) as f:
        cfg = json.load(f)
    tensors = load_file(src)
    net = UNet(cfg).eval()
    state = {k: v for k, v in tensors.items() if k not in ("x", "t", "cond")}
    net.load_state_dict(state, strict=True)
    with torch.no_grad():
        out = net(tensors["x"], tensors["t"], tensors.get("cond"))
    tensors["torch_out"] = out.contiguous()
    save_file(tensors, dst)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("count")
    b = sub.add_parser("bench")
    b.add_argument("--arch", nargs="+", default=["tiny", "ddpmpp"])
    b.add_argument("--batch", type=int, default=8)
    b.add_argument("--iters", type=int, default=3)
    b.add_argument("--threads", type=int, default=0)
    b.add_argument("--precision", nargs="+", default=["f32"], choices=["f32", "tf32", "bf16"])
    b.add_argument("--mode", nargs="+", default=["eager"], choices=["eager", "compiled"],
                   help="eager, and/or torch.compile (default mode)")
    b.add_argument("--cudnn-benchmark", choices=["on", "off"], default="on",
                   help="cuDNN autotuning (on, PyTorch users' usual setting) or its heuristic choice (off)")
    b.add_argument("--profile", action="store_true",
                   help="also print the CUDA kernels of one training step, by total time (torch.profiler)")
    f = sub.add_parser("forward")
    f.add_argument("src")
    f.add_argument("config")
    f.add_argument("dst")
    a = ap.parse_args()
    presets = {"tiny": TINY, "ddpmpp": DDPMPP}
    if a.cmd == "count":
        for name, cfg in presets.items():
            print(f"{name}: {count(cfg)} parameters; vsmd (6 input channels): "
                  f"{count(dict(cfg, in_channels=6))}")
    elif a.cmd == "bench":
        global CUDNN_BENCHMARK
        CUDNN_BENCHMARK = a.cudnn_benchmark == "on"
        if a.threads:
            torch.set_num_threads(a.threads)
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        print(f"torch {torch.__version__} on {device}, {torch.get_num_threads()} threads, "
              f"cudnn.benchmark {CUDNN_BENCHMARK}")
        print("| network | parameters | batch | precision | mode | train img/s | forward img/s | peak GiB (train) |")
        print("|---|---:|---:|---|---|---:|---:|---:|")
        modes = [m == "compiled" for m in a.mode]
        for name in a.arch:
            cfg = presets[name]
            for prec in a.precision:
                for comp in modes:
                    tr, fw, peak = bench(cfg, a.batch, a.iters, device, prec, comp)
                    mode = "compiled" if comp else "eager"
                    print(f"| {name} | {count(cfg)} | {a.batch} | {prec} | {mode} | {tr:.2f} | {fw:.2f} | {peak:.2f} |",
                          flush=True)
                    if a.profile:
                        profile_step(cfg, a.batch, device, prec, comp)
    else:
        forward_file(a.src, a.config, a.dst)


if __name__ == "__main__":
    sys.exit(main())
