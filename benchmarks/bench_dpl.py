"""Cost of DPL's two inner iterations on an SD 1.5-size model (random weights), 512x512, 50 steps.

Per iteration (batch 1, one timestep), interleaved in rounds with the order rotated:

* **token update** (DPL's dynamic-token step): encode the prompt with the placeholder vectors,
  UNet to the 16x16 cross-attention maps, the three losses, backward, AdamW step;
* **null-text** (NTI's step): the unconditional UNet pass, guidance, DDIM step, latent loss,
  backward into the null embedding, Adam step.

Variants:

* ``reference`` - the reference code's configuration: fp32, explicit attention (softmax
  materialised) on all 32 layers, UNet ``attn2`` weights with ``requires_grad`` (weight gradients
  computed and thrown away), the whole token-embedding matrix optimised (AdamW on 49408 x 768,
  other rows restored after each step), the UNet run to its end;
* ``ours`` - the default of :mod:`attncraft.pipelines.dpl`: fp32, gradients only for the
  placeholder vectors / the null embedding, the maps computed only on the five loss layers (fused
  attention elsewhere), the token pass stopped once the loss layers have run;
* ``ours_bf16`` - the same with the mixed-precision option (bf16 autocast).

Also: peak memory per variant, and one whole invert + DPL + edit wall time with the pipeline at
reduced iterations (``--whole-token-steps``, ``--whole-null-steps``), from which the full-setting
time (21 token and 51 null-text iterations per step) is extrapolated.

The weights are random: the SD 1.5 architecture costs the same with random weights, and no real
weights are reachable from the benchmark machine. Usage::

    python benchmarks/bench_dpl.py --device cuda --json $OUT/bench_dpl.json     # about 2-3 min on an H200
    python benchmarks/bench_dpl.py --tiny --device cpu                            # smoke test
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attncraft.attention_processors import AttentionTechnique, get_manager  # noqa: E402
from attncraft.attention_processors.dpl import DPLConfig, LossMaps, StopForward, dpl_losses, stop_after  # noqa: E402
from attncraft.attention_processors.prompt_to_prompt import attention_plan, tokenize_prompt  # noqa: E402
from attncraft.pipelines.inversion import DDIMSchedule, ModelAdapter, ddim_step, frozen  # noqa: E402

PROMPT = "a photo of a cat and a dog on a sofa"
NOUNS = ["cat", "dog"]


def build_pipeline(tiny: bool, device: torch.device):
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from attncraft.pipelines.dpl import RealImageEditPipeline
    from attncraft.tokenizer import load_clip_tokenizer

    torch.manual_seed(0)
    if tiny:
        unet = UNet2DConditionModel(
            block_out_channels=(32, 64, 64), layers_per_block=1, cross_attention_dim=32, attention_head_dim=8,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), norm_num_groups=8, sample_size=16,
        )
        text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=32, intermediate_size=37, num_attention_heads=4,
                                            num_hidden_layers=2, max_position_embeddings=77))
        vae = AutoencoderKL(block_out_channels=[32, 64], down_block_types=["DownEncoderBlock2D"] * 2,
                            up_block_types=["UpDecoderBlock2D"] * 2, latent_channels=4, norm_num_groups=8)
        size = 32
    else:
        # SD 1.5: diffusers' UNet defaults are the SD 1.x architecture; CLIP ViT-L/14's text tower; SD's VAE
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
        text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                                            num_hidden_layers=12, max_position_embeddings=77, hidden_act="quick_gelu"))
        vae = AutoencoderKL(block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
                            up_block_types=["UpDecoderBlock2D"] * 4, layers_per_block=2, latent_channels=4, sample_size=512)
        size = 512
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    pipe = RealImageEditPipeline(vae=vae, text_encoder=text, tokenizer=load_clip_tokenizer(), unet=unet, scheduler=scheduler,
                                 safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device), size


class ExplicitEverywhere(AttentionTechnique):
    """Materialises the softmax on every layer it selects (the reference's processor), changes nothing."""

    name = "explicit"
    edits_maps = True

    def needs_maps(self, layer) -> bool:
        return True

    def edit_probs(self, call, probs):
        return probs


class Setup:
    """Inputs shared by every variant: latent, timestep, prompt layout, targets."""

    def __init__(self, pipe, size: int, device: torch.device, steps: int):
        self.pipe, self.device = pipe, device
        self.plan = attention_plan(pipe)
        self.manager = get_manager(pipe)
        self.schedule = DDIMSchedule.from_scheduler(pipe.scheduler, steps, device)
        self.i = steps // 2
        self.t = self.schedule.timesteps[self.i]
        latent = size // pipe.vae_scale_factor
        gen = torch.Generator(device="cpu").manual_seed(0)
        self.z = torch.randn(1, 4, latent, latent, generator=gen).to(device)
        self.target = torch.randn(1, 4, latent, latent, generator=gen).to(device)
        self.tokens = tokenize_prompt(pipe.tokenizer, PROMPT, NOUNS)
        self.positions = torch.tensor([list(self.tokens.placeholder_positions().values())], device=device)
        self.config = DPLConfig()
        self.collector = LossMaps(self.plan.map_selector())
        self.loss_layers = [la.name for la in self.manager.layers_for(self.collector)]
        self.bg = torch.zeros(1, *self.plan.resolution(self.plan.map_level, (latent, latent)), dtype=torch.bool, device=device)
        self.bg[:, :, : self.bg.shape[-1] // 3] = True
        self.has_bg = torch.ones(1, dtype=torch.bool, device=device)
        with torch.no_grad():
            model = ModelAdapter(pipe)
            self.cond = model.encode([self.tokens])
            self.null = model.null(1)
            self.out_c = model(self.z, self.t, self.cond)

    def losses(self, maps):
        values = dpl_losses(maps.float(), self.positions, self.bg, self.has_bg, self.config, self.i)
        return values.total.sum()


# -- token-update iterations ----------------------------------------------------------------------


class OursToken:
    def __init__(self, s: Setup, autocast: torch.dtype | None):
        self.s = s
        self.model = ModelAdapter(s.pipe, autocast)
        emb = s.pipe.text_encoder.get_input_embeddings()
        init = emb.weight[[s.pipe.tokenizer(n, add_special_tokens=False).input_ids[0] for n in NOUNS]].detach().float()
        self.vectors = [init[None].clone().requires_grad_(True)]
        self.opt = torch.optim.AdamW(self.vectors, lr=1e-3, weight_decay=1e-2)

    @contextlib.contextmanager
    def active(self):
        s = self.s
        with frozen(s.pipe.unet, s.pipe.vae, s.pipe.text_encoder), s.manager.applied(s.collector):
            s.manager.context.cfg_batched = False
            yield
            s.manager.context.cfg_batched = None

    def step(self):
        s = self.s
        cond = self.model.encode([s.tokens], self.vectors, [0])
        s.collector.reset()
        try:
            with stop_after(s.pipe.unet, s.loss_layers):
                self.model(s.z, s.t, cond)
        except StopForward:
            pass
        loss = s.losses(s.collector.aggregate())
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        s.collector.reset()


class ReferenceToken:
    """The reference's token step: the whole embedding table trainable, attn2 weights with
    gradients, explicit attention everywhere, full UNet, rows restored after the step."""

    def __init__(self, s: Setup):
        self.s = s
        self.model = ModelAdapter(s.pipe)
        self.emb = s.pipe.text_encoder.get_input_embeddings()
        self.original = self.emb.weight.detach().clone()
        self.keep = torch.ones(self.emb.weight.shape[0], dtype=torch.bool, device=s.device)
        self.opt = None
        self.explicit = ExplicitEverywhere()

    @contextlib.contextmanager
    def active(self):
        s = self.s
        attn2 = [m for name, m in s.pipe.unet.named_modules() if name.endswith("attn2")]
        with frozen(s.pipe.unet, s.pipe.vae, s.pipe.text_encoder), s.manager.applied(self.explicit, s.collector):
            for m in attn2:
                m.requires_grad_(True)
            self.emb.weight.requires_grad_(True)
            self.opt = torch.optim.AdamW([self.emb.weight], lr=1e-3, weight_decay=1e-2)
            s.manager.context.cfg_batched = False
            yield
            s.manager.context.cfg_batched = None
            s.pipe.unet.zero_grad(set_to_none=True)
            self.emb.weight.grad = None
        with torch.no_grad():
            self.emb.weight.copy_(self.original)

    def step(self):
        s = self.s
        ids = s.pipe.tokenizer([s.tokens.encoder_text], padding="max_length", max_length=77, return_tensors="pt").input_ids.to(s.device)
        embeds = s.pipe.text_encoder(ids)[0]
        s.collector.reset()
        self.model(s.z, s.t, s.cond.with_embeds(embeds))
        loss = s.losses(s.collector.aggregate())
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        s.pipe.unet.zero_grad(set_to_none=True)
        with torch.no_grad():  # every row but the placeholders' back to its original value
            rows = self.keep.clone()
            rows[ids[0, s.positions[0]]] = False
            self.emb.weight[rows] = self.original[rows]
        s.collector.reset()


# -- null-text iterations ---------------------------------------------------------------------------


class NullStep:
    def __init__(self, s: Setup, variant: str):
        self.s, self.variant = s, variant
        autocast = torch.bfloat16 if variant == "ours_bf16" else None
        self.model = ModelAdapter(s.pipe, autocast)
        self.param = s.null.embeds.detach().clone().requires_grad_(True)
        self.opt = torch.optim.Adam([self.param], lr=1e-2)
        self.explicit = ExplicitEverywhere()

    @contextlib.contextmanager
    def active(self):
        s = self.s
        with frozen(s.pipe.unet, s.pipe.vae, s.pipe.text_encoder):
            if self.variant == "reference":
                with s.manager.applied(self.explicit):
                    for name, m in s.pipe.unet.named_modules():
                        if name.endswith("attn2"):
                            m.requires_grad_(True)
                    yield
                    s.pipe.unet.zero_grad(set_to_none=True)
            else:
                yield

    def step(self):
        s = self.s
        out_u = self.model(s.z, s.t, s.null.with_embeds(self.param))
        guided = out_u + 7.5 * (s.out_c - out_u)
        prev = ddim_step(s.z, guided, s.schedule.alpha_from[s.i], s.schedule.alpha_to[s.i], s.schedule.prediction_type)
        loss = (prev - s.target).pow(2).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        if self.variant == "reference":
            s.pipe.unet.zero_grad(set_to_none=True)


# -- timing -------------------------------------------------------------------------------------------


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_variants(variants: dict, rounds: int, iters: int, warmup: int, device) -> dict:
    results = {name: {"rounds": [], "peak_gib": 0.0} for name in variants}
    names = list(variants)
    for name, v in variants.items():  # warm-up (kernels, allocator, optimiser state)
        with v.active():
            for _ in range(warmup):
                v.step()
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            v = variants[name]
            with v.active():
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                sync(device)
                t0 = time.perf_counter()
                for _ in range(iters):
                    v.step()
                sync(device)
                results[name]["rounds"].append((time.perf_counter() - t0) * 1000 / iters)
                if device.type == "cuda":
                    results[name]["peak_gib"] = max(results[name]["peak_gib"], torch.cuda.max_memory_allocated() / 2**30)
    for name in names:
        results[name]["ms"] = statistics.median(results[name]["rounds"])
    return results


def whole_run(pipe, size, device, steps, token_steps, null_steps) -> dict:
    from attncraft.pipelines.inversion import NullTextSettings as NTS

    gen = torch.Generator(device="cpu").manual_seed(1)
    image = torch.rand(3, size, size, generator=gen)
    sync(device)
    t0 = time.perf_counter()
    inv = pipe.invert(image, PROMPT, nouns=NOUNS, dpl=DPLConfig(token_steps=token_steps), num_inference_steps=steps,
                      guidance_scale=7.5, null_text=NTS(inner_steps=null_steps, early_stop=False))
    sync(device)
    t1 = time.perf_counter()
    pipe(inv, "a photo of a cat and a tiger on a sofa", output_type="pil")
    sync(device)
    t2 = time.perf_counter()
    return {"invert_dpl_s": t1 - t0, "edit_s": t2 - t1, "total_s": t2 - t0,
            "token_updates": int(inv.extras["dpl_updates"].sum())}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny model, for a CPU smoke test")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iters", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--whole-token-steps", type=int, default=2)
    parser.add_argument("--whole-null-steps", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    pipe, size = build_pipeline(args.tiny, device)
    s = Setup(pipe, size, device, args.steps)
    before = [v.detach().clone() for v in pipe.unet.state_dict().values()]
    token = time_variants({"reference": ReferenceToken(s), "ours": OursToken(s, None),
                           "ours_bf16": OursToken(s, torch.bfloat16)}, args.rounds, args.iters, args.warmup, device)
    null = time_variants({name: NullStep(s, name) for name in ("reference", "ours", "ours_bf16")},
                         args.rounds, args.iters, args.warmup, device)
    unchanged = all(torch.equal(a, b) for a, b in zip(pipe.unet.state_dict().values(), before))
    del before
    whole = whole_run(pipe, size, device, args.steps, args.whole_token_steps, args.whole_null_steps)
    full = args.steps * (21 * token["ours"]["ms"] + 51 * null["ours"]["ms"]) / 1000
    gpu = torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or "CPU"
    lines = [
        f"## {datetime.date.today()} — DPL iteration cost, {'tiny model' if args.tiny else 'SD 1.5 size (random weights)'}, {size}x{size}",
        "",
        f"Hardware: {gpu}; torch {torch.__version__}. Command: `python benchmarks/bench_dpl.py {' '.join(argv if argv is not None else sys.argv[1:])}`. "
        f"Median of {args.rounds} interleaved rounds of {args.iters} iterations, batch 1, timestep {int(s.t)} of {args.steps}.",
        "",
        "| iteration | variant | ms / iteration | x reference | peak GiB |",
        "|---|---|---|---|---|",
    ]
    for label, res in (("token update", token), ("null-text", null)):
        for name, r in res.items():
            lines.append(f"| {label} | {name} | {r['ms']:.1f} | {r['ms'] / res['reference']['ms']:.2f} | {r['peak_gib']:.2f} |")
    lines += [
        "",
        f"Whole invert + DPL + edit ({args.steps} steps, {args.whole_token_steps} token and {args.whole_null_steps} null-text "
        f"iterations per step, fp32): {whole['total_s']:.1f} s (inversion + DPL {whole['invert_dpl_s']:.1f} s, edit "
        f"{whole['edit_s']:.1f} s). At the reference's 21 + 51 iterations per step, the optimisation alone would take "
        f"about {full:.0f} s with our default (from the per-iteration costs above).",
        "",
        f"UNet weights unchanged by the optimisation: {unchanged}.",
    ]
    text = "\n".join(lines)
    print(text)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"token": token, "null": null, "whole": whole, "extrapolated_full_s": full,
                                         "markdown": text}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
