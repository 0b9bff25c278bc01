"""A candidate for one chat stream's int8 products, against r1lite's: int8 x int8 with AVX-512 VNNI.

r1lite's int8 products (``gemm_int8.c``) turn each int8 weight into a float and multiply it by the fp32
activations; llama.cpp's Q8_0 products round the activations to int8 per block of 32 too and
multiply int8 by int8. This probe builds that second kind for one column (a decode step of one
sequence) with ``VPDPBUSD`` (u8 x s8 sums into s32: x is offset by 128 and each block's weight sum
times 128 taken back off), weights packed as 16 rows x 4 bytes per instruction, and times both on
the product shapes of the embedded 135M model (a layer's q/k/v, o, gate/up and down projections,
and the vocabulary head), one ctypes call a product. Both read Q8_0 weights (1.125 bytes each); the
error of each against the fp32 product is printed too. It is a probe, not a kernel r1lite runs:
rounding the activations would change a sequence's tokens with its batch unless every batch width
did the same.

    python benchmarks/probe_int8_products.py     # writes benchmarks/results/int8_products-<cpu kind>.json
"""

from __future__ import annotations

import argparse
import ctypes
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import torch
from common import RESULTS, add_allow_dirty, commit_fields, machine

from r1lite.engine import kernels

SHAPES = {"q/k/v": (960, 576), "o": (576, 576), "gate/up": (3072, 576), "down": (576, 1536), "head": (49152, 576)}
"""The embedded model's products (out, in); a decode step runs the first four 30 times and the head once."""

SOURCE = r"""
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <math.h>
#include <omp.h>

void pack(const float *W, long O, long K, int8_t *Q, float *D, int32_t *S) {
    long nb = K / 32;
    #pragma omp parallel for
    for (long o = 0; o < O; o++) {
        long p = o / 16, r = o % 16;
        for (long b = 0; b < nb; b++) {
            float amax = 0;
            for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(W[o * K + b * 32 + j]));
            float d = amax / 127.f, id = d > 0 ? 1.f / d : 0.f;
            int32_t s = 0;
            for (int j = 0; j < 32; j++) {
                long k = b * 32 + j;
                int q = (int)roundf(W[o * K + k] * id);
                Q[((p * (K / 4) + k / 4) * 16 + r) * 4 + k % 4] = (int8_t)q;
                s += q;
            }
            D[(p * nb + b) * 16 + r] = d;
            S[(p * nb + b) * 16 + r] = s;
        }
    }
}

__attribute__((target("avx512f,avx512bw,avx512vnni")))
void gemv(const int8_t *Q, const float *D, const int32_t *S, long O, long K, const float *x, float *out, uint8_t *xq, float *dx) {
    long nb = K / 32, panels = O / 16;
    #pragma omp parallel
    {
        #pragma omp for schedule(static)
        for (long b = 0; b < nb; b++) {
            float amax = 0;
            for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(x[b * 32 + j]));
            float d = amax / 127.f, id = d > 0 ? 1.f / d : 0.f;
            dx[b] = d;
            for (int j = 0; j < 32; j++) xq[b * 32 + j] = (uint8_t)((int)roundf(x[b * 32 + j] * id) + 128);
        }
        #pragma omp for schedule(static)
        for (long p0 = 0; p0 < panels; p0 += 4) {
            __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
            int P = panels - p0 < 4 ? (int)(panels - p0) : 4;
            for (long b = 0; b < nb; b++) {
                const int32_t *xb = (const int32_t *)(xq + b * 32);
                __m512 dxb = _mm512_set1_ps(dx[b]);
                __m512i s0 = _mm512_setzero_si512(), s1 = s0, s2 = s0, s3 = s0;
                const int8_t *q0 = Q + p0 * K * 16 + b * 512;
                for (int u = 0; u < 8; u++) {
                    __m512i xv = _mm512_set1_epi32(xb[u]);
                    s0 = _mm512_dpbusd_epi32(s0, xv, _mm512_loadu_si512(q0 + u * 64));
                    if (P > 1) s1 = _mm512_dpbusd_epi32(s1, xv, _mm512_loadu_si512(q0 + K * 16 + u * 64));
                    if (P > 2) s2 = _mm512_dpbusd_epi32(s2, xv, _mm512_loadu_si512(q0 + 2 * K * 16 + u * 64));
                    if (P > 3) s3 = _mm512_dpbusd_epi32(s3, xv, _mm512_loadu_si512(q0 + 3 * K * 16 + u * 64));
                }
                __m512i ss[4] = {s0, s1, s2, s3};
                for (int i = 0; i < P; i++) {
                    long p = p0 + i;
                    __m512i c = _mm512_sub_epi32(ss[i], _mm512_slli_epi32(_mm512_loadu_si512(S + (p * nb + b) * 16), 7));
                    acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(c), _mm512_mul_ps(_mm512_loadu_ps(D + (p * nb + b) * 16), dxb), acc[i]);
                }
            }
            for (int i = 0; i < P; i++) _mm512_storeu_ps(out + (p0 + i) * 16, acc[i]);
        }
    }
}
"""


def build(where: Path) -> ctypes.CDLL:
    (where / "vnni.c").write_text(SOURCE)
    cc = shutil.which("cc") or shutil.which("gcc")
    subprocess.run([cc, "-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", str(where / "vnni.c"), "-o",
                    str(where / "vnni.so")], check=True)
    return ctypes.CDLL(str(where / "vnni.so"))


def seconds(fn, args, reps: int) -> float:
    fn(*args)
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(reps):
            fn(*args)
        best = min(best, (time.perf_counter() - t) / reps)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None)
    add_allow_dirty(parser)
    args = parser.parse_args()
    commit = commit_fields(__file__, args.allow_dirty)
    lib = kernels.load()
    if lib is None or "avx512_vnni" not in Path("/proc/cpuinfo").read_text():
        raise SystemExit("probe_int8_products: needs r1lite's CPU kernels and AVX-512 VNNI (avx512_vnni in /proc/cpuinfo)")
    ptr = lambda t: ctypes.c_void_p(t.data_ptr())  # noqa: E731
    torch.manual_seed(0)
    rows, pass_s = {}, {"r1lite": 0.0, "vnni": 0.0}
    with tempfile.TemporaryDirectory() as tmp:
        vnni = build(Path(tmp))
        for name, (O, K) in SHAPES.items():
            W = torch.randn(O, K) * 0.05
            nb = K // 32
            Q, D, S = torch.empty(O * K, dtype=torch.int8), torch.empty(O * nb), torch.empty(O * nb, dtype=torch.int32)
            vnni.pack(ptr(W), ctypes.c_long(O), ctypes.c_long(K), ptr(Q), ptr(D), ptr(S))
            ours = kernels.PackedWeight([W], lib, kind="int8")
            x, out = torch.randn(K, 1), torch.empty(O)
            xq, dx, scratch = torch.empty(K, dtype=torch.uint8), torch.empty(nb), torch.empty(K * 64 + 64)
            exact = (W.double() @ x.double())[:, 0]
            candidate = (vnni.gemv, (ptr(Q), ptr(D), ptr(S), ctypes.c_long(O), ctypes.c_long(K), ptr(x), ptr(out), ptr(xq), ptr(dx)))
            current = (lib.r1_linear_q8, (ptr(ours.data), ctypes.c_long(O), ctypes.c_long(K), ptr(x), ctypes.c_long(1),
                                          ctypes.c_int(0), None, ctypes.c_float(0.0), ptr(scratch), None, ptr(out),
                                          ctypes.c_int(0), ctypes.c_int(0)))
            row = {"shape": [O, K]}
            for side, (fn, fargs) in (("r1lite", current), ("vnni", candidate)):
                fn(*fargs)
                row[f"{side}_error"] = float((out.double() - exact).norm() / exact.norm())
                s = seconds(fn, fargs, max(20, int(2e8 // (O * K))))
                row[f"{side}_us"], row[f"{side}_gb_s"] = s * 1e6, O * K * 1.125 / s / 1e9
                pass_s[side] += s * (1 if name == "head" else 30)
            row["speedup"] = row["r1lite_us"] / row["vnni_us"]
            rows[name] = row
            print(f"{name:8s} {O:5d}x{K:<4d}  r1lite {row['r1lite_us']:7.0f} us ({row['r1lite_gb_s']:5.1f} GB/s, error "
                  f"{row['r1lite_error']:.4f})  vnni {row['vnni_us']:7.0f} us ({row['vnni_gb_s']:5.1f} GB/s, error "
                  f"{row['vnni_error']:.4f})  {row['speedup']:.2f}x", flush=True)
    print(f"the products of one decode step (30 layers + head): r1lite {pass_s['r1lite'] * 1e3:.2f} ms, "
          f"vnni {pass_s['vnni'] * 1e3:.2f} ms")
    info = machine()
    result = {"benchmark": "int8_products", **commit, "machine": info, "rows": rows,
              "decode_step_products_ms": {k: v * 1e3 for k, v in pass_s.items()}}
    out = args.out or RESULTS / f"int8_products-{info['cpu_kind']}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
