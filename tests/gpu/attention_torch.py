"""PyTorch's causal scaled_dot_product_attention in bf16, timed like
tests/gpu/AttentionTest.cpp times Loom's kernels (CUDA events, median of 20
after 3 warm-up runs), in TFLOP/s with causal FLOPs: forward
4 B H T^2 D / 2, backward 2.5x the forward."""
import statistics
import sys

import torch
import torch.nn.functional as F


def median_ms(fn, warmup=3, reps=20):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start = torch.cuda.Event(enable_timing=True)
        stop = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    return statistics.median(times)


def run(B, H, T, D):
    torch.manual_seed(1234)
    shape = (B, H, T, D)
    q = (1.5 * torch.randn(shape, device="cuda")).bfloat16().requires_grad_()
    k = (1.5 * torch.randn(shape, device="cuda")).bfloat16().requires_grad_()
    v = torch.randn(shape, device="cuda").bfloat16().requires_grad_()
    dout = torch.randn(shape, device="cuda").bfloat16()
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True)

    def forward():
        with torch.no_grad():
            F.scaled_dot_product_attention(q, k, v, is_causal=True)

    def backward():
        torch.autograd.grad(out, (q, k, v), dout, retain_graph=True)

    fwd_ms = median_ms(forward)
    bwd_ms = median_ms(backward)
    flops = 4.0 * B * H * T * T * D / 2
    print(f"torch sdpa bf16 B{B} H{H} T{T} D{D}  fwd {fwd_ms:7.3f} ms "
          f"{flops / fwd_ms * 1e-9:6.1f} TFLOP/s   bwd {bwd_ms:7.3f} ms "
          f"{2.5 * flops / bwd_ms * 1e-9:6.1f} TFLOP/s", flush=True)


def main():
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}")
    run(16, 12, 1024, 64)
    if "--quick" not in sys.argv:
        run(16, 12, 1024, 128)


if __name__ == "__main__":
    main()
