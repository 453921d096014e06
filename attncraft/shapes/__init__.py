"""The Shapes world: a procedural scene renderer with exact ground truth, its captions and its reader.

* :mod:`attncraft.shapes.palette` - the colours (object palette, pattern shades, backgrounds);
* :mod:`attncraft.shapes.world` - scene descriptions, seeded sampling, vectorised image/video rendering;
* :mod:`attncraft.shapes.captions` - the caption grammar (scene -> text) and its parser (text -> scene);
* :mod:`attncraft.shapes.reader` - image/video -> scene, by colour segmentation and geometry;
* :mod:`attncraft.shapes.scoring` - per-attribute scores of images/videos against prompts, mask IoU;
* :mod:`attncraft.shapes.models` - the Shapes CLIP / SD architectures, builders and shipped folders;
* :mod:`attncraft.shapes.training` - seeded training and evaluation of those models (CPU smoke, GPU full).

Submodules are imported on demand so that ``import attncraft.shapes`` stays cheap.
"""
