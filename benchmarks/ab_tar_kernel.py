"""Time two versions of TAR's fused kernel against each other, interleaved in one process.

The version in the working tree (``attncraft/attention_processors/ctgm_kernels.py``) against another
copy of that module given as a file, e.g. the last commit's:
``git show HEAD:attncraft/attention_processors/ctgm_kernels.py > /tmp/before.py``, then
``python benchmarks/ab_tar_kernel.py --before /tmp/before.py``. The GPU host is noisy, so the two run
in alternating order, round after round, on the same inputs and random modules, and each row gives the
fastest round of each and both errors against the same modules in fp32 (TAR, both temporal modules, on
fp32 scores of 2 clips x 16 frames (``--frames``), 8 heads, 77 tokens, as the core hands them).

``--device cpu`` with ``TRITON_INTERPRET=1`` runs both in Triton's interpreter (a smoke test; the numbers
mean nothing).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ctgm_attention import random_tar, tar_case, tar_layer, timer  # noqa: E402


def load_module(path: str):
    """Another copy of ``ctgm_kernels`` from ``path``, under a name of its own."""
    if not Path(path).is_file():
        raise SystemExit(f"error: --before {path!r} is not a file; write one with `git show REV:attncraft/attention_processors/ctgm_kernels.py > FILE`")
    spec = importlib.util.spec_from_file_location("ctgm_kernels_before", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as error:  # a file that is not that module
        raise SystemExit(f"error: --before {path!r} does not load as ctgm_kernels ({type(error).__name__}: {error})") from None
    if not hasattr(module, "fused_tar"):
        raise SystemExit(f"error: --before {path!r} has no fused_tar: pass a copy of attncraft/attention_processors/ctgm_kernels.py")
    return module


def compare(before, after, device, dtypes, sizes, configs, rounds: int, calls: int, clips: int = 2, frames: int = 16,
            heads: int = 8) -> list[dict]:  # fmt: skip
    measure = timer(torch.device(device))
    reference = tar_layer(random_tar(torch.float32, device))
    rows = []
    for dtype in dtypes:
        modules = random_tar(dtype, device)
        for size in sizes:
            scores, ref, change = tar_case(reference, size, clips, frames, heads, device)
            for block_pixels, warps in configs:
                versions = {"before": before, "after": after}
                errors, times = {}, {name: [] for name in versions}
                for name, module in versions.items():
                    with torch.no_grad():
                        out = module.fused_tar(modules, scores, frames, block_pixels=block_pixels, num_warps=warps)
                    errors[name] = float((out.float() - ref).norm()) / change
                for r in range(rounds):
                    order = list(versions.items()) if r % 2 == 0 else list(versions.items())[::-1]
                    for name, module in order:
                        def call(m=module):
                            return m.fused_tar(modules, scores, frames, block_pixels=block_pixels, num_warps=warps)
                        times[name].append(measure(call, calls))
                rows.append({"dtype": {torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype], "size": size,
                             "config": f"{block_pixels}x{warps}", "before_ms": min(times["before"]),
                             "after_ms": min(times["after"]), "before_error": errors["before"],
                             "after_error": errors["after"]})  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--before", required=True, help="a copy of ctgm_kernels.py to time against the working tree's")
    p.add_argument("--device", default="cuda")
    p.add_argument("--configs", default="2x4,4x4", help="launch configurations, PIXELSxWARPS, comma-separated")
    p.add_argument("--sizes", default="64,32,16", help="layer sides, comma-separated")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--calls", type=int, default=10)
    p.add_argument("--tiny", action="store_true", help="fp16 only, one clip, one head (a smoke run)")
    args = p.parse_args(argv)
    try:
        configs = [tuple(int(x) for x in c.split("x")) for c in args.configs.split(",")]
        sizes = [int(x) for x in args.sizes.split(",")]
    except ValueError:
        raise SystemExit("error: --configs is PIXELSxWARPS,... and --sizes N,...; pass e.g. --configs 2x4,4x4 --sizes 64,32") from None
    from attncraft.attention_processors import ctgm_kernels

    before = load_module(args.before)
    dtypes = (torch.float16,) if args.tiny else (torch.float16, torch.bfloat16)
    hw = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(f"### TAR kernel, {args.before} (before) against the working tree (after) ({datetime.date.today().isoformat()}, {hw}, torch {torch.__version__})")
    print()
    print(f"Command: `python benchmarks/ab_tar_kernel.py {' '.join(sys.argv[1:] if argv is None else argv)}`; fastest of "
          f"{args.rounds} alternating rounds of {args.calls} calls; error: ||out - ref|| / ||ref - scores||, ref the fp32 modules.")
    print()
    print("| modules | layer | launch | before ms | after ms | after / before | before error | after error |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    for r in compare(before, ctgm_kernels, args.device, dtypes, sizes, configs, args.rounds, args.calls, frames=args.frames,
                     clips=1 if args.tiny else 2, heads=1 if args.tiny else 8):  # fmt: skip
        print(f"| {r['dtype']} | {r['size']}x{r['size']} | {r['config']} | {r['before_ms']:.3f} | {r['after_ms']:.3f} | "
              f"{r['after_ms'] / r['before_ms']:.3f} | {r['before_error']:.2e} | {r['after_error']:.2e} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
