"""A fused Triton kernel for TAR, CTGM's Temporal Affinity Refiner, at inference.

TAR runs two temporal modules (:class:`~.ctgm.TemporalModule`) over the pre-softmax scores of every
``attn2`` of its sites, the 77 text tokens as channels, 72 hidden channels in 8 heads of 9, one
sequence of ``F - 1`` frames per (clip, ``attn2`` head, latent pixel): 983,040 tokens per module at
SD 1.5's 64x64 layers. Eager, each module is a chain of about 30 kernels over tensors of that size
(GroupNorm, the permutes into and out of the frame-major layout, LayerNorms, projections, two
attentions over 15 frames, the GEGLU feed-forward), and the attention products are batched matrix
products of 16 x 16 tiles, which no library kernel runs well; compiled by inductor it still costs 10 ms
(``benchmarks/RESULTS.md``, "fifth lease"). A temporal module's FLOPs are small (about 130 k a token),
so the cost is in moving the tensor through memory and in launch-bound tiny products.

Here one program holds ``block_pixels`` sequences whole (all their frames and channels) in registers,
reads them once from the scores in their own layout ``(B*F, heads, h*w, T)`` (no permute copies),
applies the module's GroupNorm, ``proj_in``, the transformer block (LayerNorm, sinusoidal positions,
two self-attentions over the frames, LayerNorm, GEGLU feed-forward) and ``proj_out`` with its
residual, and writes the result once. GroupNorm's statistics reach over every pixel of a frame, so
they come from a small reduction kernel before the first module, and from atomic sums in the first
module's epilogue for the second. The matrix products run on the tensor cores in the weights' dtype
(fp16 or bf16) with fp32 accumulation; normalisations, softmax and the feed-forward's gate run in
fp32, and the residual stream stays in fp32 inside the program (eager rounds it to fp16 after every
layer), so the values are those of the eager module up to the rounding of the weights' dtype
(tested against an fp32 evaluation of the module: ``tests/ctgm/test_ctgm_kernels.py``).

Padding: the text tokens are padded to the next power of two (77 -> 128), each head to 16 channels
(8 x 16 = 128 columns for the 72 hidden channels, head-major), the frames to at least 16: Triton's
blocks are powers of two and its matrix products take at least 16 along each side. The padded lanes
are masked to zero and never stored.

Measured on an H200 (``benchmarks/RESULTS.md``, "fourteenth lease"): both modules at the 64x64 layers
in 13.5 ms against 35.6 ms eager (32x32: 3.5 against 9.1; 16x16: 0.96 against 2.4-4.6), with a relative
error against the fp32 modules of 8.3e-4 against eager fp16's 1.05e-3 (bf16: 6.4e-3 against 8.2e-3);
a whole 25-step AnimateDiff run at SD 1.5 size with TAR on 16 sites costs 1.58x stock with it (2.42x
eager), on the 7 ``part`` sites 1.24x (1.57x eager). That is still far from what the FLOPs allow (about
1 ms per module). Nsight Compute finds the kernel latency-bound: two programs a multiprocessor (all
255 registers a thread, 170-370 bytes of them spilled), and its largest stall is the instruction cache
(the code of a whole module in one program). Hence the loops: the block's two self-attentions run as
one loop over their packed weights (their code once; 19.0 -> 16.3 ms at 4 pixels a program, 17.4 ->
13.5 ms at 2), and the feed-forward's chunks as a loop that is neither unrolled nor software-pipelined
(``tl.range(..., num_stages=1)``; unrolled, the kernel took 21.9 ms; pipelined, Triton multi-buffers
the chunks' weights in 136 KiB of shared memory and it takes 24.6 ms). Running the attentions one head
at a time, over all of a program's sequences in one block-diagonal product, spilled less, but on the
GPU it computed wrong values at 64 and 128 rows a program (right in the interpreter and at 32 rows,
where it was no faster), so the attention stays batched over heads. It is the default for TAR at
inference on CUDA (``tar_kernel="auto"``).

**A refused launch configuration.** With 8 warps on 64 rows (4 pixels x 16 frames), Triton 3.6's code
for Hopper reads past the shared memory it allocated, in the feed-forward's second product
(compute-sanitizer: "Invalid __shared__ read of size 2048 bytes", then "an illegal memory access" at
the next launch). The kernel's addresses do not depend on the launch configuration, so this is the
compiler's. 4 warps on 32, 64 and 128 rows, and 8 warps on 32 or 128 rows, ran clean under
compute-sanitizer before the attentions became a loop (the loop has not been under it yet); 4 warps
on 16 rows ran clean without it.
:func:`fused_tar` refuses more than 4 warps on fewer than 16 rows a warp, which excludes that case
(and, to be safe, 8 warps on 32 rows).

Only inference: there is no backward. :func:`fused_tar_problem` says why a call cannot take the
kernel (no Triton, not CUDA, gradients wanted, fp32 modules, bf16 before Ampere, sizes past the
kernel's, or an earlier compile of it that failed on this device), and
:meth:`~.ctgm.CTGMLayer.refine_scores` then runs the eager modules. Setting ``TRITON_INTERPRET=1``
before this module is imported runs the kernels in Triton's interpreter on the CPU (how the tests
check them on machines without a GPU).
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Sequence

import torch
import torch.nn.functional as F

try:  # Triton is optional: it comes with PyTorch's CUDA wheels, and the CPU wheels go without it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised on machines without Triton
    triton = None
    tl = None

__all__ = [
    "DEFAULT_BLOCK_PIXELS", "DEFAULT_WARPS", "fused_tar", "fused_tar_problem", "hybrid_tar", "interpreting", "launch_problem",
    "mark_failed",
]  # fmt: skip

DEFAULT_BLOCK_PIXELS = 2
"""Sequences (latent pixels) per program: 2 x 16 frames = 32 rows per matrix product (faster than 4
pixels at the 64x64, 32x32 and 16x16 layers since the attentions became a loop, taking 5-17 % less time;
``benchmarks/RESULTS.md``)."""
DEFAULT_WARPS = 4

MAX_CHANNELS = 128
"""Widest text-token count and padded hidden width (heads x padded head width) the kernel holds."""
MAX_FRAMES = 32
FF_CHUNK = 32


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _pow2(n: int, least: int = 16) -> int:
    return max(least, 1 << max(0, int(n) - 1).bit_length())


_FAILED: dict[tuple, str] = {}
"""(device, modules' dtype) -> why compiling the kernel failed there; later calls take the eager path."""


def _device_key(scores: torch.Tensor, dtype: torch.dtype) -> tuple:
    return (str(scores.device), dtype)


def mark_failed(scores: torch.Tensor, dtype: torch.dtype, error: BaseException) -> str:
    """Remember that the kernel failed to compile or load for ``dtype`` modules on ``scores``' device
    (:func:`fused_tar_problem` then names it); returns the sentence it will give."""
    reason = f"compiling the kernel failed on this device ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})"
    _FAILED[_device_key(scores, dtype)] = reason
    return reason


def compile_errors() -> tuple[type[BaseException], ...]:
    """Triton's compile and resource errors: what ``tar_kernel="auto"`` recovers from (with a warning)."""
    if triton is None:
        return ()
    found = []
    for module, name in (("triton.compiler.errors", "CompilationError"), ("triton.runtime.errors", "OutOfResources"),
                         ("triton.runtime.errors", "PTXASError")):  # fmt: skip
        try:
            found.append(getattr(__import__(module, fromlist=[name]), name))
        except (ImportError, AttributeError):
            continue
    return tuple(found)


def launch_problem(block_pixels: int, num_warps: int, num_frames: int) -> str | None:
    """Why the kernel refuses this launch configuration (a sentence), or None."""
    if block_pixels < 1 or block_pixels & (block_pixels - 1) or block_pixels > 16:
        return f"block_pixels must be a power of two from 1 to 16, not {block_pixels}"
    if num_warps not in (1, 2, 4, 8):
        return f"num_warps must be 1, 2, 4 or 8, not {num_warps}"
    rows = block_pixels * _pow2(num_frames - 1)
    if num_warps > 4 and rows < 16 * num_warps:
        return (f"{num_warps} warps on {rows} rows ({block_pixels} pixels x {rows // block_pixels} frames): "
                "Triton miscompiles 8 warps on 64 rows (a shared-memory read out of bounds); use 4 warps or more pixels")
    return None


def _module_problem(module) -> str | None:
    blocks = getattr(module, "transformer_blocks", None)
    if blocks is None or len(blocks) != 1:
        return "a temporal module with one transformer block"
    block = blocks[0]
    if getattr(block, "norm_type", None) != "layer_norm" or block.attn2 is None or block.norm3 is None:
        return "a layer-norm block with two self-attentions and a feed-forward"
    if block.only_cross_attention or block.attn1.to_q.bias is not None:
        return "self-attentions without query bias"
    for attention in (block.attn1, block.attn2):
        if attention.to_k.in_features != attention.to_q.in_features or attention.residual_connection:
            return "two self-attentions"
    if (block.attn1.heads, block.attn1.inner_dim, block.attn1.scale) != (block.attn2.heads, block.attn2.inner_dim, block.attn2.scale):
        return "two self-attentions of the same heads and width"
    from diffusers.models.activations import GEGLU

    if not isinstance(block.ff.net[0], GEGLU):
        return "a GEGLU feed-forward"
    heads = block.attn1.heads
    width = block.attn1.inner_dim // heads
    if heads & (heads - 1) or heads * _pow2(width) > MAX_CHANNELS:
        return f"at most {MAX_CHANNELS} padded hidden channels in a power-of-two number of heads"
    if module.proj_in.in_features > MAX_CHANNELS:
        return f"at most {MAX_CHANNELS} text tokens"
    return None


def fused_tar_problem(modules: Sequence[torch.nn.Module], scores: torch.Tensor, num_frames: int,
                      *, allow_interpreter: bool = True) -> str | None:  # fmt: skip
    """Why :func:`fused_tar` cannot run these modules on ``scores`` (a sentence), or None when it can.
    ``allow_interpreter=False``: CPU tensors are refused even under ``TRITON_INTERPRET=1`` (what
    ``tar_kernel="auto"`` asks: the interpreter is for tests, and far slower than the eager modules)."""
    if triton is None:
        return "Triton is not installed"
    if not (scores.is_cuda or (allow_interpreter and interpreting())):
        return "the scores are not on a CUDA device"
    if scores.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return f"the kernel reads fp32, fp16 and bf16 scores, these are {scores.dtype}"
    dtypes = {p.dtype for m in modules for p in m.parameters()}
    if len(dtypes) != 1 or not dtypes <= {torch.float16, torch.bfloat16}:
        return f"the kernel runs fp16 or bf16 modules, these are {', '.join(sorted(str(d) for d in dtypes))}"
    dtype = next(iter(dtypes))
    if dtype == torch.bfloat16 and scores.is_cuda and torch.cuda.get_device_capability(scores.device)[0] < 8:
        return "bf16 matrix products need an Ampere or newer GPU"
    if _device_key(scores, dtype) in _FAILED:
        return _FAILED[_device_key(scores, dtype)]
    if torch.is_grad_enabled() and (scores.requires_grad or any(p.requires_grad for m in modules for p in m.parameters())):
        return "gradients are wanted (the kernel has no backward)"
    if not 2 <= num_frames <= MAX_FRAMES + 1:
        return f"the kernel takes 2 to {MAX_FRAMES + 1} frames"
    for module in modules:
        problem = _module_problem(module)
        if problem is not None:
            return f"the kernel needs {problem}"
        if module.proj_in.in_features != scores.shape[-1]:
            return "the modules' channels differ from the text tokens"
    return None


# --------------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------------

if triton is not None:

    @triton.jit
    def _group_sums(v, valid_t, t, T: tl.constexpr, CPG: tl.constexpr, G: tl.constexpr, GP: tl.constexpr):
        """Per-group sums of ``v`` ``(rows, TP)`` along its channels: ``(rows, GP)``."""
        g = tl.arange(0, GP)
        onehot = ((t[:, None] // CPG) == g[None, :]) & valid_t[:, None] & (g[None, :] < G)
        return tl.sum(v[:, :, None] * onehot[None, :, :].to(tl.float32), axis=1)

    @triton.jit
    def _scores_stats_kernel(x_ptr, stats_ptr, F, HA, Q, L,
                             T: tl.constexpr, TP: tl.constexpr, CPG: tl.constexpr, GP: tl.constexpr,
                             LP: tl.constexpr, BQ: tl.constexpr):  # fmt: skip
        """Sums and sums of squares per (clip*head, frame 1.., group) of the scores, atomically added
        into ``stats`` ``(B*HA, LP, GP, 2)`` (padded frames and groups have slots of their own)."""
        pid_q = tl.program_id(0)
        slab = tl.program_id(1)  # (b*HA + head) * L + frame index
        bh = slab // L
        fi = slab % L
        b = bh // HA
        head = bh % HA
        base = ((b * F + fi + 1) * HA + head).to(tl.int64) * Q * T
        q = pid_q * BQ + tl.arange(0, BQ)
        t = tl.arange(0, TP)
        valid_t = t < T
        mask = (q[:, None] < Q) & valid_t[None, :]
        x = tl.load(x_ptr + base + q[:, None].to(tl.int64) * T + t[None, :], mask=mask, other=0.0).to(tl.float32)
        sums = tl.sum(x, axis=0)
        squares = tl.sum(x * x, axis=0)
        both = tl.join(sums, squares)  # (TP, 2)
        g = tl.arange(0, GP)
        onehot = (((t[:, None] // CPG) == g[None, :]) & valid_t[:, None]).to(tl.float32)  # (TP, GP)
        per_group = tl.sum(both[:, None, :] * onehot[:, :, None], axis=0)  # (GP, 2); padded groups 0
        k = tl.arange(0, 2)
        tl.atomic_add(stats_ptr + ((bh * LP + fi) * GP + g[:, None]) * 2 + k[None, :], per_group)

    @triton.jit
    def _layer_norm(h, w_ptr, b_ptr, jcol, valid_c, H: tl.constexpr, eps):
        """LayerNorm over the ``H`` valid columns of ``h`` ``(R, HPAD)``, fp32; padded columns 0."""
        mean = tl.sum(h, axis=1) / H
        diff = tl.where(valid_c[None, :], h - mean[:, None], 0.0)
        var = tl.sum(diff * diff, axis=1) / H
        w = tl.load(w_ptr + jcol, mask=valid_c, other=0.0).to(tl.float32)
        b = tl.load(b_ptr + jcol, mask=valid_c, other=0.0).to(tl.float32)
        return diff * tl.rsqrt(var + eps)[:, None] * w[None, :] + b[None, :]

    @triton.jit
    def _positions(pe_ptr, fi, jcol, valid_c, L, H: tl.constexpr):
        """The sinusoidal position of each row's frame, ``(R, HPAD)`` fp32."""
        return tl.load(pe_ptr + fi[:, None] * H + jcol[None, :], mask=(fi < L)[:, None] & valid_c[None, :],
                       other=0.0).to(tl.float32)  # fmt: skip

    @triton.jit
    def _square_weight(w_ptr, jcol, valid_c, H: tl.constexpr, HPAD: tl.constexpr):
        """``W^T`` of an ``(H, H)`` linear weight in the head-padded layout: ``(HPAD in, HPAD out)``."""
        return tl.load(w_ptr + jcol[None, :] * H + jcol[:, None], mask=valid_c[:, None] & valid_c[None, :], other=0.0)

    @triton.jit
    def _self_attention(x16, wq, wk, wv, wo, bo, jcol, valid_c, L, scale,
                        BP: tl.constexpr, LP: tl.constexpr, NH: tl.constexpr, DP: tl.constexpr,
                        H: tl.constexpr, HPAD: tl.constexpr):  # fmt: skip
        """Self-attention over the frames of each sequence: ``(R, HPAD)`` -> ``(R, HPAD)`` fp32 (with
        ``to_out``'s bias), the scores and softmax in fp32."""
        dtype = x16.dtype
        q = tl.dot(x16, _square_weight(wq, jcol, valid_c, H, HPAD)).to(dtype)
        k = tl.dot(x16, _square_weight(wk, jcol, valid_c, H, HPAD)).to(dtype)
        v = tl.dot(x16, _square_weight(wv, jcol, valid_c, H, HPAD)).to(dtype)
        q3 = tl.reshape(tl.permute(tl.reshape(q, (BP, LP, NH, DP)), (0, 2, 1, 3)), (BP * NH, LP, DP))
        k3 = tl.reshape(tl.permute(tl.reshape(k, (BP, LP, NH, DP)), (0, 2, 1, 3)), (BP * NH, LP, DP))
        v3 = tl.reshape(tl.permute(tl.reshape(v, (BP, LP, NH, DP)), (0, 2, 1, 3)), (BP * NH, LP, DP))
        s = tl.dot(q3, tl.trans(k3, (0, 2, 1))) * scale  # (BP*NH, LP, LP)
        keys = tl.arange(0, LP)
        s = tl.where((keys < L)[None, None, :], s, float("-inf"))
        s = s - tl.max(s, axis=2)[:, :, None]
        p = tl.exp(s)
        p = p / tl.sum(p, axis=2)[:, :, None]
        o3 = tl.dot(p.to(dtype), v3)  # (BP*NH, LP, DP)
        o = tl.reshape(tl.permute(tl.reshape(o3, (BP, NH, LP, DP)), (0, 2, 1, 3)), (BP * LP, NH * DP))
        out = tl.dot(o.to(dtype), _square_weight(wo, jcol, valid_c, H, HPAD))
        bias = tl.load(bo + jcol, mask=valid_c, other=0.0).to(tl.float32)
        return out + bias[None, :]

    @triton.jit
    def _temporal_module_kernel(
        x_ptr, out_ptr, stats_in_ptr, stats_out_ptr,
        gn_w, gn_b, w_in, b_in,
        ln_w, ln_b, attn_w, attn_b, ff1_w, ff1_b, ff2_w, ff2_b,
        w_out, b_out, pe_ptr,
        F, HA, Q, L, gn_eps, ln_eps, scale,
        T: tl.constexpr, TP: tl.constexpr, CPG: tl.constexpr, G: tl.constexpr, GP: tl.constexpr,
        NH: tl.constexpr, D: tl.constexpr, DP: tl.constexpr, FFH: tl.constexpr, FC: tl.constexpr,
        BP: tl.constexpr, LP: tl.constexpr, HAS_PE: tl.constexpr, STATS: tl.constexpr,
    ):  # fmt: skip
        """One temporal module on ``BP`` sequences: ``out = x + proj_out(block(proj_in(GN(x))))``."""
        H: tl.constexpr = NH * D
        HPAD: tl.constexpr = NH * DP
        R: tl.constexpr = BP * LP
        pid_p = tl.program_id(0)
        bh = tl.program_id(1)
        b = bh // HA
        head = bh % HA

        r = tl.arange(0, R)
        pixel = pid_p * BP + r // LP
        fi = r % LP
        valid_r = (fi < L) & (pixel < Q)
        t = tl.arange(0, TP)
        valid_t = t < T
        c = tl.arange(0, HPAD)
        d = c % DP
        valid_c = d < D
        jcol = tl.where(valid_c, (c // DP) * D + d, 0)  # the column's channel in the module's layout

        row = (((b * F + fi + 1) * HA + head).to(tl.int64) * Q + pixel) * T
        io_mask = valid_r[:, None] & valid_t[None, :]
        x = tl.load(x_ptr + row[:, None] + t[None, :], mask=io_mask, other=0.0).to(tl.float32)  # read again at the end

        # GroupNorm per frame, statistics over the frame's pixels and the group's channels
        count = CPG * Q
        stat = ((bh * LP + fi)[:, None] * GP + t[None, :] // CPG) * 2
        s1 = tl.load(stats_in_ptr + stat, mask=io_mask, other=0.0)
        s2 = tl.load(stats_in_ptr + stat + 1, mask=io_mask, other=0.0)
        mean = s1 / count
        rstd = tl.rsqrt(tl.maximum(s2 / count - mean * mean, 0.0) + gn_eps)
        gw = tl.load(gn_w + t, mask=valid_t, other=0.0).to(tl.float32)
        gb = tl.load(gn_b + t, mask=valid_t, other=0.0).to(tl.float32)
        xn = tl.where(io_mask, (x - mean) * rstd * gw[None, :] + gb[None, :], 0.0)
        dtype = w_in.dtype.element_ty

        # proj_in: (R, TP) @ (TP, HPAD)
        w = tl.load(w_in + jcol[None, :] * T + t[:, None], mask=valid_t[:, None] & valid_c[None, :], other=0.0)
        bias = tl.load(b_in + jcol, mask=valid_c, other=0.0).to(tl.float32)
        h = tl.dot(xn.to(dtype), w) + bias[None, :]

        # the block's two self-attentions, as one loop over their packed weights: their code once, not twice
        # (the kernel's largest stall is the instruction cache: benchmarks/RESULTS.md, "fourteenth lease")
        for which in tl.range(0, 2, num_stages=1):
            n = _layer_norm(h, ln_w + which * H, ln_b + which * H, jcol, valid_c, H, ln_eps)
            if HAS_PE:
                n += _positions(pe_ptr, fi, jcol, valid_c, L, H)
            aw = attn_w + which * 4 * H * H
            h += _self_attention(n.to(dtype), aw, aw + H * H, aw + 2 * H * H, aw + 3 * H * H, attn_b + which * H,
                                 jcol, valid_c, L, scale, BP, LP, NH, DP, H, HPAD)  # fmt: skip

        # GEGLU feed-forward in chunks of FC hidden channels
        n16 = _layer_norm(h, ln_w + 2 * H, ln_b + 2 * H, jcol, valid_c, H, ln_eps).to(dtype)
        acc = tl.zeros((R, HPAD), dtype=tl.float32)
        # a loop, not unrolled, and not software-pipelined: pipelining it multi-buffers the chunks'
        # weight loads into 136 KiB of shared memory and makes the kernel slower (benchmarks/RESULTS.md)
        for chunk in tl.range(0, FFH, FC, num_stages=1):
            f = chunk + tl.arange(0, FC)
            valid_f = f < FFH
            wmask = valid_c[:, None] & valid_f[None, :]
            wa = tl.load(ff1_w + f[None, :] * H + jcol[:, None], mask=wmask, other=0.0)
            wg = tl.load(ff1_w + (f[None, :] + FFH) * H + jcol[:, None], mask=wmask, other=0.0)
            ba = tl.load(ff1_b + f, mask=valid_f, other=0.0).to(tl.float32)
            bg = tl.load(ff1_b + FFH + f, mask=valid_f, other=0.0).to(tl.float32)
            a = tl.dot(n16, wa) + ba[None, :]
            gate = tl.dot(n16, wg) + bg[None, :]
            u = a * (0.5 * gate * (1.0 + tl.erf(gate * 0.7071067811865476)))
            w2 = tl.load(ff2_w + jcol[None, :] * FFH + f[:, None], mask=valid_f[:, None] & valid_c[None, :], other=0.0)
            acc += tl.dot(u.to(dtype), w2)
        bias = tl.load(ff2_b + jcol, mask=valid_c, other=0.0).to(tl.float32)
        h += acc + bias[None, :]

        # proj_out: (R, HPAD) @ (HPAD, TP), and the module's residual
        w = tl.load(w_out + t[None, :] * H + jcol[:, None], mask=valid_c[:, None] & valid_t[None, :], other=0.0)
        bias = tl.load(b_out + t, mask=valid_t, other=0.0).to(tl.float32)
        x = tl.load(x_ptr + row[:, None] + t[None, :], mask=io_mask, other=0.0).to(tl.float32)
        y = x + (tl.dot(h.to(dtype), w) + bias[None, :]).to(dtype).to(tl.float32)
        y = y.to(out_ptr.dtype.element_ty)
        tl.store(out_ptr + row[:, None] + t[None, :], y, mask=io_mask)

        if STATS:  # the next module's GroupNorm statistics: sums over this program's pixels, per frame
            v = tl.where(io_mask, y.to(tl.float32), 0.0)
            v1 = tl.sum(tl.reshape(v, (BP, LP, TP)), axis=0)  # (LP, TP)
            v2 = tl.sum(tl.reshape(v * v, (BP, LP, TP)), axis=0)
            g1 = _group_sums(v1, valid_t, t, T, CPG, G, GP)  # (LP, GP)
            g2 = _group_sums(v2, valid_t, t, T, CPG, G, GP)
            frames = tl.arange(0, LP)
            g = tl.arange(0, GP)
            where = stats_out_ptr + ((bh * LP + frames)[:, None] * GP + g[None, :]) * 2  # padded slots get 0
            tl.atomic_add(where, g1)
            tl.atomic_add(where + 1, g2)


    @triton.jit
    def _frame_attention_kernel(qkv_ptr, out_ptr, HA, Q, L, scale,
                                NH: tl.constexpr, D: tl.constexpr, DP: tl.constexpr, LP: tl.constexpr,
                                BS: tl.constexpr):  # fmt: skip
        """The self-attention over the frames for ``BS`` sequences and one head: ``qkv`` ``(M, 3 H)``
        (queries, keys, values side by side, ``H = NH * D``) and ``out`` ``(M, H)`` in the tokens' order
        ``(clip, frame, attn2 head, pixel)``; scores and softmax in fp32."""
        pid_p = tl.program_id(0)
        bh = tl.program_id(1)  # clip * HA + attn2 head
        head = tl.program_id(2)
        b = bh // HA
        ha = bh % HA
        H: tl.constexpr = NH * D
        p = pid_p * BS + tl.arange(0, BS)
        frame = tl.arange(0, LP)
        d = tl.arange(0, DP)
        row = ((b * L + frame[None, :]) * HA + ha).to(tl.int64) * Q + p[:, None]  # (BS, LP)
        valid = (p < Q)[:, None, None] & (frame < L)[None, :, None] & (d < D)[None, None, :]
        at = row[:, :, None] * (3 * H) + head * D + d[None, None, :]
        q = tl.load(qkv_ptr + at, mask=valid, other=0.0)
        k = tl.load(qkv_ptr + at + H, mask=valid, other=0.0)
        v = tl.load(qkv_ptr + at + 2 * H, mask=valid, other=0.0)
        s = tl.dot(q, tl.trans(k, (0, 2, 1))) * scale  # (BS, LP, LP)
        s = tl.where((frame < L)[None, None, :], s, float("-inf"))
        s = s - tl.max(s, axis=2)[:, :, None]
        e = tl.exp(s)
        w = e / tl.sum(e, axis=2)[:, :, None]
        o = tl.dot(w.to(v.dtype), v)  # (BS, LP, DP)
        tl.store(out_ptr + row[:, :, None] * H + head * D + d[None, None, :], o.to(out_ptr.dtype.element_ty), mask=valid)


# --------------------------------------------------------------------------------------------------
# Launch
# --------------------------------------------------------------------------------------------------


_COMPILED: dict[tuple, object] = {}
"""(block_pixels, num_warps, with statistics) -> the module kernel last launched with them."""


def compiled_resources() -> list[dict]:
    """Registers and spilled bytes a thread, and shared memory, of each compiled module kernel that
    :func:`fused_tar` has launched in this process (empty in the interpreter): what the benchmark
    reports next to its timings."""
    rows = []
    for (block_pixels, num_warps, stats), kernel in _COMPILED.items():
        metadata = getattr(kernel, "metadata", None)
        if getattr(kernel, "n_regs", None) is None or metadata is None:
            continue
        rows.append({"block_pixels": block_pixels, "num_warps": num_warps, "statistics": stats,
                     "registers": int(kernel.n_regs), "spilled_bytes": int(kernel.n_spills),
                     "shared_bytes": int(getattr(metadata, "shared", 0))})  # fmt: skip
    return rows


_PACKED: "weakref.WeakKeyDictionary[torch.nn.Module, tuple]" = weakref.WeakKeyDictionary()
"""module -> (its parameters' identity and versions, the packed tensors): packing costs a few copies,
made once per module and weights rather than at every call."""


def _cached(store: weakref.WeakKeyDictionary, owner: torch.nn.Module, params, build):
    """``build()``, made once per ``owner`` and kept in ``store`` as ``(key, value)`` until the identity
    or version of one of ``params`` changes (moved, cast or updated in place)."""
    key = tuple((p.data_ptr(), p._version) for p in params)
    found = store.get(owner)
    if found is None or found[0] != key:
        with torch.no_grad():
            found = store[owner] = (key, build())
    return found[1]


def _weights(module) -> tuple[list[torch.Tensor], dict]:
    """The kernel's weight arguments: the block's three LayerNorms packed ``(3, H)``, its two
    self-attentions' ``to_q/to_k/to_v/to_out`` weights ``(2, 4, H, H)`` and ``to_out`` biases ``(2, H)``
    (so that the kernel runs both attentions as one loop), the rest as they are."""
    block = module.transformer_blocks[0]
    attn1, attn2 = block.attn1, block.attn2
    ff_in, ff_out = block.ff.net[0].proj, block.ff.net[2]
    pe = block.pos_embed.pe[0] if block.pos_embed is not None else None
    norms = (block.norm1, block.norm2, block.norm3)
    attentions = (attn1, attn2)
    packed = _cached(_PACKED, module, module.parameters(), lambda: (
        torch.stack([n.weight for n in norms]), torch.stack([n.bias for n in norms]),
        torch.stack([torch.stack([a.to_q.weight, a.to_k.weight, a.to_v.weight, a.to_out[0].weight]) for a in attentions]),
        torch.stack([a.to_out[0].bias for a in attentions]),
    ))  # fmt: skip
    tensors = [
        module.norm.weight, module.norm.bias, module.proj_in.weight, module.proj_in.bias, *packed,
        ff_in.weight, ff_in.bias, ff_out.weight, ff_out.bias,
        module.proj_out.weight, module.proj_out.bias, pe if pe is not None else module.proj_out.bias,
    ]  # fmt: skip
    sizes = {
        "heads": attn1.heads, "width": attn1.inner_dim // attn1.heads, "ff": ff_out.in_features,
        "groups": module.norm.num_groups, "gn_eps": module.norm.eps, "ln_eps": block.norm1.eps,
        "scale": attn1.scale, "has_pe": pe is not None,
    }  # fmt: skip
    return [w.contiguous() for w in tensors], sizes


def fused_tar(modules: Sequence[torch.nn.Module], scores: torch.Tensor, num_frames: int,
              *, block_pixels: int | None = None, num_warps: int | None = None) -> torch.Tensor:  # fmt: skip
    """TAR's temporal modules, one after the other, on frames ``1..F-1`` of the pre-softmax ``scores``
    ``(B*F, heads, h*w, T)``; frame 0 is copied. Returns a new tensor of the scores' shape and dtype.
    As in the eager modules, each module computes in its weights' dtype and its residual branch is
    rounded to that dtype before it is added to its input in the scores' dtype (the core hands TAR
    fp32 scores).

    Equal to ``CTGMLayer.refine_scores``'s eager path in identity mode, up to the rounding described in
    the module doc. The caller checks :func:`fused_tar_problem` first.
    """
    if triton is None:
        raise RuntimeError("fused_tar needs Triton")
    block_pixels = DEFAULT_BLOCK_PIXELS if block_pixels is None else int(block_pixels)
    num_warps = DEFAULT_WARPS if num_warps is None else int(num_warps)
    problem = launch_problem(block_pixels, num_warps, num_frames)
    if problem is not None:
        raise ValueError(f"fused_tar: {problem}")
    scores = scores.contiguous()
    nf, heads, pixels, tokens = scores.shape
    frames = num_frames
    clips = nf // frames
    length = frames - 1
    out = torch.empty_like(scores)
    out.view(clips, frames, heads, pixels, tokens)[:, 0] = scores.view(clips, frames, heads, pixels, tokens)[:, 0]
    groups = modules[0].norm.num_groups
    tp, gp, lp = _pow2(tokens), _pow2(groups, least=2), _pow2(length)
    block_q = max(1, 4096 // tp)
    stats = torch.zeros(clips * heads, lp, gp, 2, device=scores.device, dtype=torch.float32)
    grid = (triton.cdiv(pixels, block_q), clips * heads * length)
    _scores_stats_kernel[grid](scores, stats, frames, heads, pixels, length, T=tokens, TP=tp,
                               CPG=tokens // groups, GP=gp, LP=lp, BQ=block_q)  # fmt: skip
    source = scores
    for index, module in enumerate(modules):
        weights, sizes = _weights(module)
        if module.norm.num_groups != groups:
            raise RuntimeError("TAR's temporal modules differ in their GroupNorm groups")
        last = index == len(modules) - 1
        stats_next = None if last else torch.zeros_like(stats)
        target = out if last else torch.empty_like(scores)
        grid = (triton.cdiv(pixels, block_pixels), clips * heads)
        handle = _temporal_module_kernel[grid](
            source, target, stats, stats_next if stats_next is not None else stats, *weights,
            frames, heads, pixels, length, float(sizes["gn_eps"]), float(sizes["ln_eps"]), float(sizes["scale"]),
            T=tokens, TP=tp, CPG=tokens // groups, G=groups, GP=gp,
            NH=sizes["heads"], D=sizes["width"], DP=_pow2(sizes["width"]), FFH=sizes["ff"], FC=FF_CHUNK,
            BP=block_pixels, LP=lp, HAS_PE=sizes["has_pe"], STATS=not last, num_warps=num_warps,
        )  # fmt: skip
        if handle is not None:
            _COMPILED[(block_pixels, num_warps, not last)] = handle
        source, stats = target, stats_next
    return out


# --------------------------------------------------------------------------------------------------
# The hybrid form: library matrix products, a Triton kernel for the attention over the frames
# --------------------------------------------------------------------------------------------------

_QKV: "weakref.WeakKeyDictionary[torch.nn.Module, tuple]" = weakref.WeakKeyDictionary()
"""attention -> (its weights' identity and versions, ``to_q/to_k/to_v`` stacked ``(3 H, H)``)."""


def _qkv_weight(attention) -> torch.Tensor:
    params = (attention.to_q.weight, attention.to_k.weight, attention.to_v.weight)
    return _cached(_QKV, attention, params, lambda: torch.cat(params))


def hybrid_tar(modules: Sequence[torch.nn.Module], scores: torch.Tensor, num_frames: int,
               *, block_sequences: int = 16, num_warps: int = 4) -> torch.Tensor:  # fmt: skip
    """TAR's temporal modules as :func:`fused_tar` computes them, in another form: every per-token
    step (GroupNorm, the projections, LayerNorms, the feed-forward) is a PyTorch operation on the
    tokens in the scores' own order ``(clip, frame, attn2 head, pixel)`` (no permutes: the matrix
    products run in the library's kernels over all 983,040 tokens of a 64x64 layer at once), and only
    the attention over the frames, which no library kernel runs well on sequences of 15, is a Triton
    kernel reading the tokens in that order. Each step rounds to the modules' dtype, as the eager
    modules do. Frame 0 is copied. The caller checks :func:`fused_tar_problem` first (the same
modules, devices and dtypes).

    Not yet timed on a GPU against :func:`fused_tar` (``benchmarks/bench_ctgm_attention.py --kernel``
    has its row); no path takes it by default.
    """
    if triton is None:
        raise RuntimeError("hybrid_tar needs Triton")
    if block_sequences < 1 or block_sequences & (block_sequences - 1):
        raise ValueError(f"hybrid_tar: block_sequences must be a power of two, not {block_sequences}")
    nf, heads, pixels, tokens = scores.shape
    frames = num_frames
    clips, length = nf // frames, frames - 1
    grid5 = scores.view(clips, frames, heads, pixels, tokens)
    x = grid5[:, 1:]  # (clips, L, heads, pixels, tokens): the tokens of frames 1.. in the scores' order
    for module in modules:
        block = module.transformer_blocks[0]
        dtype = module.proj_in.weight.dtype
        width = module.proj_in.out_features
        groups, eps = module.norm.num_groups, module.norm.eps
        # GroupNorm per (clip, frame, head): statistics over its pixels and the group's channels
        # (two reductions accumulating in fp32, no fp32 copy; then one pass: y * a + c, a = rstd * weight,
        # c = bias - mean * a, per (clip, frame, head, channel))
        y = x.to(dtype).reshape(clips, length, heads, pixels, groups, tokens // groups)
        mean = torch.mean(y, dim=(3, 5), keepdim=True, dtype=torch.float32)
        square = torch.linalg.vector_norm(y, dim=(3, 5), keepdim=True, dtype=torch.float32).square() / (pixels * (tokens // groups))
        rstd = torch.rsqrt((square - mean * mean).clamp_min(0.0) + eps)
        weight = module.norm.weight.float().view(groups, tokens // groups)
        a = rstd * weight
        c = module.norm.bias.float().view(groups, tokens // groups) - mean * a
        y = torch.addcmul(c.to(dtype), y, a.to(dtype)).view(-1, tokens)
        h = F.linear(y, module.proj_in.weight, module.proj_in.bias)  # (M, width)
        pe = block.pos_embed.pe[0, :length] if block.pos_embed is not None else None
        for norm, attention in ((block.norm1, block.attn1), (block.norm2, block.attn2)):
            n = F.layer_norm(h, (width,), norm.weight, norm.bias, norm.eps)
            if pe is not None:
                n = (n.view(clips, length, heads * pixels, width) + pe.to(dtype)[None, :, None]).view(-1, width)
            qkv = F.linear(n, _qkv_weight(attention))
            o = torch.empty_like(h)
            nh, d = attention.heads, width // attention.heads
            grid = (triton.cdiv(pixels, block_sequences), clips * heads, nh)
            _frame_attention_kernel[grid](qkv, o, heads, pixels, length, float(attention.scale), NH=nh, D=d,
                                          DP=_pow2(d), LP=_pow2(length), BS=block_sequences, num_warps=num_warps)  # fmt: skip
            h = h + F.linear(o, attention.to_out[0].weight, attention.to_out[0].bias)
        n = F.layer_norm(h, (width,), block.norm3.weight, block.norm3.bias, block.norm3.eps)
        a, gate = F.linear(n, block.ff.net[0].proj.weight, block.ff.net[0].proj.bias).chunk(2, dim=-1)
        h = h + F.linear(a * F.gelu(gate), block.ff.net[2].weight, block.ff.net[2].bias)
        branch = F.linear(h, module.proj_out.weight, module.proj_out.bias)
        x = x + branch.view(clips, length, heads, pixels, tokens).to(x.dtype)
    return torch.cat([grid5[:, :1], x], dim=1).reshape(nf, heads, pixels, tokens)
