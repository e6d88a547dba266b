"""Linear layers that see a few rows at a time in generation: one new token per row, and the Playground's
base and tuned rows in one batch. For 2 to 4 rows torch's x @ W.T in fp32 takes MKL's general GEMM path
with the weight transposed, which was slower for 2 rows than for 1 (61 vs 37 ms over a decoding step's
30 layers); W @ x.T reads the weight once (21 ms for 2 rows). That is what lets one batch for both
columns cost less than two calls (bench/RESULTS.md, Evidence behind the levers, "few-rows linear";
bench/side_by_side.py). The same values to fp32 rounding (tests/test_perf_cpu.py). Applied by
playground.Comparer on a CPU; switch: none in the Playground (`speedups` is a training setting).
"""

from __future__ import annotations

import types

import torch

# Row counts for which W @ x.T beat x @ W.T (fp32, 2 cores, SmolLM2-135M shapes):
# 1 row 38 vs 37 ms, 2: 21 vs 61, 3: 21 vs 66, 4: 23 vs 51, 6: 44 vs 40, 8: 57 vs 46.
FEW_ROWS = range(2, 5)


def _few_rows_linear(self, x: torch.Tensor) -> torch.Tensor:
    rows = x.numel() // x.shape[-1] if x.dim() else 0
    if rows not in FEW_ROWS or x.dtype != torch.float32:
        return torch.nn.functional.linear(x, self.weight, self.bias)
    out = torch.matmul(self.weight, x.reshape(rows, x.shape[-1]).T).T
    if self.bias is not None:
        out = out + self.bias
    return out.reshape(*x.shape[:-1], self.out_features)


def use_few_rows_linear(model) -> int:
    """Give every plain fp32 nn.Linear of the model (on a CPU) the few-rows product; returns how
    many. Quantized layers (bitsandbytes) and other dtypes keep their own forward."""
    patched = 0
    for module in model.modules():
        if type(module) is torch.nn.Linear and module.weight.dtype == torch.float32 \
                and module.weight.device.type == "cpu":
            module.forward = types.MethodType(_few_rows_linear, module)
            patched += 1
    return patched
