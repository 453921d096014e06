"""X-Mesh: text-driven mesh stylisation (Ma et al., ICCV 2023) on a pure-PyTorch renderer.

A neural style field with TDAM predicts a colour and a displacement for every vertex; renders are
scored against the prompt with CLIP. Modules (one concept each):

* :mod:`~attncraft.mesh.io` -- load/validate/normalise/refine meshes;
* :mod:`~attncraft.mesh.camera` -- the reference's cameras and view sets;
* :mod:`~attncraft.mesh.renderer` -- the renderer interface and the torch backend
  (:mod:`~attncraft.mesh.kaolin_backend` when a real kaolin exists);
* :mod:`~attncraft.mesh.fourier`, :mod:`~attncraft.mesh.tdam`, :mod:`~attncraft.mesh.style_field` -- the field;
* :mod:`~attncraft.mesh.clip_guidance` -- CLIP loading, augmentations and the batched loss;
* :mod:`~attncraft.mesh.stylize` -- the optimisation loop and :func:`stylize_mesh`;
* :mod:`~attncraft.mesh.exports` -- GLB/PLY/OBJ, turntable, contact sheet, sidecar;
* :mod:`~attncraft.mesh.benchmark` -- the MIT-30 runner (MES/ITS).

Names are imported lazily so that importing one module (e.g. the renderer in a benchmark) does not
pull in trimesh, PIL or imageio.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "MeshData": "io", "load_mesh": "io", "refine_mesh": "io", "default_mesh": "io",
    "Cameras": "camera", "make_cameras": "camera", "sample_front_views": "camera", "mes_views": "camera",
    "MeshRenderer": "renderer", "TorchRenderer": "renderer", "RenderOutput": "renderer", "get_renderer": "renderer",
    "kaolin_status": "renderer",
    "FourierFeatures": "fourier", "TDAM": "tdam", "DynamicLinear": "tdam",
    "XMeshField": "style_field", "Text2MeshField": "style_field", "StyledMeshModel": "style_field",
    "build_style_field": "style_field",
    "load_clip": "clip_guidance", "ClipGuide": "clip_guidance", "AugmentPlan": "clip_guidance",
    "guidance_loss": "clip_guidance",
    "stylize_mesh": "stylize", "StylizeSettings": "stylize", "StylizeResult": "stylize",
    "XMeshOptimization": "stylize",
    "export_mesh": "exports", "save_outputs": "exports", "save_turntable": "exports", "save_contact_sheet": "exports",
    "run_benchmark": "benchmark", "its_from_curve": "benchmark", "mes_from_similarities": "benchmark",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'attncraft.mesh' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"attncraft.mesh.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
