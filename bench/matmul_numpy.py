"""numpy (OpenBLAS) reference for `tessera bench matmul`: same shapes, same output columns.

Run with the thread count pinned, e.g. OPENBLAS_NUM_THREADS=1 python bench/matmul_numpy.py 1
"""
import sys
import time

import numpy as np

threads = int(sys.argv[1]) if len(sys.argv) > 1 else 1
min_secs = float(sys.argv[2]) if len(sys.argv) > 2 else 1.0

SHAPES = [
    ("square-256", 256, 256, 256, False, False),
    ("square-512", 512, 512, 512, False, False),
    ("square-1024", 1024, 1024, 1024, False, False),
    ("gpt-qkv-fwd x·Wᵀ 2048x256x256", 2048, 256, 256, False, True),
    ("gpt-mlp-up-fwd x·Wᵀ 2048x1024x256", 2048, 1024, 256, False, True),
    ("gpt-mlp-down-fwd x·Wᵀ 2048x256x1024", 2048, 256, 1024, False, True),
    ("gpt-mlp-up-dW dyᵀ·x 1024x256x2048", 1024, 256, 2048, True, False),
    ("gpt-mlp-down-dW dyᵀ·x 256x1024x2048", 256, 1024, 2048, True, False),
    ("gpt-attn-dW dyᵀ·x 256x256x2048", 256, 256, 2048, True, False),
    ("gpt-mlp-up-dx dy·W 2048x256x1024", 2048, 256, 1024, False, False),
]

rng = np.random.default_rng(1)
print("impl\tthreads\tshape\tm\tn\tk\tgflops")
for name, m, n, k, ta, tb in SHAPES:
    a = rng.random((k, m) if ta else (m, k), dtype=np.float32)
    b = rng.random((n, k) if tb else (k, n), dtype=np.float32)
    opa = a.T if ta else a
    opb = b.T if tb else b
    out = np.empty((m, n), dtype=np.float32)
    np.matmul(opa, opb, out=out)
    best, start = float("inf"), time.perf_counter()
    while time.perf_counter() - start < min_secs:
        t = time.perf_counter()
        np.matmul(opa, opb, out=out)
        best = min(best, time.perf_counter() - t)
    print(f"numpy\t{threads}\t{name}\t{m}\t{n}\t{k}\t{2.0 * m * n * k / best / 1e9:.1f}")
