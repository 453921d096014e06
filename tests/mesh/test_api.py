"""The public API of ``attncraft.mesh`` resolves lazily and completely."""

from __future__ import annotations

import pytest


def test_public_names_resolve():
    import attncraft.mesh as mesh

    for name in mesh.__all__:
        assert getattr(mesh, name) is not None
    with pytest.raises(AttributeError):
        mesh.not_a_name  # noqa: B018
