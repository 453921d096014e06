"""Video helpers shared by the video techniques, the Shapes world and mesh turntables.

* :mod:`.io` - :func:`write_video` / :func:`read_video` (MP4, GIF or WebP, atomic, JSON sidecar),
  :func:`write_video_unique` (a result under a free name, with sidecar and contact sheet);
* :mod:`.prompts` - per-frame prompt schedules (states anchored at frames, interpolated per frame).
"""

from attncraft.video.io import contact_sheet, frames_to_uint8, read_video, write_video, write_video_unique

__all__ = ["contact_sheet", "frames_to_uint8", "read_video", "write_video", "write_video_unique"]
