#!/usr/bin/env python3
"""PyTorch reference of vsdm-timeseries' forecasting network (`crates/vsdm-timeseries/src/model`): the same
module tree and tensor names as the candle network, written with PyTorch's own layers (`nn.Linear`,
`nn.LayerNorm`, `F.scaled_dot_product_attention`), so that the two can be compared value for value and timed
side by side.

    python bench/forecast_net.py count --series 8 --context 90 --horizon 30 --features 3
    python bench/forecast_net.py bench --series 8 --context 90 --horizon 30 --features 3 --batch 16 --threads 2
        # training step (forward + backward) and sampling forward pass, seconds per call (CPU, or CUDA)
    python bench/forecast_net.py forward IN.safetensors CONFIG.json OUT.safetensors
        # runs the network stored in IN (weights named like the module tree, plus inputs `x`, `t`, `cond` and a
        # `probe`) with the network config of CONFIG.json and writes IN's tensors plus `torch_out` and, for
        # the loss sum(out * probe), `torch_grad.<name>` for every weight

Needs torch (and safetensors for `forward`).
"""
import argparse
import json
import math
import time

import torch
import torch.nn.functional as F
from torch import nn

POS_DIM = 16
TIME_DIM = 64


def small(series, context, horizon, features, state_channels=1):
    """NetConfig::small: 32 channels, 2 heads, 2 blocks, feed-forward 64, patches of 6 steps where 6 divides
    both lengths (else 1)."""
    patch = 6 if context % 6 == 0 and horizon % 6 == 0 else 1
    return dict(num_series=series, context=context, horizon=horizon, time_features=features,
                state_channels=state_channels, hidden=32, heads=2, layers=2, ff=64, patch=patch)


def sinusoidal(x, dim):
    """[N] -> [N, dim]: sin of the first half, cos of the second, frequencies 10000^(-k/(dim/2))."""
    half = dim // 2
    k = torch.arange(half, device=x.device, dtype=torch.float32)
    freqs = torch.exp(-math.log(10000.0) * k / half).to(x.dtype)
    args = x[:, None] * freqs[None, :]
    return torch.cat([args.sin(), args.cos()], dim=1)


class SelfAttention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x):
        n, s, c = x.shape
        qkv = self.qkv(x).reshape(n, s, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # [N, h, S, dh]
        return self.out(y.transpose(1, 2).reshape(n, s, c))


class EncoderLayer(nn.Module):
    """Pre-norm: x + MHA(LN x), then + FFN(LN .) with a SiLU feed-forward."""

    def __init__(self, dim, heads, ff):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim, eps=1e-5)
        self.attn = SelfAttention(dim, heads)
        self.ln2 = nn.LayerNorm(dim, eps=1e-5)
        self.ff1 = nn.Linear(dim, ff)
        self.ff2 = nn.Linear(ff, dim)

    def forward(self, x):
        h = x + self.attn(self.ln1(x))
        return h + self.ff2(F.silu(self.ff1(self.ln2(h))))


class Block(nn.Module):
    def __init__(self, h, heads, ff, series):
        super().__init__()
        self.time_in = nn.Linear(h, h)
        self.time_attn = EncoderLayer(h, heads, ff)
        self.series_attn = EncoderLayer(h, heads, ff) if series > 1 else None
        self.mid = nn.Linear(h, 2 * h)
        self.side = nn.Linear(h, 2 * h)
        self.out = nn.Linear(h, 2 * h)


class ForecastNet(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        h, p = cfg["hidden"], cfg["patch"]
        self.input = nn.Linear(p * (1 + cfg["state_channels"]), h)
        self.series_emb = nn.Parameter(0.5 * torch.randn(cfg["num_series"], h))
        self.side_proj = nn.Linear(p * cfg["time_features"] + POS_DIM, h)
        self.t1 = nn.Linear(TIME_DIM, h)
        self.t2 = nn.Linear(h, h)
        self.blocks = nn.ModuleList(
            Block(h, cfg["heads"], cfg["ff"], cfg["num_series"]) for _ in range(cfg["layers"]))
        self.out1 = nn.Linear(h, h)
        self.out2 = nn.Linear(h, p)

    def side_info(self, cond):
        b, _, d, l = cond.shape
        f, p, h = self.cfg["time_features"], self.cfg["patch"], self.cfg["hidden"]
        n = l // p
        tf = cond[:, 1:1 + f, 0, :].transpose(1, 2).reshape(b, n, p * f)
        pos = sinusoidal(torch.arange(n, device=cond.device, dtype=cond.dtype), POS_DIM)
        feats = torch.cat([tf, pos[None].expand(b, n, POS_DIM)], dim=2)
        return self.side_proj(feats)[:, None] + self.series_emb.reshape(1, d, 1, h)

    def forward(self, x_t, t, cond):
        cfg = self.cfg
        b, k, d, _ = x_t.shape
        l = cond.shape[3]
        h, p = cfg["hidden"], cfg["patch"]
        n = l // p
        pad = torch.zeros(b, k, d, cfg["context"], dtype=x_t.dtype, device=x_t.device)
        grid = torch.cat([cond[:, :1], torch.cat([pad, x_t], dim=3)], dim=1)
        grid = grid.permute(0, 2, 3, 1).reshape(b, d, n, p * (1 + k))
        side = self.side_info(cond)
        x = self.input(grid) + side
        temb = F.silu(self.t2(F.silu(self.t1(sinusoidal(t * 1000.0, TIME_DIM))))).reshape(b, 1, 1, h)
        skip = 0.0
        for blk in self.blocks:
            y = x + blk.time_in(temb)
            y = blk.time_attn(y.reshape(b * d, n, h)).reshape(b, d, n, h)
            if blk.series_attn is not None:
                y = blk.series_attn(y.transpose(1, 2).reshape(b * n, d, h)).reshape(b, n, d, h).transpose(1, 2)
            y = blk.mid(y) + blk.side(side)
            y = blk.out(torch.sigmoid(y[..., :h]) * torch.tanh(y[..., h:]))
            x = (x + y[..., :h]) / math.sqrt(2.0)
            skip = skip + y[..., h:]
        skip = skip / math.sqrt(cfg["layers"])
        out = self.out2(F.silu(self.out1(skip)))  # [B, D, N, p]
        return out.reshape(b, 1, d, l)[..., cfg["context"]:]


def inputs(cfg, batch, device, gen):
    d, c, h = cfg["num_series"], cfg["context"], cfg["horizon"]
    x = torch.randn(batch, cfg["state_channels"], d, h, generator=gen).to(device)
    cond = torch.randn(batch, 1 + cfg["time_features"], d, c + h, generator=gen).to(device)
    t = torch.full((batch,), 0.5).to(device)
    return x, t, cond


def bench(cfg, batch, iters, device):
    """Seconds per training step (forward, loss, backward, as `net_speed`) and per sampling forward pass, the
    median of `iters` calls after one warm-up call of each."""
    torch.manual_seed(0)
    net = ForecastNet(cfg).to(device)
    x, t, cond = inputs(cfg, batch, device, torch.Generator().manual_seed(0))

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def train():
        net.zero_grad(set_to_none=True)
        net(x, t, cond).square().mean().backward()

    def sample():
        with torch.no_grad():
            net(x, t, cond)

    out = {}
    for name, f in [("train", train), ("sample", sample)]:
        f()
        sync()
        times = []
        for _ in range(iters):
            s = time.perf_counter()
            f()
            sync()
            times.append(time.perf_counter() - s)
        out[name] = sorted(times)[len(times) // 2]
    return out


def forward_file(src, config, dst):
    from safetensors.torch import load_file, save_file

    ts = load_file(src)
    with open(config) as fh:
        cfg = json.load(fh)
    net = ForecastNet(cfg)
    state = {k: v for k, v in ts.items() if k not in ("x", "t", "cond", "probe")}
    net.load_state_dict(state, strict=True)  # raises on a missing, extra or misshapen tensor
    out = net(ts["x"], ts["t"], ts["cond"])
    (out * ts["probe"]).sum().backward()
    res = dict(ts)
    res["torch_out"] = out.detach().contiguous()
    for name, param in net.named_parameters():
        res["torch_grad." + name] = param.grad.contiguous()
    save_file(res, dst)
    print(f"wrote {dst}: output {tuple(out.shape)}, {len(state)} weights and their gradients")


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("count", "bench"):
        s = sub.add_parser(name)
        s.add_argument("--series", type=int, default=8)
        s.add_argument("--context", type=int, default=90)
        s.add_argument("--horizon", type=int, default=30)
        s.add_argument("--features", type=int, default=3)
        s.add_argument("--state-channels", type=int, default=1)
        if name == "bench":
            s.add_argument("--batch", type=int, default=16)
            s.add_argument("--iters", type=int, default=5)
            s.add_argument("--threads", type=int, default=0)
    f = sub.add_parser("forward")
    f.add_argument("src")
    f.add_argument("config")
    f.add_argument("dst")
    a = ap.parse_args()
    if a.cmd == "forward":
        forward_file(a.src, a.config, a.dst)
        return
    cfg = small(a.series, a.context, a.horizon, a.features, a.state_channels)
    n = sum(p.numel() for p in ForecastNet(cfg).parameters())
    if a.cmd == "count":
        print(f"{cfg}: {n} parameters")
        return
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    r = bench(cfg, a.batch, a.iters, device)
    print(f"torch {torch.__version__} on {device} ({torch.get_num_threads()} threads), {n} parameters, {cfg}, "
          f"batch {a.batch}: train step {r['train']:.4f} s, sampling forward {r['sample']:.4f} s "
          f"(medians of {a.iters})")


if __name__ == "__main__":
    main()
