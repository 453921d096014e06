"""The released FancyVideo model on diffusers (see ``attncraft.pipelines.fancyvideo``)."""
