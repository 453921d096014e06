#!/usr/bin/env python
"""Prepare ``.kaolin/`` (ignored by git): what ``tools/gpu/kaolin_xmesh.sh`` needs to build NVIDIA
kaolin from source on the GPU machine, which has no network.

PyPI's ``kaolin`` is an empty placeholder and NVIDIA's wheels are not reachable, but kaolin builds
from source with the GPU machine's nvcc (CUDA 13) against its torch 2.11. This helper writes, from
a local git mirror of ``NVIDIAGameWorks/kaolin``:

* ``.kaolin/src/``: ``git archive HEAD`` of the paths the build needs (``kaolin/``, ``setup.py``,
  ``version.txt``, ``tools/requirements.txt``, ``tools/viz_requirements.txt``; about 4 MB);
* ``.kaolin/wheels/``: the one pure-Python dependency kaolin imports that the GPU machine lacks
  (``plyfile``), fetched with ``pip download``;
* ``.kaolin/stub/``: inert stand-ins for ``warp`` (a 149 MB wheel), ``pygltflib`` and ``wget``, which
  kaolin imports at start-up but its rasteriser never calls. Every attribute of a stub is another
  inert placeholder (callable, usable as a decorator or a base class), so importing kaolin works and
  anything that really needs those packages fails loudly instead.

Nothing of kaolin's code enters the repository: ``.kaolin/`` is in ``.gitignore``.

    python tools/prepare_kaolin.py --mirror /path/to/kaolin.git      # then send .kaolin with the tree
"""

from __future__ import annotations

import argparse
import io
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

PATHS = ("kaolin", "setup.py", "version.txt", "tools/requirements.txt", "tools/viz_requirements.txt")
STUBS = {"warp": ("warp.sparse", "warp.fem", "warp.fem.linalg", "warp.optim", "warp.optim.linear", "warp.types",
                  "warp.context"),
         "pygltflib": ("pygltflib.utils",)}

STUB_SOURCE = '''"""Inert stand-in for {name}, written by tools/prepare_kaolin.py: kaolin imports it at start-up, its
rasteriser never uses it. Every attribute is a placeholder; nothing that really needs {name} works."""
import sys
import types


class Placeholder:
    def __init__(self, name):
        self._name = name

    def __getattr__(self, attr):
        if attr.startswith("__") and attr.endswith("__"):
            raise AttributeError(attr)
        return Placeholder(f"{{self._name}}.{{attr}}")

    def __call__(self, *args, **kwargs):
        if len(args) == 1 and not kwargs and callable(args[0]):
            return args[0]  # used as a decorator
        return Placeholder(self._name + "()")

    def __getitem__(self, key):
        return Placeholder(self._name + "[]")

    def __mro_entries__(self, bases):
        return (object,)

    def __iter__(self):
        return iter(())

    def __bool__(self):
        return False

    def __repr__(self):
        return f"<{{self._name}}: inert stub>"

    def _same(self, *args):
        return Placeholder(self._name)

    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = __truediv__ = __rtruediv__ = _same
    __neg__ = __or__ = __ror__ = __and__ = __matmul__ = __pow__ = _same
    __hash__ = object.__hash__


class StubModule(types.ModuleType):
    def __getattr__(self, attr):
        if attr.startswith("__") and attr.endswith("__"):
            raise AttributeError(attr)
        return Placeholder(f"{{self.__name__}}.{{attr}}")


def _install(name):
    module = StubModule(name)
    module.__path__ = []
    sys.modules[name] = module
    parent, _, leaf = name.rpartition(".")
    if parent in sys.modules:
        setattr(sys.modules[parent], leaf, module)


__path__ = []
sys.modules[__name__].__class__ = StubModule
for _sub in {subs!r}:
    _install(_sub)
'''

WGET_SOURCE = '''"""Stand-in for wget, written by tools/prepare_kaolin.py: kaolin imports it for downloads; there is no network."""


def download(*args, **kwargs):
    raise RuntimeError("wget stub: no network on this machine")
'''


def write_stubs(dest: Path) -> None:
    for name, subs in STUBS.items():
        (dest / name).mkdir(parents=True, exist_ok=True)
        (dest / name / "__init__.py").write_text(STUB_SOURCE.format(name=name, subs=subs))
    (dest / "wget").mkdir(parents=True, exist_ok=True)
    (dest / "wget" / "__init__.py").write_text(WGET_SOURCE)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mirror", default="/work/.mirror/NVIDIAGameWorks+kaolin/repo",
                   help="git directory of a kaolin mirror (bare or not)")
    p.add_argument("--rev", default="HEAD", help="revision to archive (default HEAD; tested: 0.18.0)")
    p.add_argument("--dest", default=".kaolin", help="output folder (ignored by git)")
    p.add_argument("--no-download", action="store_true", help="do not fetch the plyfile wheel (copy it in yourself)")
    args = p.parse_args(argv)
    dest = Path(args.dest)
    if dest.exists():
        shutil.rmtree(dest)
    (dest / "src").mkdir(parents=True)
    archive = subprocess.run(["git", f"--git-dir={args.mirror}", "archive", args.rev, *PATHS], capture_output=True)
    if archive.returncode != 0 or not archive.stdout:
        print(f"error: git archive failed: {archive.stderr.decode(errors='replace').strip()[:300]}", file=sys.stderr)
        return 1
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(dest / "src", filter="data")
    version = (dest / "src" / "version.txt").read_text().strip()
    write_stubs(dest / "stub")
    (dest / "wheels").mkdir()
    if not args.no_download:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                        "--python-version", "3.12", "--platform", "any", "-d", str(dest / "wheels"), "plyfile"],
                       check=True)
    size = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file())
    print(f"{dest}: kaolin {version} sources, {len(list((dest / 'wheels').glob('*.whl')))} wheel(s), stubs; "
          f"{size / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
