"""attncraft: attention-level generation techniques for images, video and 3D, on diffusers.

Where things live (one concept per module):

* ``attncraft.attention_processors`` - the processor core every image/video technique plugs into;
* ``attncraft.pipelines`` - pipelines that drive the techniques (text-to-image first);
* ``attncraft.shapes`` - the Shapes world, its reader (ground truth) and the embedded default models;
* ``attncraft.mesh`` - X-Mesh text-driven mesh stylization (separate from diffusers);
* ``attncraft.video`` - video output helpers;
* ``attncraft.cli`` - the ``attncraft`` command line;
* ``attncraft.loading`` - model references (Hub ids, folders, single files, ``shapes``).
"""

__version__ = "0.1.0"
