"""Static resource report of the loss core's Triton kernels for sm_80 (A100) and sm_90 (H100), without a GPU.

Every kernel is compiled (`triton.compile` with a `GPUTarget`, Triton's bundled ptxas) in each configuration the
dispatcher can choose: the logits-tile kernels for bf16, fp16, fp32 with TF32 and fp32 IEEE inputs, and for bf16/fp16
autocast over fp32 operands, with and without an LM-head bias, at the default tiles
(`trl_pro.loss_core.common.DEFAULT_TILES`); the finalize kernel; the ranking kernel for every combination of its flags
at N_BLOCK 16, and for N_BLOCK 2..64 (ranking lengths up to 64). For each: registers per thread, spill stores/loads
(bytes, from `ptxas -v`), shared memory (Triton's dynamic allocation plus static), local memory, and the theoretical
occupancy (active warps per SM / maximum warps per SM) from the compiled kernel's registers, shared memory and warps
against each architecture's limits (`occupancy`, `ARCH_LIMITS`). A regression in any of them shows up here without a
GPU; run time is not measured on GPU. The kernels are not autotuned: the report names the configurations the code can
choose at run time and those of them that spill.

Writes benchmarks/results/loss_core_kernels_static.{json,md,png}.

    python benchmarks/kernel_resources.py
    python benchmarks/kernel_resources.py --smoke --out DIR   # a few kernels, no tile comparison (for the tests);
                                                              # writes DIR/loss_core_kernels_static_smoke.*
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARCHS = (80, 90)

# Per-SM limits of the two targets for the theoretical occupancy. Sources: NVIDIA's CUDA Occupancy Calculator, i.e.
# `cuda_occupancy.h` in the CUDA toolkit (the model behind `cudaOccupancyMaxActiveBlocksPerMultiprocessor` and Nsight
# Compute's occupancy calculator: registers allocated per warp in units of 256, per SM sub-partition, 4 per SM; shared
# memory allocated per block in units of 128 B plus 1 KB reserved by the system per block), and the CUDA C++
# Programming Guide, "Compute Capabilities", table "Technical Specifications per Compute Capability", columns 8.0 and
# 9.0: 64K 32-bit registers per SM and per block, 255 per thread; 64 resident warps (2048 threads) and 32 resident
# blocks per SM; 1024 threads per block; shared memory per SM 164 KB (8.0, A100) / 228 KB (9.0, H100), per block at
# most 163 KB / 227 KB (the 1 KB difference is the per-block reservation).
ARCH_LIMITS = {
    80: {
        "gpu": "A100",
        "registers_per_sm": 65536,
        "registers_per_block": 65536,
        "max_registers_per_thread": 255,
        "register_alloc_unit": 256,  # registers per warp are allocated in multiples of this
        "sub_partitions": 4,  # registers are allocated per SM sub-partition (SMSP)
        "max_warps_per_sm": 64,
        "max_blocks_per_sm": 32,
        "max_threads_per_block": 1024,
        "warp_size": 32,
        "shared_per_sm": 164 * 1024,  # the largest carveout; the driver picks one that does not lower occupancy
        "shared_per_block": 163 * 1024,  # opt-in maximum of static + dynamic shared memory
        "shared_reserved_per_block": 1024,
        "shared_alloc_unit": 128,
    },
    90: {
        "gpu": "H100",
        "registers_per_sm": 65536,
        "registers_per_block": 65536,
        "max_registers_per_thread": 255,
        "register_alloc_unit": 256,
        "sub_partitions": 4,
        "max_warps_per_sm": 64,
        "max_blocks_per_sm": 32,
        "max_threads_per_block": 1024,
        "warp_size": 32,
        "shared_per_sm": 228 * 1024,
        "shared_per_block": 227 * 1024,
        "shared_reserved_per_block": 1024,
        "shared_alloc_unit": 128,
    },
}


def _round_up(value: int, unit: int) -> int:
    return -(-value // unit) * unit


def occupancy(arch: int, registers: int, shared_bytes: int, num_warps: int) -> dict:
    """Theoretical occupancy of a kernel with `registers` per thread, `shared_bytes` of shared memory per block (static +
    dynamic) and `num_warps` warps per block on sm_`arch`, as NVIDIA's occupancy calculator computes it (`ARCH_LIMITS`).

    Returns the resident blocks per SM allowed by each limit (`blocks_by_registers`, `blocks_by_shared`,
    `blocks_by_warps`, `blocks_by_blocks`), the resulting `blocks_per_sm`, `active_warps_per_sm`, `occupancy`
    (active / maximum warps per SM, 0..1), `limited_by` (the limits that bind, joined by "+"; "does not fit" when a
    single block exceeds a per-block limit) and `fits`.
    """
    lim = ARCH_LIMITS[arch]
    threads = num_warps * lim["warp_size"]
    # Registers: per warp, rounded up to the allocation unit; whole warps per sub-partition
    regs_per_warp = _round_up(registers * lim["warp_size"], lim["register_alloc_unit"])
    sub = lim["sub_partitions"]
    regs_fit = (
        registers <= lim["max_registers_per_thread"]
        and regs_per_warp * num_warps <= lim["registers_per_block"]
        # the launch check assumes the block's warps are spread over all sub-partitions
        and regs_per_warp * _round_up(num_warps, sub) <= lim["registers_per_block"]
    )
    if not regs_fit:
        by_registers = 0
    elif regs_per_warp == 0:
        by_registers = lim["max_blocks_per_sm"]
    else:
        by_registers = (lim["registers_per_sm"] // sub // regs_per_warp) * sub // num_warps
    # Shared memory: static + dynamic + the per-block reservation, rounded up to the allocation unit
    shared_alloc = _round_up(shared_bytes + lim["shared_reserved_per_block"], lim["shared_alloc_unit"])
    by_shared = 0 if shared_bytes > lim["shared_per_block"] else lim["shared_per_sm"] // shared_alloc
    by_warps = lim["max_warps_per_sm"] // num_warps if threads <= lim["max_threads_per_block"] else 0
    by_blocks = lim["max_blocks_per_sm"]
    limits = {"registers": by_registers, "shared": by_shared, "warps": by_warps, "blocks": by_blocks}
    blocks = min(limits.values())
    active_warps = blocks * num_warps
    return {
        "warps_per_block": num_warps,
        "registers_per_warp": regs_per_warp,
        "shared_alloc_bytes": shared_alloc,
        **{f"blocks_by_{name}": value for name, value in limits.items()},
        "blocks_per_sm": blocks,
        "active_warps_per_sm": active_warps,
        "max_warps_per_sm": lim["max_warps_per_sm"],
        "occupancy": active_warps / lim["max_warps_per_sm"],
        "limited_by": "does not fit"
        if blocks == 0
        else "+".join(name for name, value in limits.items() if value == blocks),
        "fits": blocks > 0,
    }


# Logits-tile configurations compared in the "Tile choice" section: (block_t, block_v, block_h, num_warps)
TILE_CANDIDATES = [
    (64, 128, 64, 4),
    (64, 128, 64, 8),
    (64, 128, 32, 4),
    (64, 128, 32, 8),
    (64, 64, 64, 8),
    (32, 128, 64, 4),
    (128, 128, 64, 8),
]


SMOKE_DTYPES = ("bf16",)
TILE_CHOICE_DTYPES = ("bf16", "fp16", "fp32-tf32", "fp32-ieee")


def _configs(tiles=None, logits_only: bool = False, dtypes=None, smoke: bool = False):
    """(kernel, label, num_warps, signature, constexprs) of every compilation: all dispatcher configurations at `tiles`
    (default: `DEFAULT_TILES`), the logits-tile kernels only for the dtype names in `dtypes` (default: all). `smoke`:
    bf16 without bias, the finalize kernel and one ranking variant."""
    import triton.language as tl

    from trl_pro.loss_core.common import DEFAULT_TILES
    from trl_pro.loss_core.triton import pro_ranking, token_logprob

    tiles = tiles or DEFAULT_TILES
    # (name, compute dtype, operand pointers, logits-gradient buffer pointer, input precision). The compute dtype is the
    # input dtype, or the autocast dtype (`fused_ranking_loss`); under autocast the operands keep their own dtype
    # (fp32 weights and hidden states, e.g. a bf16=True Trainer over an fp32 model) and are cast in the kernel.
    all_dtypes = (
        ("bf16", tl.bfloat16, "*bf16", "*bf16", "ieee"),
        ("fp16", tl.float16, "*fp16", "*fp16", "ieee"),
        ("fp32-tf32", tl.float32, "*fp32", "*fp32", "tf32"),
        ("fp32-ieee", tl.float32, "*fp32", "*fp32", "ieee"),
        ("bf16-autocast", tl.bfloat16, "*fp32", "*bf16", "ieee"),
        ("fp16-autocast", tl.float16, "*fp32", "*fp16", "ieee"),
    )
    if smoke:
        dtypes = SMOKE_DTYPES
    for name, dtype, ptr, dz_ptr, precision in all_dtypes:
        if dtypes is not None and name not in dtypes:
            continue
        for bias in (False,) if smoke else (True, False):
            constexprs = dict(
                HAS_BIAS=bias,
                BLOCK_T=tiles.block_t,
                BLOCK_V=tiles.block_v,
                BLOCK_H=tiles.block_h,
                COMPUTE_DTYPE=dtype,
                DOT_FP32=dtype == tl.float32,
                INPUT_PRECISION=precision,
            )
            operands = dict(hidden_ptr=ptr, weight_ptr=ptr, bias_ptr=ptr, targets_ptr="*i64")
            label = f"{name}, bias={bias}, tiles {tiles.block_t}x{tiles.block_v}x{tiles.block_h}"
            yield (
                token_logprob._lse_forward_kernel,
                label,
                tiles.num_warps,
                dict(
                    **operands,
                    part_lse_ptr="*fp32",
                    part_target_ptr="*fp32",
                    T="i32",
                    V="i32",
                    H="i32",
                    stride_h="i32",
                    stride_w="i32",
                    vocab_per_split="i32",
                ),
                constexprs,
            )
            yield (
                token_logprob._grad_logits_kernel,
                label,
                tiles.num_warps,
                dict(
                    **operands,
                    lse_ptr="*fp32",
                    token_grad_ptr="*fp32",
                    dz_ptr=dz_ptr,
                    t_begin="i32",
                    n_tokens="i32",
                    v_begin="i32",
                    n_vocab="i32",
                    H="i32",
                    stride_h="i32",
                    stride_w="i32",
                    stride_dz="i32",
                ),
                constexprs,
            )
    if logits_only:
        return
    yield (
        token_logprob._finalize_kernel,
        f"BLOCK={tiles.segment_block}",
        4,
        dict(
            part_lse_ptr="*fp32",
            part_target_ptr="*fp32",
            token_offsets_ptr="*i64",
            lse_ptr="*fp32",
            sums_ptr="*fp32",
            T="i32",
            num_splits="i32",
        ),
        dict(BLOCK=tiles.segment_block),
    )
    ranking_signature = dict(
        sums_ptr="*fp32",
        token_offsets_ptr="*i64",
        ranking_offsets_ptr="*i64",
        sft_candidate_ptr="*i64",
        rewards_ptr="*fp32",
        sft_weight_ptr="*fp32",
        scores_ptr="*fp32",
        terms_ptr="*fp32",
        prompt_loss_ptr="*fp32",
        sft_nll_ptr="*fp32",
        grad_sums_ptr="*fp32",
        num_terms="i32",
        inv_num_prompts="fp32",
    )
    variants = [(r, s, f, 16) for r in (True, False) for s in (True, False) for f in (True, False)]
    variants += [(True, False, False, n_block) for n_block in (2, 4, 8, 32, 64)]
    if smoke:
        variants = variants[:1]
    for rewards, sft_mean, first_only, n_block in variants:
        label = f"N_BLOCK={n_block}, rewards={rewards}, sft_mean={sft_mean}, first_only={first_only}"
        yield (
            pro_ranking._ranking_kernel,
            label,
            4,
            ranking_signature,
            dict(HAS_REWARDS=rewards, SFT_MEAN=sft_mean, FIRST_ONLY=first_only, N_BLOCK=n_block),
        )


def _ptxas_usage(ptxas: str, ptx: str, arch: int) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "kernel.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        target = re.search(r"^\.target\s+(\w+)", ptx, re.M).group(1)  # what Triton compiled for (e.g. sm_90a)
        out = subprocess.run(
            [ptxas, f"-arch={target}", "-v", path, "-o", os.path.join(folder, "k.cubin")],
            capture_output=True,
            text=True,
        )
        if out.returncode:
            raise RuntimeError(f"ptxas -arch={target} failed: {out.stderr[-2000:]}")
    text = out.stdout + out.stderr
    number = lambda pattern: int(re.search(pattern, text).group(1)) if re.search(pattern, text) else 0  # noqa: E731
    return {
        "registers": number(r"Used (\d+) registers"),
        "spill_stores_bytes": number(r"(\d+) bytes spill stores"),
        "spill_loads_bytes": number(r"(\d+) bytes spill loads"),
        "static_smem_bytes": number(r"(\d+) bytes smem"),
        "stack_frame_bytes": number(r"(\d+) bytes stack frame"),
    }


def _cubin_usage(cubin: bytes) -> dict:
    """Registers and stack of the cubin Triton built itself (`cuobjdump --dump-resource-usage`)."""
    import triton

    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        text = subprocess.run([cuobjdump, "--dump-resource-usage", path], capture_output=True, text=True).stdout
    usage = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", text)
    if usage is None:
        return {}
    registers, stack, shared, local = map(int, usage.groups())
    return {
        "cubin_registers": registers,
        "cubin_stack_bytes": stack,
        "cubin_static_shared_bytes": shared,
        "cubin_local_bytes": local,
    }


def compile_all(configs=None) -> list[dict]:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import get_ptxas  # the ptxas Triton itself uses for this arch
    from triton.compiler import ASTSource

    rows = []
    for fn, label, num_warps, signature, constexprs in configs or _configs():
        full_signature = {**signature, **dict.fromkeys(constexprs, "constexpr")}
        indexed = {(fn.arg_names.index(name),): value for name, value in constexprs.items()}
        for arch in ARCHS:
            kernel = triton.compile(
                ASTSource(fn, full_signature, indexed),
                target=GPUTarget("cuda", arch, 32),
                options={"num_warps": num_warps},
            )
            usage = {
                **_ptxas_usage(get_ptxas(arch).path, kernel.asm["ptx"], arch),
                **_cubin_usage(kernel.asm["cubin"]),
            }
            # Occupancy from the compiled kernel: the registers of the cubin Triton launches (what the driver reports as
            # `n_regs` once it is loaded on a GPU), Triton's shared memory (`metadata.shared`) plus static shared
            # memory, and `metadata.num_warps`
            occupancy_registers = usage.get("cubin_registers", usage["registers"])
            occupancy_shared = kernel.metadata.shared + usage.get(
                "cubin_static_shared_bytes", usage["static_smem_bytes"]
            )
            occ = occupancy(arch, occupancy_registers, occupancy_shared, kernel.metadata.num_warps)
            rows.append(
                {
                    "kernel": fn.__name__,
                    "config": label,
                    "arch": f"sm_{arch}",
                    "num_warps": num_warps,
                    "triton_shared_bytes": kernel.metadata.shared,
                    **usage,
                    "occupancy": {
                        "registers_per_thread": occupancy_registers,
                        "shared_bytes": occupancy_shared,
                        **occ,
                    },
                }
            )
            print(
                f"{fn.__name__} [{label}] sm_{arch}: {usage['registers']} regs, "
                f"{kernel.metadata.shared} B shared, spills {usage['spill_stores_bytes']}/"
                f"{usage['spill_loads_bytes']} B, occupancy {occ['occupancy']:.1%} ({occ['limited_by']})",
                file=sys.stderr,
                flush=True,
            )
    return rows


def compare_tiles() -> list[dict]:
    """The logits-tile kernels (no bias; bf16, fp16, fp32-tf32, fp32-ieee; sm_80 and sm_90) compiled at each of
    `TILE_CANDIDATES`: the spills, registers and occupancy that chose the default tiles."""
    import dataclasses

    from trl_pro.loss_core.common import DEFAULT_TILES

    summary = []
    for block_t, block_v, block_h, num_warps in TILE_CANDIDATES:
        tiles = dataclasses.replace(
            DEFAULT_TILES, block_t=block_t, block_v=block_v, block_h=block_h, num_warps=num_warps
        )
        configs = [c for c in _configs(tiles, logits_only=True, dtypes=TILE_CHOICE_DTYPES) if "bias=False" in c[1]]
        rows = compile_all(configs)
        spill = {
            f"{r['config'].split(',')[0]} {r['arch']}": r["spill_stores_bytes"] + r["spill_loads_bytes"]
            for r in rows
            if r["kernel"] == "_lse_forward_kernel"
        }
        for r in rows:
            if r["kernel"] == "_grad_logits_kernel":
                key = f"{r['config'].split(',')[0]} {r['arch']}"
                spill[key] = max(spill.get(key, 0), r["spill_stores_bytes"] + r["spill_loads_bytes"])
        summary.append(
            {
                "tiles": f"{block_t}x{block_v}x{block_h}",
                "num_warps": num_warps,
                "default": tiles == DEFAULT_TILES,
                "max_registers": max(r["registers"] for r in rows),
                "kernels_spilling": sum(1 for r in rows if r["spill_stores_bytes"] or r["spill_loads_bytes"]),
                "compiled": len(rows),
                "max_shared_bytes": max(r["triton_shared_bytes"] + r["static_smem_bytes"] for r in rows),
                "worst_spill_bytes": spill,
                # bf16 occupancy of the forward and backward kernel per architecture
                "bf16_occupancy": {
                    f"sm_{arch}": {
                        r["kernel"]: r["occupancy"]["occupancy"]
                        for r in rows
                        if r["arch"] == f"sm_{arch}" and r["config"].startswith("bf16,")
                    }
                    for arch in ARCHS
                },
                "spilling": [
                    f"{r['kernel']} [{r['config']}] {r['arch']}: {r['spill_stores_bytes']}/{r['spill_loads_bytes']} B"
                    for r in rows
                    if r["spill_stores_bytes"] or r["spill_loads_bytes"]
                ],
            }
        )
    return summary


RUNTIME_CHOICES = (
    "No kernel is autotuned (no `triton.autotune` or `triton.heuristics` in `trl_pro/loss_core/triton/`): the "
    "configuration of each launch follows from its inputs, and every one the code picks at the default tiles is "
    "compiled in the table above.",
    "`_lse_forward_kernel`, `_grad_logits_kernel`: tiles and warps from the `TileConfig`, `DEFAULT_TILES` on CUDA unless "
    "the caller passes `fused_ranking_loss(..., tiles=...)`; compute dtype = the autocast dtype, else the input dtype "
    "(bf16, fp16, fp32); fp32 runs `tl.dot` in TF32 only when `torch.backends.cuda.matmul.allow_tf32` is set (torch's "
    "default is off, so fp32 inputs run fp32-ieee); under autocast the operands keep their dtype (fp32 here) and are "
    "cast in the kernel; HAS_BIAS when the LM head has a bias.",
    "`_finalize_kernel`: BLOCK = `TileConfig.segment_block` (256), Triton's default 4 warps. `_ranking_kernel`: its "
    "flags from the objective (rewards, SFT mean, first term only), N_BLOCK = max(2, next power of two of the longest "
    "ranking), 4 warps: N_BLOCK 2..64 compiled (rankings of up to 64 candidates).",
    "`vocab_splits`, `token_chunk` and `vocab_chunk` change grids and buffers only, not the compiled kernels. Not "
    "compiled here: hidden states and LM head of two different dtypes (e.g. bf16 hidden states, fp32 head under "
    "autocast); N_BLOCK >= 128 (rankings longer than 64).",
)


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def _dtype_of(row) -> str:
    return row["config"].split(",")[0]


def occupancy_summary(rows) -> list[dict]:
    """One entry per kernel and configuration (the ranking kernel's variants merged), with the occupancy on each
    architecture: the "Occupancy at the default tiles" table."""
    ranking = sorted({r["config"] for r in rows if r["kernel"] == "_ranking_kernel"})
    n_blocks = sorted({int(re.search(r"N_BLOCK=(\d+)", c).group(1)) for c in ranking})
    ranking_label = (
        f"{len(ranking)} variant{'s' * (len(ranking) != 1)} merged (N_BLOCK "
        + (f"{n_blocks[0]}..{n_blocks[-1]}" if len(n_blocks) > 1 else str(n_blocks[0]) if n_blocks else "-")
        + ")"
    )
    summary = {}
    for r in rows:
        if r["kernel"] == "_ranking_kernel":
            config = ranking_label
        else:
            config = r["config"]
        entry = summary.setdefault((r["kernel"], config), {"kernel": r["kernel"], "config": config})
        occ = r["occupancy"]
        arch = entry.setdefault(
            r["arch"], {"min": 1.0, "max": 0.0, "active_warps_per_sm": set(), "limited_by": set(), "registers": set()}
        )
        arch["min"] = min(arch["min"], occ["occupancy"])
        arch["max"] = max(arch["max"], occ["occupancy"])
        arch["active_warps_per_sm"].add(occ["active_warps_per_sm"])
        arch["limited_by"].add(occ["limited_by"])
        arch["registers"].add(occ["registers_per_thread"])
    out = []
    for entry in summary.values():
        for arch in (f"sm_{a}" for a in ARCHS):
            if arch in entry:
                entry[arch] = {key: sorted(v) if isinstance(v, set) else v for key, v in entry[arch].items()}
        out.append(entry)
    return out


def reachable_spills(rows, candidates) -> dict:
    """The spilling configurations the code can choose at run time (there is no autotuner): at the default tiles, and
    at the other tile candidates, reachable only through a caller's `TileConfig`."""
    return {
        "autotuned": False,
        "runtime_choices": list(RUNTIME_CHOICES),
        "default_tiles": [
            {
                "kernel": r["kernel"],
                "config": r["config"],
                "arch": r["arch"],
                "spill_stores_bytes": r["spill_stores_bytes"],
                "spill_loads_bytes": r["spill_loads_bytes"],
                "occupancy": r["occupancy"]["occupancy"],
            }
            for r in rows
            if r["spill_stores_bytes"] or r["spill_loads_bytes"]
        ],
        "caller_tiles": {
            f"{c['tiles']} {c['num_warps']} warps": {"compiled": c["compiled"], "spilling": c["spilling"]}
            for c in candidates or ()
            if not c["default"]
        },
    }


def _occupancy_cell(arch_entry) -> str:
    if arch_entry is None:
        return "n/a"
    if arch_entry["min"] == arch_entry["max"]:
        text = _pct(arch_entry["min"])
    else:
        text = f"{_pct(arch_entry['min'])}-{_pct(arch_entry['max'])}"
    warps = "/".join(map(str, arch_entry["active_warps_per_sm"]))
    return f"{text} ({warps} warps/SM; {', '.join(arch_entry['limited_by'])})"


def headline(occupancy_rows) -> str:
    parts = []
    for entry in occupancy_rows:
        if entry["kernel"] in ("_lse_forward_kernel", "_grad_logits_kernel") and not entry["config"].startswith(
            "bf16, bias=False"
        ):
            continue
        cells = ", ".join(
            f"{_pct(entry[a]['min'])}"
            + (f"-{_pct(entry[a]['max'])}" if entry[a]["max"] != entry[a]["min"] else "")
            + f" on {a}"
            for a in (f"sm_{x}" for x in ARCHS)
            if a in entry
        )
        parts.append(f"{entry['kernel']} {cells}")
    return "; ".join(parts)


def markdown(meta, rows, candidates=None, occupancy_rows=None, spills=None) -> str:
    occupancy_rows = occupancy_rows if occupancy_rows is not None else occupancy_summary(rows)
    spills = spills if spills is not None else reachable_spills(rows, candidates)
    title = "# Loss core Triton kernels: static resources for sm_80 and sm_90 (compiled, not run on GPU)"
    if meta.get("smoke"):
        title += " - smoke run (a subset of the kernels, no tile comparison; for the tests)"
    lines = [
        title,
        "",
        f"- Date: {meta['date']}; triton {meta['triton']} (bundled ptxas), torch {meta['torch']}",
        "- Compiled with `triton.compile(ASTSource(...), target=GPUTarget('cuda', arch, 32))`; registers per thread "
        "and spills from `ptxas -v` on the generated PTX; shared memory = Triton's dynamic allocation "
        '(`metadata.shared`) + ptxas static smem; the "Triton cubin" column reads the cubin Triton built itself '
        "(`cuobjdump --dump-resource-usage`: its stack frame holds the spills). Occupancy: theoretical, from the cubin's "
        "registers (the driver's `n_regs`), the shared memory and `metadata.num_warps` against the per-SM limits below "
        "(NVIDIA's occupancy calculator). Timings: not measured on GPU.",
        f"- Register maximum: {meta['max_registers']} per thread. Kernels with spills ({len(meta['spilling'])} of "
        f"{meta['compiled']} compiled): " + ("; ".join(meta["spilling"]) or "none") + ".",
        f"- Occupancy at the default tiles, bf16 without bias: {headline(occupancy_rows)}.",
        "",
        "| kernel | configuration | arch | warps | registers | shared (B) | spill stores (B) | spill loads (B) "
        "| stack (B) | Triton cubin: registers / stack (B) | blocks/SM | warps/SM | occupancy | limited by |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        occ = r["occupancy"]
        lines.append(
            f"| {r['kernel']} | {r['config']} | {r['arch']} | {r['num_warps']} | {r['registers']} | "
            f"{r['triton_shared_bytes'] + r['static_smem_bytes']} | {r['spill_stores_bytes']} | "
            f"{r['spill_loads_bytes']} | {r['stack_frame_bytes']} | {r.get('cubin_registers', 'n/a')} / "
            f"{r.get('cubin_stack_bytes', 'n/a')} | {occ['blocks_per_sm']} | {occ['active_warps_per_sm']} | "
            f"{_pct(occ['occupancy'])} | {occ['limited_by']} |"
        )
    lines += [
        "",
        "## Occupancy at the default tiles",
        "",
        "Theoretical occupancy = resident warps per SM / maximum warps per SM (64 on both), the resident blocks per SM "
        'being the least of the register, shared-memory, warp and block limits ("limited by": the binding ones). '
        "Registers are allocated per warp in units of 256, to whole warps per SM sub-partition (4 per SM); shared memory "
        "per block in units of 128 B plus 1 KB reserved per block; the largest shared-memory carveout. Sources: NVIDIA's "
        "CUDA Occupancy Calculator (`cuda_occupancy.h`) and the CUDA C++ Programming Guide's table of technical "
        "specifications per compute capability. Theoretical only: achieved occupancy is not measured on GPU.",
        "",
        "| limit | " + " | ".join(f"sm_{a} ({ARCH_LIMITS[a]['gpu']})" for a in ARCHS) + " |",
        "|---|" + "---|" * len(ARCHS),
    ]
    for key, name in (
        ("registers_per_sm", "registers per SM"),
        ("registers_per_block", "registers per block"),
        ("max_registers_per_thread", "registers per thread"),
        ("max_warps_per_sm", "warps per SM"),
        ("max_blocks_per_sm", "blocks per SM"),
        ("shared_per_sm", "shared memory per SM (B)"),
        ("shared_per_block", "shared memory per block (B)"),
        ("shared_reserved_per_block", "shared memory reserved per block (B)"),
    ):
        lines.append(f"| {name} | " + " | ".join(str(ARCH_LIMITS[a][key]) for a in ARCHS) + " |")
    lines += [
        "",
        "| kernel | configuration | " + " | ".join(f"sm_{a} occupancy" for a in ARCHS) + " |",
        "|---|---|" + "---|" * len(ARCHS),
    ]
    for entry in occupancy_rows:
        lines.append(
            f"| {entry['kernel']} | {entry['config']} | "
            + " | ".join(_occupancy_cell(entry.get(f"sm_{a}")) for a in ARCHS)
            + " |"
        )
    lines += ["", "## Spilling configurations the autotuner could pick", ""]
    lines += [f"- {text}" for text in spills["runtime_choices"]]
    default_spills = spills["default_tiles"]
    lines.append(
        "- Spilling at the default tiles (what the code picks unless the caller passes tiles): "
        + (
            "; ".join(
                f"{s['kernel']} [{s['config']}] {s['arch']}: {s['spill_stores_bytes']} B stores / "
                f"{s['spill_loads_bytes']} B loads per thread"
                for s in default_spills
            )
            if default_spills
            else "none"
        )
        + "."
    )
    if spills["caller_tiles"]:
        lines.append(
            "- Reachable only with a caller's `TileConfig` (the other tile candidates of the next section, compiled "
            "without bias in bf16/fp16/fp32-tf32/fp32-ieee): "
            + "; ".join(
                f"{name}: {len(entry['spilling'])} of {entry['compiled']} spill"
                for name, entry in spills["caller_tiles"].items()
            )
            + "."
        )
    if candidates:
        keys = list(candidates[0]["worst_spill_bytes"])
        lines += [
            "",
            "## Tile choice",
            "",
            "The logits-tile kernels (no bias) compiled at other tile sizes and warp counts (default marked). Spill "
            "columns: spill stores + loads in bytes per thread, the larger of the forward and backward kernel. "
            "Occupancy columns: bf16, forward / backward kernel. "
            "Chosen: the default without spills in bf16/fp16/fp32-tf32 on both architectures. Speed of each: not "
            "measured on GPU.",
            "",
            "| tiles (T x V x H) | warps | max registers | kernels spilling | max shared (B) | "
            + " | ".join(f"bf16 occupancy sm_{a}" for a in ARCHS)
            + " | "
            + " | ".join(f"spill {k}" for k in keys)
            + " |",
            "|---|---|---|---|---|" + "---|" * (len(keys) + len(ARCHS)),
        ]
        for c in candidates:
            mark = " (default)" if c["default"] else ""
            occ = [c["bf16_occupancy"][f"sm_{a}"] for a in ARCHS]
            lines.append(
                f"| {c['tiles']}{mark} | {c['num_warps']} | {c['max_registers']} | {c['kernels_spilling']} of "
                f"{c['compiled']} | {c['max_shared_bytes']} | "
                + " | ".join(
                    f"{_pct(o.get('_lse_forward_kernel', 0))} / {_pct(o.get('_grad_logits_kernel', 0))}" for o in occ
                )
                + " | "
                + " | ".join(str(c["worst_spill_bytes"][k]) for k in keys)
                + " |"
            )
    return "\n".join(lines) + "\n"


def plot(rows, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [
        f"{r['kernel'].strip('_').replace('_kernel', '')}\n{r['config'].split(',')[0]}"
        for r in rows
        if r["arch"] == "sm_80"
    ]
    fig, axes = plt.subplots(3, 1, figsize=(max(10, 0.35 * len(labels)), 9.5), sharex=True)
    width = 0.4
    for j, arch in enumerate(f"sm_{a}" for a in ARCHS):
        part = [r for r in rows if r["arch"] == arch]
        xs = [i + j * width for i in range(len(part))]
        axes[0].bar(xs, [r["registers"] for r in part], width, label=arch)
        axes[1].bar(xs, [(r["triton_shared_bytes"] + r["static_smem_bytes"]) / 1024 for r in part], width, label=arch)
        axes[2].bar(xs, [100 * r["occupancy"]["occupancy"] for r in part], width, label=arch)
    axes[0].axhline(255, ls="--", lw=0.8, color="gray")
    axes[0].set_ylabel("registers / thread")
    axes[1].set_ylabel("shared memory (KiB)")
    axes[2].set_ylabel("theoretical occupancy (%)")
    axes[2].set_ylim(0, 105)
    axes[2].set_xticks([i + width / 2 for i in range(len(labels))], labels, rotation=90, fontsize=6)
    axes[0].legend()
    fig.suptitle("PRO loss core Triton kernels, compiled for sm_80 / sm_90 (static; not run on GPU)")
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    os.replace(tmp, path)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results"))
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="bf16 logits-tile kernels without bias, the finalize kernel and one ranking variant, no tile comparison; "
        "writes loss_core_kernels_static_smoke.* (a check that the script works, not the report)",
    )
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        # The interpreter replaces `@triton.jit` at import; rerun with the compiler
        env = {**os.environ, "TRITON_INTERPRET": "0"}
        sys.exit(
            subprocess.run([sys.executable, os.path.abspath(__file__), *(argv or sys.argv[1:])], env=env).returncode
        )
    sys.path.insert(0, REPO)
    import torch
    import triton

    rows = compile_all(list(_configs(smoke=args.smoke)))
    candidates = [] if args.smoke else compare_tiles()
    spilling = sorted(
        {
            f"{r['kernel']} [{r['config']}] {r['arch']}"
            for r in rows
            if r["spill_stores_bytes"] or r["spill_loads_bytes"]
        }
    )
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "triton": triton.__version__,
        "torch": torch.__version__,
        "smoke": args.smoke,
        "spilling": spilling,
        "max_registers": max(r["registers"] for r in rows),
        "compiled": len(rows),
    }
    occupancy_rows = occupancy_summary(rows)
    spills = reachable_spills(rows, candidates)
    report = {
        "meta": meta,
        "arch_limits": {f"sm_{a}": ARCH_LIMITS[a] for a in ARCHS},
        "kernels": rows,
        "occupancy_default_tiles": occupancy_rows,
        "spilling_configurations": spills,
        "tile_candidates": candidates,
    }
    text = markdown(meta, rows, candidates, occupancy_rows, spills)
    os.makedirs(args.out, exist_ok=True)
    base = os.path.join(args.out, "loss_core_kernels_static" + ("_smoke" if args.smoke else ""))
    for suffix, content in ((".json", json.dumps(report, indent=1) + "\n"), (".md", text)):
        with open(base + suffix + ".tmp", "w") as f:
            f.write(content)
        os.replace(base + suffix + ".tmp", base + suffix)
    plot(rows, base + ".png")
    print(text)


if __name__ == "__main__":
    main()
