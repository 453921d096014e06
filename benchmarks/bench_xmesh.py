#!/usr/bin/env python
"""X-Mesh iteration benchmark: time per iteration, peak memory, and where the time goes.

Target (H200): MIT-30 horse (26,906 vertices), 5 views at 224x224 (+5 geometry views), 1+4+4
augmentations (45 CLIP images in one call), a ViT-B/32-sized CLIP with RANDOM weights (no trained
weights are reachable; the numbers measure cost, not quality), bf16 autocast for CLIP:
<= 60 ms per iteration and <= 8 GB peak memory.

It runs the library's real iteration (:class:`attncraft.mesh.stylize.XMeshOptimization.step`), then:

1. plain iterations (no synchronisation inside) -> ms/iteration and peak memory;
2. the same iterations with CUDA-synchronised phase timers (field / render / CLIP forward, the one
   backward, optimizer);
3. isolated forward+backward of the renderer, of the augmentations+CLIP, and of the field+Adam,
   to split the backward time;
4. optionally the CPU demo setting (default torus, 224 px, tiny random stand-in CLIP).

It prints a Markdown block to paste into ``benchmarks/RESULTS.md``. Quick CPU check:

    python benchmarks/bench_xmesh.py --device cpu --tiny

GPU run:

    python benchmarks/bench_xmesh.py --mesh PATH/horse.obj --device cuda
    python benchmarks/bench_xmesh.py --mesh .mit30/horse.npz --device cuda --renderer kaolin   # a real kaolin

With ``--renderer kaolin`` (a real kaolin on CUDA; ``tools/gpu/kaolin_xmesh.sh`` builds one) the
iteration runs on kaolin's DIB-R rasteriser, and the report adds how far the two backends agree on
the benchmark mesh (coverage, visible face, image difference where the faces agree, and the
renderer's own forward + backward time for each). Meshes: an OBJ/PLY/... file, an ``.npz`` with
``vertices`` and ``faces`` (``tools/pack_mit30.py``), ``default`` or ``tiny``.

Only torch, numpy, transformers (and trimesh when available; a minimal OBJ reader otherwise) are
imported: no imageio, PIL or diffusers.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mesh", default="default", help="mesh file (e.g. MIT-30 horse.obj) or 'default'")
    p.add_argument("--device", default="cuda")
    p.add_argument("--clip", default="random:vit-b-32", help="CLIP reference (default: ViT-B/32-sized, random weights)")
    p.add_argument("--dtype", default="bf16", help="CLIP autocast dtype on CUDA: bf16, fp16 or fp32")
    p.add_argument("--views", type=int, default=None, help="views per render (default 5; --tiny: 2)")
    p.add_argument("--resolution", type=int, default=None, help="render resolution (default 224; --tiny: 64)")
    p.add_argument("--iterations", type=int, default=None, help="timed iterations (default 30; --tiny: 3)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up iterations (default 8; --tiny: 1)")
    p.add_argument("--prompt", default="A 3D rendering of a horse made of gold in unreal engine.")
    p.add_argument("--tiny", action="store_true", help="quick CPU check: small mesh, 64 px, tiny CLIP, few iterations")
    p.add_argument("--cpu-demo", type=int, default=3, help="iterations of the CPU demo setting to time (0 = skip)")
    p.add_argument("--cpu-threads", type=int, default=None, help="torch threads for the CPU demo timing")
    p.add_argument("--renderer", choices=("torch", "kaolin"), default="torch",
                   help="rasteriser of the timed iteration (kaolin: needs a real kaolin and CUDA)")
    args = p.parse_args(argv)
    defaults = dict(views=5, resolution=224, iterations=30, warmup=8)
    if args.tiny:
        defaults = dict(views=2, resolution=64, iterations=3, warmup=1)
        args.mesh = "tiny" if args.mesh == "default" else args.mesh
        args.clip = "random:test" if args.clip == "random:vit-b-32" else args.clip
        args.cpu_demo = min(args.cpu_demo, 1)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def uv_sphere(n_lat: int = 24, n_lon: int = 48):
    """Fallback procedural mesh when trimesh is not installed (vertices, faces as numpy arrays)."""
    import numpy as np

    verts = [[0.0, 1.0, 0.0]]
    for i in range(1, n_lat):
        theta = np.pi * i / n_lat
        for j in range(n_lon):
            phi = 2 * np.pi * j / n_lon
            verts.append([np.sin(theta) * np.cos(phi), np.cos(theta), np.sin(theta) * np.sin(phi)])
    verts.append([0.0, -1.0, 0.0])
    faces = []
    ring = lambda i, j: 1 + (i - 1) * n_lon + (j % n_lon)  # noqa: E731
    for j in range(n_lon):
        faces.append([0, ring(1, j + 1), ring(1, j)])
    for i in range(1, n_lat - 1):
        for j in range(n_lon):
            a, b, c, d = ring(i, j), ring(i, j + 1), ring(i + 1, j), ring(i + 1, j + 1)
            faces += [[a, b, c], [b, d, c]]
    last = len(verts) - 1
    for j in range(n_lon):
        faces.append([last, ring(n_lat - 1, j), ring(n_lat - 1, j + 1)])
    return np.array(verts), np.array(faces)


def read_obj(path: Path):
    """Minimal OBJ reader (v and f lines; polygons fan-triangulated) for machines without trimesh."""
    import numpy as np

    verts, faces = [], []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if line.startswith("v "):
                verts.append([float(x) for x in line.split()[1:4]])
            elif line.startswith("f "):
                idx = [int(tok.split("/")[0]) - 1 for tok in line.split()[1:]]
                faces += [[idx[0], idx[k], idx[k + 1]] for k in range(1, len(idx) - 1)]
    return np.array(verts), np.array(faces)


def get_mesh(ref: str, device: str):
    from attncraft.mesh.io import load_mesh, prepare_mesh

    try:
        import trimesh  # noqa: F401

        have_trimesh = True
    except ImportError:
        have_trimesh = False
    if ref == "tiny":
        if have_trimesh:
            import trimesh

            return load_mesh(trimesh.creation.icosphere(subdivisions=3)), "icosphere(3)"
        v, f = uv_sphere(16, 32)
        return prepare_mesh(v, f, source="uv sphere"), "uv sphere 16x32"
    if ref == "default":
        if have_trimesh:
            return load_mesh("default", device=device), "default torus"
        v, f = uv_sphere()
        return prepare_mesh(v, f, source="uv sphere"), "uv sphere 24x48 (trimesh missing)"
    if ref.endswith(".npz"):
        import numpy as np

        with np.load(ref) as data:
            return prepare_mesh(data["vertices"], data["faces"], source=ref, device=device), Path(ref).stem
    if have_trimesh:
        return load_mesh(ref, device=device), Path(ref).name
    v, f = read_obj(Path(ref))
    return prepare_mesh(v, f, source=ref, device=device), Path(ref).name + " (minimal OBJ reader)"


class PhaseTimer:
    def __init__(self, device):
        import torch

        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        self.times = defaultdict(list)

    @contextlib.contextmanager
    def __call__(self, name):
        self.sync()
        start = time.perf_counter()
        yield
        self.sync()
        self.times[name].append(time.perf_counter() - start)


def ms(values):
    return 1000.0 * statistics.median(values) if values else float("nan")


def timed(fn, n, sync):
    out = []
    for _ in range(n):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - t)
    return out


def make_renderer(name: str, device):
    """The requested backend; a missing kaolin is an error here, not a silent fallback."""
    from attncraft.mesh.renderer import TorchRenderer, get_renderer

    if name == "torch":
        return TorchRenderer()
    renderer, message = get_renderer("kaolin", device=device)
    if renderer.name != "kaolin":
        sys.exit(f"error: --renderer kaolin: {message}")
    return renderer


def build_run(args, device, mesh_ref, clip_ref, resolution, views, autocast, renderer=None):
    from attncraft.mesh.clip_guidance import ClipGuide, load_clip
    from attncraft.mesh.renderer import TorchRenderer
    from attncraft.mesh.stylize import StylizeSettings, XMeshOptimization

    mesh, mesh_label = get_mesh(mesh_ref, device.type)
    model, tok, label = load_clip(clip_ref, device)
    guide = ClipGuide(model, tok, label, autocast_dtype=autocast)
    settings = StylizeSettings(views=views, resolution=resolution)
    run = XMeshOptimization(mesh, args.prompt, guide, renderer or TorchRenderer(), settings, device)
    return run, mesh, mesh_label


def backend_agreement(run, sync, repeats: int = 10):
    """Torch renderer vs the run's renderer on the run's mesh: coverage, visible face, image, and time."""
    from attncraft.mesh.renderer import TorchRenderer

    cams = run.sample_cameras()
    styled = run.current()
    res = run.settings.resolution
    reference = TorchRenderer()
    a = reference.render(styled.vertices, run.faces, styled.colors, cams, res)
    b = run.renderer.render(styled.vertices, run.faces, styled.colors, cams, res)
    same = a.face_index == b.face_index
    covered = a.mask | b.mask
    out = {"views": len(cams), "coverage": float((a.mask == b.mask).float().mean()),
           "same_face": float(same[covered].float().mean()),
           "image_diff": float((a.image - b.image).abs()[same & covered].mean())}
    for name, rend in (("torch", reference), ("kaolin", run.renderer)):
        verts = styled.vertices.detach().clone().requires_grad_()
        colors = styled.colors.detach().clone().requires_grad_()

        def fb():
            rend.render(verts, run.faces, colors, cams, res).image.sum().backward()

        timed(fb, 2, sync)
        out[f"{name}_ms"] = ms(timed(fb, repeats, sync))
    return out


def bench_main(args):
    import torch

    from attncraft.mesh.clip_guidance import guidance_loss

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("error: CUDA requested but not available; use --device cpu --tiny")
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}
    autocast = dtypes[args.dtype] if device.type == "cuda" else None
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    renderer = make_renderer(args.renderer, device)
    run, mesh, mesh_label = build_run(args, device, args.mesh, args.clip, args.resolution, args.views, autocast, renderer)
    n_aug = len(run.plan.specs)
    for _ in range(args.warmup):
        run.step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    plain = timed(run.step, args.iterations, sync)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    reserved = torch.cuda.max_memory_reserved(device) / 2**30 if device.type == "cuda" else float("nan")

    timer = PhaseTimer(device)
    for _ in range(max(5, args.iterations // 2)):
        run.step(timer)

    # Isolated forward + backward of each component, to split the single backward pass.
    s = run.settings
    cams = run.sample_cameras()
    styled = run.current()
    verts = styled.vertices.detach().clone().requires_grad_()
    colors = styled.colors.detach().unsqueeze(0).expand(len(cams), -1, -1).contiguous().requires_grad_()

    def render_fb():
        out = run.renderer.render(verts, run.faces, colors, cams, s.resolution)
        out.image.sum().backward()

    with torch.no_grad():
        groups0 = run.renderer.render(styled.vertices, run.faces, styled.colors, cams, s.resolution).image
    groups0 = groups0.view(-1, s.views, s.resolution, s.resolution, 3).permute(0, 1, 4, 2, 3).contiguous()

    def clip_fb():
        g = groups0.detach().requires_grad_()
        guidance_loss(run.guide, g, run.text, run.plan, run.generator, s.perspective_p).loss.backward()

    def field_fb():
        out = run.model(run.text)
        (out.colors.sum() + out.vertices.sum()).backward()
        run.optimizer.zero_grad(set_to_none=True)

    iso = {}
    for name, fn in (("renderer", render_fb), ("augment + CLIP", clip_fb), ("field (+ zero_grad)", field_fb)):
        timed(fn, 2, sync)
        iso[name] = timed(fn, max(5, args.iterations // 2), sync)

    agreement = backend_agreement(run, sync) if args.renderer != "torch" else None
    cpu_demo = None
    if args.cpu_demo > 0:
        cpu_demo = bench_cpu_demo(args)

    print_report(args, device, run, mesh, mesh_label, n_aug, plain, peak, reserved, timer.times, iso, cpu_demo, agreement)


def bench_cpu_demo(args):
    """Time the CLI demo setting (default mesh, 224 px, 5 views, tiny random stand-in CLIP) on the CPU."""
    import torch

    if args.cpu_threads:
        torch.set_num_threads(args.cpu_threads)
    device = torch.device("cpu")
    mesh_ref = "tiny" if args.tiny else "default"
    res = 64 if args.tiny else 224
    run, mesh, label = build_run(args, device, mesh_ref, "random:tiny" if not args.tiny else "random:test", res,
                                 2 if args.tiny else 5, None)
    run.step()
    times = timed(run.step, args.cpu_demo, lambda: None)
    return {"mesh": label, "vertices": mesh.num_vertices, "resolution": res, "threads": torch.get_num_threads(),
            "s_per_iter": statistics.median(times), "iterations": args.cpu_demo, "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count()}


def print_report(args, device, run, mesh, mesh_label, n_aug, plain, peak, reserved, phases, iso, cpu_demo, agreement=None):
    import torch
    import transformers

    if device.type == "cuda":
        hw = f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    else:
        hw = f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
    views = run.settings.views
    renders = views * (2 if run.settings.geoloss else 1)
    per_iter = ms(plain)
    lines = [
        f"### X-Mesh iteration benchmark ({datetime.date.today().isoformat()})",
        "",
        f"- hardware: {hw}; torch {torch.__version__}, transformers {transformers.__version__}, Python {platform.python_version()}",
        f"- command: `python {' '.join(sys.argv)}`",
        f"- mesh: {mesh_label}, {mesh.num_vertices:,} vertices / {mesh.num_faces:,} faces",
        f"- per iteration: {renders} renders at {run.settings.resolution}x{run.settings.resolution} in one renderer call; "
        f"{n_aug} augmentations x {views} views = {n_aug * views} CLIP images in one CLIP call; one backward; fused Adam",
        f"- CLIP: `{args.clip}` -> {run.guide.label}; RANDOM weights (timing only, scores meaningless); "
        f"autocast {run.guide.autocast_dtype or 'off (fp32)'}",
        f"- field: X-Mesh (TDAM), {sum(p.numel() for p in run.model.parameters()):,} parameters, fp32; renderer: "
        + ("built-in torch" if run.renderer.name == "torch" else f"{run.renderer.name} (DIB-R rasteriser)"),
        "",
        "| measure | value |",
        "|---|---|",
        f"| time per iteration (median of {len(plain)}, after {args.warmup} warm-up) | **{per_iter:.1f} ms** "
        f"(min {1000 * min(plain):.1f}, max {1000 * max(plain):.1f}) |",
    ]
    if device.type == "cuda":
        lines.append(f"| peak GPU memory (allocated / reserved) | **{peak:.2f} GiB** / {reserved:.2f} GiB |")
        ok = per_iter <= 60.0 and peak <= 8.0
        lines.append(f"| target <= 60 ms and <= 8 GB | {'PASS' if ok else 'FAIL'} |")
    lines += ["", "Phases inside the iteration (CUDA-synchronised timers, medians; sync adds a little overhead):", "",
              "| phase | ms |", "|---|---:|"]
    names = {"field": "field forward (Fourier + MLP + TDAM + heads)", "render": f"render forward ({renders} views)",
             "clip": f"augment + CLIP forward ({n_aug * views} images) + loss", "backward": "backward (everything)",
             "optimizer": "Adam step + scheduler"}
    total = 0.0
    for key in ("field", "render", "clip", "backward", "optimizer"):
        value = ms(phases.get(key, []))
        total += value
        lines.append(f"| {names[key]} | {value:.2f} |")
    lines.append(f"| sum | {total:.2f} |")
    lines += ["", "Isolated forward + backward (to split the backward):", "", "| component | ms |", "|---|---:|"]
    for name, values in iso.items():
        lines.append(f"| {name} | {ms(values):.2f} |")
    if agreement:
        lines += ["", f"Backend agreement on this mesh ({agreement['views']} training views at {run.settings.resolution} px; "
                      "the torch renderer against the one timed above):", "",
                  "| coverage agrees | visible face agrees | mean abs image difference (same face) | torch fwd+bwd | "
                  f"{run.renderer.name} fwd+bwd |", "|---|---|---|---|---|",
                  f"| {100 * agreement['coverage']:.5f} % | {100 * agreement['same_face']:.4f} % | {agreement['image_diff']:.2e} | "
                  f"{agreement['torch_ms']:.2f} ms | {agreement['kaolin_ms']:.2f} ms |"]
    if cpu_demo:
        lines += ["", f"CPU demo setting ({cpu_demo['mesh']}, {cpu_demo['vertices']:,} vertices, {cpu_demo['resolution']} px, "
                      f"tiny random stand-in CLIP) on {cpu_demo['cores']} cores / {cpu_demo['threads']} torch threads: "
                      f"**{cpu_demo['s_per_iter']:.2f} s per iteration** (median of {cpu_demo['iterations']})."]
    print("\n".join(lines))


if __name__ == "__main__":
    bench_main(parse_args())
