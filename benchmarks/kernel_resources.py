"""Static resource report of the loss core's Triton kernels for sm_80 (A100) and sm_90 (H100), without a GPU.

Every kernel is compiled (`triton.compile` with a `GPUTarget`, Triton's bundled ptxas) in each configuration the
dispatcher can choose: the logits-tile kernels for bf16, fp16, fp32 with TF32 and fp32 IEEE inputs, with and without
an LM-head bias, at the default tiles (`trl_pro.loss_core.common.DEFAULT_TILES`); the finalize kernel; the ranking
kernel for every combination of its flags at N_BLOCK 16, and for N_BLOCK 2..64 (ranking lengths up to 64). For each:
registers per thread, spill stores/loads (bytes, from `ptxas -v`), shared memory (Triton's dynamic allocation plus
static), local memory. A regression in any of them shows up here without a GPU; run time is not measured on GPU.

Writes benchmarks/results/loss_core_kernels_static.{json,md,png}.

    python benchmarks/kernel_resources.py
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


def _configs(tiles=None, logits_only: bool = False):
    import triton.language as tl

    from trl_pro.loss_core.common import DEFAULT_TILES
    from trl_pro.loss_core.triton import pro_ranking, token_logprob

    tiles = tiles or DEFAULT_TILES
    dtypes = (
        ("bf16", tl.bfloat16, "*bf16", "ieee"),
        ("fp16", tl.float16, "*fp16", "ieee"),
        ("fp32-tf32", tl.float32, "*fp32", "tf32"),
        ("fp32-ieee", tl.float32, "*fp32", "ieee"),
    )
    for name, dtype, ptr, precision in dtypes:
        for bias in (True, False):
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
                    dz_ptr=ptr,
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
            rows.append(
                {
                    "kernel": fn.__name__,
                    "config": label,
                    "arch": f"sm_{arch}",
                    "num_warps": num_warps,
                    "triton_shared_bytes": kernel.metadata.shared,
                    **usage,
                }
            )
            print(
                f"{fn.__name__} [{label}] sm_{arch}: {usage['registers']} regs, "
                f"{kernel.metadata.shared} B shared, spills {usage['spill_stores_bytes']}/"
                f"{usage['spill_loads_bytes']} B",
                file=sys.stderr,
                flush=True,
            )
    return rows


def compare_tiles() -> list[dict]:
    """The logits-tile kernels (no bias; bf16, fp16, fp32-tf32, fp32-ieee; sm_80 and sm_90) compiled at each of
    `TILE_CANDIDATES`: the spills and registers that chose the default tiles."""
    import dataclasses

    from trl_pro.loss_core.common import DEFAULT_TILES

    summary = []
    for block_t, block_v, block_h, num_warps in TILE_CANDIDATES:
        tiles = dataclasses.replace(
            DEFAULT_TILES, block_t=block_t, block_v=block_v, block_h=block_h, num_warps=num_warps
        )
        configs = [c for c in _configs(tiles, logits_only=True) if "bias=False" in c[1]]
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
            }
        )
    return summary


def markdown(meta, rows, candidates=None) -> str:
    lines = [
        "# Loss core Triton kernels: static resources for sm_80 and sm_90 (compiled, not run on GPU)",
        "",
        f"- Date: {meta['date']}; triton {meta['triton']} (bundled ptxas), torch {meta['torch']}",
        "- Compiled with `triton.compile(ASTSource(...), target=GPUTarget('cuda', arch, 32))`; registers per thread "
        "and spills from `ptxas -v` on the generated PTX; shared memory = Triton's dynamic allocation "
        "(`metadata.shared`) + ptxas static smem; the last column reads the cubin Triton built itself "
        "(`cuobjdump --dump-resource-usage`: its stack frame holds the spills). Timings: not measured on GPU.",
        f"- Register maximum: {meta['max_registers']} per thread. Kernels with spills ({len(meta['spilling'])} of "
        f"{meta['compiled']} compiled): " + ("; ".join(meta["spilling"]) or "none") + ".",
        "",
        "| kernel | configuration | arch | warps | registers | shared (B) | spill stores (B) | spill loads (B) "
        "| stack (B) | Triton cubin: registers / stack (B) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['kernel']} | {r['config']} | {r['arch']} | {r['num_warps']} | {r['registers']} | "
            f"{r['triton_shared_bytes'] + r['static_smem_bytes']} | {r['spill_stores_bytes']} | "
            f"{r['spill_loads_bytes']} | {r['stack_frame_bytes']} | {r.get('cubin_registers', 'n/a')} / "
            f"{r.get('cubin_stack_bytes', 'n/a')} |"
        )
    if candidates:
        keys = list(candidates[0]["worst_spill_bytes"])
        lines += [
            "",
            "## Tile choice",
            "",
            "The logits-tile kernels (no bias) compiled at other tile sizes and warp counts (default marked). Spill "
            "columns: spill stores + loads in bytes per thread, the larger of the forward and backward kernel. "
            "Chosen: the default without spills in bf16/fp16/fp32-tf32 on both architectures. Speed of each: not "
            "measured on GPU.",
            "",
            "| tiles (T x V x H) | warps | max registers | kernels spilling | max shared (B) | "
            + " | ".join(f"spill {k}" for k in keys)
            + " |",
            "|---|---|---|---|---|" + "---|" * len(keys),
        ]
        for c in candidates:
            mark = " (default)" if c["default"] else ""
            lines.append(
                f"| {c['tiles']}{mark} | {c['num_warps']} | {c['max_registers']} | {c['kernels_spilling']} of "
                f"{c['compiled']} | {c['max_shared_bytes']} | "
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
    fig, axes = plt.subplots(2, 1, figsize=(max(10, 0.35 * len(labels)), 7), sharex=True)
    width = 0.4
    for j, arch in enumerate(f"sm_{a}" for a in ARCHS):
        part = [r for r in rows if r["arch"] == arch]
        xs = [i + j * width for i in range(len(part))]
        axes[0].bar(xs, [r["registers"] for r in part], width, label=arch)
        axes[1].bar(xs, [(r["triton_shared_bytes"] + r["static_smem_bytes"]) / 1024 for r in part], width, label=arch)
    axes[0].axhline(255, ls="--", lw=0.8, color="gray")
    axes[0].set_ylabel("registers / thread")
    axes[1].set_ylabel("shared memory (KiB)")
    axes[1].set_xticks([i + width / 2 for i in range(len(labels))], labels, rotation=90, fontsize=6)
    axes[0].legend()
    fig.suptitle("PRO loss core Triton kernels, compiled for sm_80 / sm_90 (static; not run on GPU)")
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    os.replace(tmp, path)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results"))
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

    rows = compile_all()
    candidates = compare_tiles()
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
        "spilling": spilling,
        "max_registers": max(r["registers"] for r in rows),
        "compiled": len(rows),
    }
    os.makedirs(args.out, exist_ok=True)
    base = os.path.join(args.out, "loss_core_kernels_static")
    for suffix, text in (
        (".json", json.dumps({"meta": meta, "kernels": rows, "tile_candidates": candidates}, indent=1) + "\n"),
        (".md", markdown(meta, rows, candidates)),
    ):
        with open(base + suffix + ".tmp", "w") as f:
            f.write(text)
        os.replace(base + suffix + ".tmp", base + suffix)
    plot(rows, base + ".png")
    print(markdown(meta, rows, candidates))


if __name__ == "__main__":
    main()
