"""The fused MoE kernels compile for Hopper (sm_90) on a machine without a GPU: Triton's
ahead-of-time path with its bundled ptxas, one tile config of each class the launcher autotunes
over, and the one-program align step. Checks what the interpreter cannot: the FP8 dots lower,
the K loop is software-pipelined (cp.async), large tiles use wgmma, nothing spills to local
memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

# (kernel, fp8, BLOCK_M): a decode step's skinny tiles and a large batch's, bf16 and FP8
CASES = [("gate_up", False, 16), ("gate_up", True, 16), ("down", False, 128), ("down", True, 64)]


def _compile(kernel: str, fp8: bool, block_m: int) -> dict:
    """PTX facts of the first autotune config of (kernel, fp8, BLOCK_M), compiled for sm_90
    with the specialisation the JIT gives real shapes (16-divisible pointers and sizes)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from dllmserve.kernels import moe_kernel as mk

    fn = mk._gate_up_kernel if kernel == "gate_up" else mk._down_kernel
    cfg = mk._configs(block_m, fp8)[0]
    consts = {"FP8": fp8, "PREC": "tf32", "BLOCK_M": block_m, "EVEN_K": True, "EVEN_N": True}
    consts |= cfg.kwargs
    names = fn.arg_names
    act, out = ("*fp8e4nv" if fp8 else "*bf16"), "*bf16"
    sig = {n: "i32" for n in names}
    sig |= {n: "*fp32" for n in ("XS", "WS", "AS", "TW")} | {"ROWS": "*i32", "BLOCK_EXPERT": "*i32"}
    sig |= {"X": act, "A": act, "W": act, "H": out, "Y": out} | dict.fromkeys(consts, "constexpr")
    sig = {n: sig[n] for n in names}
    src = ASTSource(
        fn=fn,
        signature=sig,
        constexprs={(names.index(n),): v for n, v in consts.items()},
        attrs={(i,): [["tt.divisibility", 16]] for i, n in enumerate(names)
               if sig[n] != "constexpr" and n != "topk"},
    )  # fmt: skip
    opts = {"num_warps": cfg.num_warps, "num_stages": cfg.num_stages}
    ptx = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=opts).asm["ptx"]
    return {w: w in ptx for w in ("wgmma", "mma.sync", "cp.async", "ld.local")}


def _compile_align() -> dict:
    """PTX facts of the one-program align step at a batch-1 LLaDA2.0-mini layer's sizes (256
    experts, 16-row blocks)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from dllmserve.kernels import moe_align

    fn = moe_align._align_one_program
    names = fn.arg_names
    consts = {"BLOCK_M": 16, "CHUNK": 64, "E_P2": 512, "NB": 8, "FILL": 1024}
    sig = {n: "i32" for n in names} | dict.fromkeys(("IDS", "ROWS", "BLOCK_EXPERT"), "*i32")
    sig |= dict.fromkeys(consts, "constexpr")
    src = ASTSource(
        fn=fn,
        signature={n: sig[n] for n in names},
        constexprs={(names.index(n),): v for n, v in consts.items()},
    )
    ptx = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
    ptx = ptx.asm["ptx"]
    return {"bar.sync": "bar.sync" in ptx or "barrier.sync" in ptx, "ld.local": "ld.local" in ptx}


def _have_ptxas() -> bool:
    try:
        import triton.backends.nvidia as nv
    except ImportError:
        return False
    return os.path.exists(os.path.join(os.path.dirname(nv.__file__), "bin", "ptxas"))


@pytest.mark.skipif(not _have_ptxas(), reason="Triton's NVIDIA backend (ptxas) is not installed")
def test_kernels_compile_for_hopper():
    # a fresh process: the kernel tests' TRITON_INTERPRET=1 would make the kernels interpreted
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    proc = subprocess.run([sys.executable, __file__], capture_output=True, text=True, env=env,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    facts, align = json.loads(proc.stdout.strip().splitlines()[-1])
    for (kernel, fp8, block_m), f in zip(CASES, facts, strict=True):
        case = f"{kernel} fp8={fp8} BLOCK_M={block_m}: {f}"
        assert f["cp.async"] and not f["ld.local"], case  # pipelined, no spills
        assert f["wgmma"] if block_m >= 64 else f["mma.sync"], case
    # the align step's padding fill is fenced off from its scatter; its tiles fit registers
    assert align["bar.sync"] and not align["ld.local"], align


if __name__ == "__main__":
    print(json.dumps([[_compile(*c) for c in CASES], _compile_align()]))
