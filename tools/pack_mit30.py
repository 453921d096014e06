#!/usr/bin/env python
"""Pack MIT-30 meshes (OBJ) into small ``.npz`` files for a machine the OBJs cannot travel to.

The 11 locally available MIT-30 meshes are 27 MB of OBJ text; as float32 vertices and int32 faces
in compressed ``.npz`` files they are a fraction of that, and they load without trimesh
(``benchmarks/bench_xmesh_claim.py --mit30 DIR`` reads ``DIR/*.npz`` as well as ``DIR/meshes/*.obj``).
The data's licence allows local evaluation only: pack into an *ignored* folder (``.mit30/`` is
listed in ``.gitignore``), never into the repository.

    python tools/pack_mit30.py ../shared/data/mit30 .mit30
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("source", help="MIT-30 folder (meshes/NAME.obj)")
    p.add_argument("dest", help="output folder (ignored by git, e.g. .mit30)")
    args = p.parse_args(argv)
    from attncraft.mesh.io import _load_trimesh

    src = Path(args.source)
    files = sorted((src / "meshes").glob("*.obj")) or sorted(src.glob("*.obj"))
    if not files:
        print(f"error: no OBJ meshes in {src}/meshes", file=sys.stderr)
        return 1
    dest = Path(args.dest)
    dest.mkdir(parents=True, exist_ok=True)
    total = 0
    for path in files:
        mesh, _notes = _load_trimesh(path)
        out = dest / f"{path.stem}.npz"
        np.savez_compressed(out, vertices=np.asarray(mesh.vertices, np.float32), faces=np.asarray(mesh.faces, np.int32))
        total += out.stat().st_size
        print(f"{path.stem}: {len(mesh.vertices):,} vertices, {len(mesh.faces):,} faces -> {out.stat().st_size / 1e6:.2f} MB")
    print(f"{len(files)} meshes, {total / 1e6:.2f} MB in {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
