"""Video helpers shared by the video techniques, the Shapes world and mesh turntables.

* :mod:`.io` - :func:`write_video` / :func:`read_video` (MP4, GIF or WebP, atomic, under a free name,
  JSON sidecar, contact sheet), :func:`contact_sheet`;
* :mod:`.prompts` - per-frame prompt schedules (states anchored at frames, interpolated per frame);
* :mod:`.motion_text_path` - the motion text path (cross-attention key/value changes trained with a
  motion adapter, saved beside it, applied to the motion UNet by the loader).
"""

from attncraft.video.io import contact_sheet, frames_to_uint8, read_video, sheet_path, write_video

__all__ = ["contact_sheet", "frames_to_uint8", "read_video", "sheet_path", "write_video"]
