"""Loads a tessera model.safetensors with the `safetensors` and `numpy` packages and prints, in
tessera's parameter order, one line per tensor in the format of `tessera inspect`:
    tensor <name> <d0>x<d1>... <checksum>
where checksum = sum over i of (i+1) * bits(x_i) mod 2**64, over the float32 bit patterns."""
import sys

import numpy as np
from safetensors.numpy import load_file

tensors = load_file(sys.argv[1])


def order(name):
    # Declaration order of tessera's GPT: embeddings, blocks in order, final norm, head.
    parts = name.split(".")
    if parts[0] == "wte":
        return (0,)
    if parts[0] == "wpe":
        return (1,)
    if parts[0] == "h":
        within = ["ln_1.weight", "ln_1.bias"]
        for p in ["q_proj", "k_proj", "v_proj", "out_proj"]:
            within += [f"attn.{p}.weight", f"attn.{p}.bias"]
        within += ["ln_2.weight", "ln_2.bias", "mlp.fc.weight", "mlp.fc.bias", "mlp.proj.weight", "mlp.proj.bias"]
        return (2, int(parts[1]), within.index(".".join(parts[2:])))
    return (3, ["ln_f.weight", "ln_f.bias", "lm_head.weight"].index(name))


for name in sorted(tensors, key=order):
    a = tensors[name]
    assert a.dtype == np.float32, (name, a.dtype)
    bits = np.ascontiguousarray(a).reshape(-1).view(np.uint32).astype(np.uint64)
    idx = np.arange(1, bits.size + 1, dtype=np.uint64)
    checksum = int(np.sum(bits * idx, dtype=np.uint64))
    print(f"tensor {name} {'x'.join(str(d) for d in a.shape)} {checksum}")
