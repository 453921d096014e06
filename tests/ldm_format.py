"""Diffusers -> original LDM (CompVis) single-file key layout, for tests only.

:func:`diffusers_sd_to_ldm_state_dict` is the inverse of diffusers' single-file converters
(``convert_ldm_unet_checkpoint``, ``convert_ldm_vae_checkpoint`` and ``convert_ldm_clip_checkpoint`` in
``diffusers.loaders.single_file_utils``): it turns a diffusers ``StableDiffusionPipeline`` into the state dict
of an SD 1.x ``.safetensors`` checkpoint (``model.diffusion_model.*``, ``first_stage_model.*``,
``cond_stage_model.transformer.*``). It exists because no LDM-format checkpoint is available offline, so the
happy path of single-file loading is tested by exporting a tiny random pipeline and loading it back.

Only the layers an SD 1.x pipeline has are mapped (no class/addition embeddings); an unknown key raises
``KeyError`` rather than being silently dropped. Block indices come from the UNet/VAE configs.
"""

from __future__ import annotations

import re

import torch

UNET_FIXED = {
    "time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
}
UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
               "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
VAE_FIXED = {"conv_norm_out": "norm_out"}  # conv_in, conv_out, quant_conv, post_quant_conv keep their names
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _split(key: str, table: dict[str, str]) -> str | None:
    """Rename the module prefix of ``key`` (``<module>.<weight|bias>``) via ``table``, or None."""
    module, _, param = key.rpartition(".")
    return f"{table[module]}.{param}" if module in table else None


def _unet_key(key: str, layers: int, has_attention: set[int]) -> str:
    if (fixed := _split(key, UNET_FIXED)) is not None:
        return fixed
    span = layers + 1  # LDM counts one input/output block per resnet plus one per down/upsampler
    if m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        block, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        index = 1 + block * span + j
        return f"input_blocks.{index}.0.{_split(rest, UNET_RESNET) or rest}" if kind == "resnets" else f"input_blocks.{index}.1.{rest}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(\w+)", key):
        return f"input_blocks.{1 + int(m[1]) * span + layers}.0.op.{m[2]}"
    if m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"middle_block.{2 * int(m[1])}.{_split(m[2], UNET_RESNET) or m[2]}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
        return f"middle_block.1.{m[1]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        block, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        index = block * span + j
        return f"output_blocks.{index}.0.{_split(rest, UNET_RESNET) or rest}" if kind == "resnets" else f"output_blocks.{index}.1.{rest}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(\w+)", key):
        block = int(m[1])  # the upsampler follows the last resnet, after its attention if the block has one
        return f"output_blocks.{block * span + layers}.{2 if block in has_attention else 1}.conv.{m[2]}"
    raise KeyError(f"no LDM name for UNet key {key!r}")


def _vae_key(key: str, num_up: int) -> str:
    if (fixed := re.fullmatch(r"(encoder|decoder)\.(.+)", key)) and (name := _split(fixed[2], VAE_FIXED)):
        return f"{fixed[1]}.{name}"
    if re.fullmatch(r"((en|de)coder\.(conv_in|conv_out)|(post_)?quant_conv)\.\w+", key):
        return key
    resnet = lambda rest: rest.replace("conv_shortcut", "nin_shortcut")  # noqa: E731
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"encoder.down.{m[1]}.block.{m[2]}.{resnet(m[3])}"
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(\w+)", key):
        return f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):  # LDM numbers up levels bottom-up
        return f"decoder.up.{num_up - 1 - int(m[1])}.block.{m[2]}.{resnet(m[3])}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(\w+)", key):
        return f"decoder.up.{num_up - 1 - int(m[1])}.upsample.conv.{m[2]}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{resnet(m[3])}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)", key):
        if (name := _split(m[2], VAE_ATTENTION)) is not None:
            return f"{m[1]}.mid.attn_1.{name}"
    raise KeyError(f"no LDM name for VAE key {key!r}")


def diffusers_sd_to_ldm_state_dict(pipe) -> dict[str, torch.Tensor]:
    """State dict of ``pipe`` (an SD 1.x ``StableDiffusionPipeline``) in the original single-file LDM layout."""
    out: dict[str, torch.Tensor] = {}
    unet_cfg = pipe.unet.config
    layers = unet_cfg.layers_per_block
    assert isinstance(layers, int), "per-block layers_per_block lists are not supported"
    has_attention = {i for i, t in enumerate(unet_cfg.up_block_types) if "CrossAttn" in t}
    for key, value in pipe.unet.state_dict().items():
        out["model.diffusion_model." + _unet_key(key, layers, has_attention)] = value
    num_up = len(pipe.vae.config.up_block_types)
    for key, value in pipe.vae.state_dict().items():
        name = _vae_key(key, num_up)
        if ".mid.attn_1." in name and value.ndim == 2:  # LDM's VAE attention uses 1x1 convs, not linears
            value = value[:, :, None, None]
        out["first_stage_model." + name] = value
    for key, value in pipe.text_encoder.state_dict().items():
        if key.endswith("position_ids"):
            continue
        # transformers >= 5.6 flattens CLIPTextModel (no ``text_model.`` prefix); LDM checkpoints always have it
        out["cond_stage_model.transformer.text_model." + key.removeprefix("text_model.")] = value
    return {k: v.detach().contiguous().clone() for k, v in out.items()}
