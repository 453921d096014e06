"""Video helpers shared by the video techniques, the Shapes world and mesh turntables.

* :mod:`.io` - :func:`write_video` / :func:`read_video` (MP4 or GIF, atomic, JSON sidecar).
"""

from attncraft.video.io import frames_to_uint8, read_video, write_video

__all__ = ["frames_to_uint8", "read_video", "write_video"]
