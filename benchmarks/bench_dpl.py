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
  placeholder vectors / the null embedding, the maps computed only on the five loss layers, the
  token pass stopped once the loss layers have run, the fused SDPA kernel (``attention="fused"``:
  in fp32 that is the memory-efficient kernel);
* ``ours_auto`` - ``ours`` with ``attention="auto"`` (on CUDA in fp32: the explicit product,
  torch's ``math`` SDPA kernel, on every layer without a technique, for the passes that backpropagate);
* ``ours_explicit`` - ``ours`` with the explicit product forced on every layer
  (``attention="explicit"``); with ``ours_auto`` it isolates the attention kernel's share;
* ``ours_tf32`` - ``ours`` with TF32 matmuls and convolutions for the iterations
  (``precision="tf32"``: float32 storage, scoped, restored after);
* ``ours_bf16`` - the same with the mixed-precision option (bf16 autocast);
* ``ours_compiled`` - ``ours`` with the UNet calls under ``torch.compile`` (``compile=
  "reduce-overhead"``: inductor, CUDA graphs on CUDA; ``--compile-mode`` picks another mode): the
  token pass's graph ends at the loss layers (what follows them feeds nothing and is left out), and
  the losses are a compiled graph too. The
  compilation (the first warm-up iteration of each pass) is excluded from the per-iteration figure
  and reported on its own line; on CUDA its Adam/AdamW take torch's fused kernel, as the pipeline's.

Every ``ours*`` variant (and the reference's null-text one) starts from the same embedding and
takes the same number of iterations on the same inputs, so the benchmark also reports, per
variant, the largest absolute difference of its optimised embedding from ``ours`` (strict fp32)
after them: the effect of the kernel and precision choices on the result.

``--profile DIR`` writes ``DIR/dpl_profile.md``: for ``reference``, ``ours`` and ``ours_auto``, the
top CUDA kernels by device time per iteration, and the host time (until the last launch returns),
the wall time and the summed kernel time per iteration (host close to wall with kernels well below
it means the iteration is launch-bound).

Also: peak memory per variant, and one whole invert + DPL + edit wall time with the pipeline at
reduced iterations (``--whole-token-steps``, ``--whole-null-steps``), from which the full-setting
time (21 token and 51 null-text iterations per step) is extrapolated.

The weights are random: the SD 1.5 architecture costs the same with random weights, and no real
weights are reachable from the benchmark machine. Usage::

    python benchmarks/bench_dpl.py --device cuda --json $OUT/bench_dpl.json --profile $OUT   # about 2-3 min on an H200
    python benchmarks/bench_dpl.py --device cuda --variants ours_compiled --profile $OUT   # reference, ours, ours_compiled
    python benchmarks/bench_dpl.py --tiny --device cpu                            # smoke test (ours_compiled with aot_eager)
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
sys.path.insert(0, str(Path(__file__).resolve().parent))  # profiling.py beside it

from attncraft.attention_processors import AttentionTechnique, get_manager  # noqa: E402
from attncraft.attention_processors.dpl import DPLConfig, LossMaps, dpl_losses  # noqa: E402
from attncraft.attention_processors.prompt_to_prompt import attention_plan, tokenize_prompt  # noqa: E402
import attncraft.pipelines.inversion as inversion_module  # noqa: E402
from attncraft.pipelines.inversion import DDIMSchedule, ModelAdapter, ddim_step, frozen, tf32_scope  # noqa: E402

PROMPT = "a photo of a cat and a dog on a sofa"
NOUNS = ["cat", "dog"]

VARIANTS = {  # our variants: (autocast dtype, attention kernel, TF32, compiled)
    "ours": (None, "fused", False, False),
    "ours_auto": (None, "auto", False, False),
    "ours_explicit": (None, "explicit", False, False),
    "ours_tf32": (None, "fused", True, False),
    "ours_bf16": (torch.bfloat16, "fused", False, False),
    "ours_compiled": (None, "fused", False, True),
}
COMPILE_MODE = {"mode": "reduce-overhead"}  # --compile-mode
PROFILED = ("reference", "ours", "ours_auto", "ours_compiled")


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

    def losses(self, maps, compile=None):
        values = dpl_losses(maps.float(), self.positions, self.bg, self.has_bg, self.config, self.i, compile=compile)
        return values.total.sum()


# -- token-update iterations ----------------------------------------------------------------------


class OursToken:
    def __init__(self, s: Setup, variant: str):
        self.s = s
        autocast, attention, self.tf32, compiled = VARIANTS[variant]
        self.model = ModelAdapter(s.pipe, autocast, attention=attention,
                                  compile=COMPILE_MODE["mode"] if compiled else None)
        emb = s.pipe.text_encoder.get_input_embeddings()
        init = emb.weight[[s.pipe.tokenizer(n, add_special_tokens=False).input_ids[0] for n in NOUNS]].detach().float()
        self.vectors = [init[None].clone().requires_grad_(True)]
        self.opt = torch.optim.AdamW(self.vectors, lr=1e-3, weight_decay=1e-2, **self.model.optimizer_options)

    @contextlib.contextmanager
    def active(self):
        s = self.s
        with frozen(s.pipe.unet, s.pipe.vae, s.pipe.text_encoder), s.manager.applied(s.collector), \
                tf32_scope(s.device, self.tf32):
            s.manager.context.cfg_batched = False
            yield
            s.manager.context.cfg_batched = None

    def step(self):
        s = self.s
        cond = self.model.encode([s.tokens], self.vectors, [0])
        s.collector.reset()
        self.model.observe(s.z, s.t, cond, s.loss_layers)  # stopped after the loss layers
        loss = s.losses(s.collector.aggregate(), self.model.compiled and self.model.compiled.mode)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        s.collector.reset()

    def result(self) -> torch.Tensor:
        return self.vectors[0].detach()


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

    def result(self) -> None:
        return None  # the whole table is the parameter: not comparable with the vectors of ours


# -- null-text iterations ---------------------------------------------------------------------------


class NullStep:
    def __init__(self, s: Setup, variant: str):
        self.s, self.variant = s, variant
        autocast, attention, self.tf32, compiled = VARIANTS.get(variant, (None, "fused", False, False))
        self.model = ModelAdapter(s.pipe, autocast, attention=attention,
                                  compile=COMPILE_MODE["mode"] if compiled else None)
        self.param = s.null.embeds.detach().clone().requires_grad_(True)
        self.opt = torch.optim.Adam([self.param], lr=1e-2, **self.model.optimizer_options)
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
                with tf32_scope(s.device, self.tf32):
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

    def result(self) -> torch.Tensor:
        return self.param.detach()


# -- timing -------------------------------------------------------------------------------------------


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_variants(variants: dict, rounds: int, iters: int, warmup: int, device) -> dict:
    results = {name: {"rounds": [], "peak_gib": 0.0} for name in variants}
    names = list(variants)
    for name, v in variants.items():  # warm-up (kernels, allocator, optimiser state, compilation)
        with v.active():
            for k in range(max(warmup, 1)):
                sync(device)
                t0 = time.perf_counter()
                v.step()
                sync(device)
                if k == 0:
                    results[name]["first_iteration_s"] = time.perf_counter() - t0
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
        results[name]["iterations"] = max(warmup, 1) + rounds * iters
    return results


def embedding_differences(variants: dict, results: dict) -> None:
    """Max |embedding - ours'| after the same iterations, per variant whose embedding compares."""
    base = variants["ours"].result().float()
    for name, v in variants.items():
        other = v.result()
        results[name]["max_abs_diff_vs_ours"] = None if other is None else float((other.float() - base).abs().max())


def profile_variants(variants: dict, label: str, iters: int, device) -> tuple[list[str], dict]:
    """torch.profiler summary of ``iters`` iterations per variant (after one untimed)."""
    from profiling import kernel_table, profiled

    lines, summary = [], {}
    for name in [n for n in PROFILED if n in variants]:
        v = variants[name]
        with v.active():
            v.step()
            host, wall, kernels = profiled(lambda: [v.step() for _ in range(iters)], device, iters)
        busy = sum(ms for ms, _ in kernels.values())
        summary[name] = {"host_ms": host, "wall_ms": wall, "kernel_ms": busy if kernels else None}
        lines += [f"### {label}, {name}", "",
                  f"Per iteration: host {host:.1f} ms (until the last launch returns), wall {wall:.1f} ms, "
                  + (f"summed kernel time {busy:.1f} ms." if kernels else "no CUDA kernels recorded (CPU run)."), ""]
        if kernels:
            lines += kernel_table(kernels, "iteration")
    return lines, summary


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


def flags() -> str:
    matmul = torch.get_float32_matmul_precision()
    return (f"float32 matmul precision {matmul!r}, cuDNN TF32 {torch.backends.cudnn.allow_tf32} (torch's defaults, "
            "kept by every variant but ours_tf32)")


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
    parser.add_argument("--profile", type=Path, default=None, metavar="DIR",
                        help="write DIR/dpl_profile.md: top kernels, host vs device time per iteration")
    parser.add_argument("--profile-iters", type=int, default=3)
    parser.add_argument("--compile-mode", default="reduce-overhead",
                        help="torch.compile mode of ours_compiled (default reduce-overhead: CUDA graphs on CUDA)")
    parser.add_argument("--compile-backend", default=None,
                        help="torch.compile backend of ours_compiled (default: inductor on CUDA, aot_eager on the CPU, "
                             "where DPL refuses inductor: its gradients are wrong there)")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=None,
                        help="our variants to run beside reference and ours (default: all)")
    parser.add_argument("--skip-whole", action="store_true", help="leave out the whole invert + DPL + edit run")
    args = parser.parse_args(argv)
    COMPILE_MODE["mode"] = args.compile_mode
    device = torch.device(args.device)
    previous = inversion_module.COMPILE_BACKEND  # a library setting: restored for whoever runs next in this process
    inversion_module.COMPILE_BACKEND = args.compile_backend or ("inductor" if device.type == "cuda" else "aot_eager")
    try:
        return run(args, argv, device)
    finally:
        inversion_module.COMPILE_BACKEND = previous


def run(args, argv, device: torch.device) -> int:
    pipe, size = build_pipeline(args.tiny, device)
    s = Setup(pipe, size, device, args.steps)
    before = [v.detach().cpu().clone() for v in pipe.unet.state_dict().values()]  # on the host: not in the peaks
    chosen = ["ours"] + [n for n in (args.variants or VARIANTS) if n != "ours"]
    token_variants = {"reference": ReferenceToken(s), **{name: OursToken(s, name) for name in chosen}}
    null_variants = {name: NullStep(s, name) for name in ("reference", *chosen)}
    token = time_variants(token_variants, args.rounds, args.iters, args.warmup, device)
    null = time_variants(null_variants, args.rounds, args.iters, args.warmup, device)
    embedding_differences(token_variants, token)
    embedding_differences(null_variants, null)
    profile_lines, profile_summary = [], {}
    if args.profile is not None:
        for label, variants in (("token update", token_variants), ("null-text", null_variants)):
            lines, summary = profile_variants(variants, label, args.profile_iters, device)
            profile_lines += lines
            profile_summary[label] = summary
    unchanged = all(torch.equal(a, b.cpu()) for a, b in zip(before, pipe.unet.state_dict().values()))
    del before
    whole = None if args.skip_whole else whole_run(pipe, size, device, args.steps, args.whole_token_steps, args.whole_null_steps)
    full = args.steps * (21 * token["ours"]["ms"] + 51 * null["ours"]["ms"]) / 1000
    full_compiled = (args.steps * (21 * token["ours_compiled"]["ms"] + 51 * null["ours_compiled"]["ms"]) / 1000
                     if "ours_compiled" in token else None)
    gpu = torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or "CPU"
    command = f"python benchmarks/bench_dpl.py {' '.join(argv if argv is not None else sys.argv[1:])}"
    lines = [
        f"## {datetime.date.today()} — DPL iteration cost, {'tiny model' if args.tiny else 'SD 1.5 size (random weights)'}, {size}x{size}",
        "",
        f"Hardware: {gpu}; torch {torch.__version__}. Command: `{command}`. "
        f"Median of {args.rounds} interleaved rounds of {args.iters} iterations, batch 1, timestep {int(s.t)} of {args.steps}. "
        f"Flags: {flags()}. \"max abs diff\": largest absolute difference of the variant's optimised embedding "
        f"from ours' (strict fp32) after the same {token['ours']['iterations']} iterations.",
        "",
        "| iteration | variant | ms / iteration | x reference | peak GiB | max abs diff vs ours |",
        "|---|---|---|---|---|---|",
    ]
    ratios = []
    for label, res in (("token update", token), ("null-text", null)):
        for name, r in res.items():
            diff = r["max_abs_diff_vs_ours"]
            ratio = r["ms"] / res["reference"]["ms"]
            lines.append(f"| {label} | {name} | {r['ms']:.1f} | {ratio:.2f} | {r['peak_gib']:.2f} | "
                         f"{'-' if diff is None else f'{diff:.2e}'} |")
            ratios.append(f"{label} {name}: {r['ms']:.1f} ms = {ratio:.2f}x reference")
    if "ours_compiled" in token:
        lines += ["", f"Compilation (ours_compiled, mode {args.compile_mode!r}; the first warm-up iteration, excluded above): "
                  f"token update {token['ours_compiled']['first_iteration_s']:.1f} s, null-text "
                  f"{null['ours_compiled']['first_iteration_s']:.1f} s (ours' first iteration: "
                  f"{token['ours']['first_iteration_s']:.2f} s / {null['ours']['first_iteration_s']:.2f} s)."]
    if profile_summary:
        lines += ["", "Per iteration, host time (until the last launch returns) / wall / summed kernel time (ms):"]
        for label, summary in profile_summary.items():
            lines.append("; ".join(f"{label} {name} {v['host_ms']:.1f} / {v['wall_ms']:.1f} / "
                                   f"{'-' if v['kernel_ms'] is None else format(v['kernel_ms'], '.1f')}"
                                   for name, v in summary.items()) + ".")
    if whole is not None:
        lines += [
            "",
            f"Whole invert + DPL + edit ({args.steps} steps, {args.whole_token_steps} token and {args.whole_null_steps} "
            f"null-text iterations per step, fp32): {whole['total_s']:.1f} s (inversion + DPL {whole['invert_dpl_s']:.1f} s, "
            f"edit {whole['edit_s']:.1f} s)."]
    lines += [
        "",
        f"At the reference's 21 + 51 iterations per step, the optimisation alone would take about {full:.0f} s with our "
        "default (from the per-iteration costs above)"
        + (f", {full_compiled:.0f} s with ours_compiled (plus its compilation)." if full_compiled is not None else "."),
        "",
        f"UNet weights unchanged by the optimisation: {unchanged}.",
    ]
    text = "\n".join(lines)
    print(text)
    print()
    for line in ratios:
        print(line)
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
        (args.profile / "dpl_profile.md").write_text("\n".join(
            [f"# DPL iteration profile ({gpu}, torch {torch.__version__})", "", f"Command: `{command}`.", "",
             *profile_lines]) + "\n")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"token": token, "null": null, "whole": whole, "extrapolated_full_s": full, "extrapolated_full_compiled_s": full_compiled,
                                         "profile": profile_summary, "markdown": text}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
