"""``attncraft edit [IMAGE] --source ... --target ...``: real-image editing with null-text inversion,
optional DPL, and Prompt-to-Prompt.

Writes into one result folder ``OUT/<target>_s<seed>/`` (``-2``, ``-3``... if taken; reused with
``--overwrite``): ``source.png`` (the image as the model sees it, or the generated scene),
``reconstruction.png``, ``edited.png``, ``inversion.safetensors`` + ``inversion.json`` (one
inversion serves many edits: pass it back with ``--inversion``), and ``maps.png`` (the nouns'
cross-attention over the image, before and after DPL); every PNG carries its settings.

Without ``IMAGE`` the source is generated with the model from ``--source`` at ``--seed`` and then
edited like a photo; on Shapes ``--source``/``--target`` default to a sampled two-object scene and a
colour change of its first object.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import typer

from attncraft.batch.jobs import RUNNER_OPTIONS, register_job
from attncraft.cli.common import (
    ConfigOption,
    DeviceOption,
    ModelOption,
    OutOption,
    OverwriteOption,
    TrustPickleOption,
    console,
    quiet_libraries,
)


SHAPES_NULL_LR = 5e-2
"""Null-text learning rate on Shapes SD: the reference's 1e-2 leaves its reconstructions far from the
image at 10 iterations per step (benchmarks/RESULTS.md, DPL section)."""


def _parse_reweight(values: list[str] | None) -> dict[str, float]:
    from attncraft.errors import InputError
    from attncraft.validation import check_finite

    out: dict[str, float] = {}
    for item in values or []:
        word, sep, scale = item.partition("=")
        if not sep or not word.strip():
            raise InputError(f"--reweight {item!r} is not WORD=SCALE", "pass e.g. --reweight circle=2")
        out[word.strip()] = check_finite(f"--reweight {word.strip()}", scale, 0.0, 100.0, example=2)
    return out


def _words(text: str | None) -> list[str]:
    return [w.strip() for w in (text or "").split(",") if w.strip()]


def _default_scene(seed: int) -> tuple[str, str]:
    """A two-object Shapes scene's caption and the same caption with the first object recoloured."""
    from attncraft.shapes.captions import caption_scene
    from attncraft.shapes.palette import COLORS
    from attncraft.shapes.world import sample_scenes

    scene = sample_scenes(1, seed=seed, num_objects=2, patterns=False)[0]
    source = caption_scene(scene, seed=seed)
    first = scene.objects[0]
    new = next(c for c in COLORS if c != first.color and all(c != o.color for o in scene.objects))
    target = source.replace(f"{first.color} {first.shape}", f"{new} {first.shape}", 1)
    return source, target


def _shape_nouns(text: str) -> list[str]:
    from attncraft.shapes.world import SHAPES

    seen = []
    for word in text.lower().replace(",", " ").split():
        if word in SHAPES and word not in seen:
            seen.append(word)
    return seen


def edit(
    image: Path = typer.Argument(None, help="Image to edit (PNG/JPEG). Without it the source is generated from --source."),
    source: str = typer.Option(None, "--source", "-s", help="Caption of the image (the source prompt)."),
    target: str = typer.Option(None, "--target", "-t", help="Edit prompt."),
    mode: str = typer.Option("replace", "--mode", help="replace (word swap), refine (added/changed words) or reweight."),
    dpl: bool = typer.Option(False, "--dpl/--no-dpl", help="Learn dynamic tokens for the nouns (DPL) during inversion."),
    nouns: str = typer.Option(None, "--nouns", help="Comma-separated nouns of the source prompt for DPL (Shapes: its shape words)."),
    local_blend: str = typer.Option(None, "--local-blend", help="Comma-separated words whose region may change; the rest keeps the source."),
    reweight: list[str] = typer.Option(None, "--reweight", help="WORD=SCALE: scale a word's cross-attention (repeatable)."),
    cross_replace: float = typer.Option(0.8, "--cross-replace", help="Fraction of the steps with the source's cross-attention."),
    self_replace: float = typer.Option(0.4, "--self-replace", help="Fraction of the steps with the source's self-attention."),
    inversion: Path = typer.Option(None, "--inversion", help="A saved inversion (.safetensors) to edit instead of inverting again."),
    method: str = typer.Option("nti", "--method", help="nti (null-text inversion) or ddim (plain DDIM inversion)."),
    null_steps: int = typer.Option(None, "--null-steps", help="Null-text iterations per step (default 10 with early stop; 51 with --faithful)."),
    faithful: bool = typer.Option(False, "--faithful", help="DPL's null-text setting: 51 iterations per step, no early stop."),
    null_lr: float = typer.Option(None, "--null-lr", help="Null-text learning rate (default 1e-2, the reference's; 5e-2 on Shapes SD, where 1e-2 under-fits)."),
    dpl_steps: int = typer.Option(21, "--dpl-steps", help="DPL token-update iterations per step."),
    model: str = ModelOption,
    config: str = ConfigOption,
    steps: int = typer.Option(None, "--steps", help="DDIM steps (default: the model's recommendation, 50 for SD models)."),
    guidance: float = typer.Option(None, "--guidance", "-g", help="Guidance scale of inversion and editing (default: the model's, 7.5 for SD)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the generated source (without IMAGE) and of the default scene."),
    width: int = typer.Option(None, "--width", help="Resize the image to this width (default: its own, if the model takes it)."),
    height: int = typer.Option(None, "--height", help="Resize the image to this height."),
    out: Path = OutOption,
    overwrite: bool = OverwriteOption,
    device: str = DeviceOption,
    dtype: str = typer.Option("fp32", "--dtype", help="fp32 (default: inversion and DPL in full precision), fp16 or bf16."),
    trust_pickle: bool = TrustPickleOption,
) -> None:
    """Edit an image with Prompt-to-Prompt after null-text inversion, optionally with DPL."""
    options = {k: v for k, v in locals().items() if k not in RUNNER_OPTIONS}
    quiet_libraries()
    from attncraft.outputs import prepare_output_dir, reserve_dir
    from attncraft.pipelines.text_to_image import output_name

    plan = check_edit_options(**options)
    out = prepare_output_dir(out)
    loaded, pipe = load_edit_model(options, device)
    written, _settings = run_edit(loaded, pipe, plan, options,
                                  lambda target, seed: reserve_dir(out, output_name(target, seed), overwrite=overwrite))
    console.print(f"wrote {len(written)} files to {written[0].parent}/")
    for path in written:
        typer.echo(str(path))


@dataclass
class EditPlan:
    """What :func:`check_edit_options` found: the saved inversion (loaded) and the parsed --reweight."""

    saved: object
    weights: dict[str, float]


def check_edit_options(image=None, source=None, target=None, mode="replace", dpl=False, reweight=None, cross_replace=0.8,
                       self_replace=0.4, inversion=None, method="nti", null_steps=None, null_lr=None, dpl_steps=21,
                       steps=None, guidance=None, seed=0, **_other) -> EditPlan:
    """Every check of ``attncraft edit`` that needs no model (the edit batch job runs them too)."""
    from attncraft.attention_processors.prompt_to_prompt import MODES
    from attncraft.errors import InputError
    from attncraft.pipelines.inversion import Inversion
    from attncraft.validation import check_finite, check_input_file, check_int_range, check_seed

    if mode not in MODES:
        raise InputError(f"unknown --mode {mode!r}", f"pass one of {', '.join(MODES)}")
    if method not in ("nti", "ddim"):
        raise InputError(f"unknown --method {method!r}", "pass nti or ddim")
    if dpl and method != "nti":
        raise InputError("--dpl runs with null-text inversion", "drop --method ddim")
    check_seed(seed)
    check_finite("--cross-replace", cross_replace, 0.0, 1.0, example=0.8)
    check_finite("--self-replace", self_replace, 0.0, 1.0, example=0.4)
    if steps is not None:
        check_int_range("--steps", steps, 1, 1000, example=50)
    if guidance is not None:
        check_finite("--guidance", guidance, 1.0, 100.0, example=7.5)
    check_int_range("--dpl-steps", dpl_steps, 0, 1000, example=21)
    if null_steps is not None:
        check_int_range("--null-steps", null_steps, 0, 10000, example=10)
    if null_lr is not None:
        check_finite("--null-lr", null_lr, 0.0, 1.0, low_inclusive=False, example=0.01)
    if image is not None:
        check_input_file(image, "image")
    saved = None
    if inversion is not None:
        inversion = Path(inversion)
        check_input_file(inversion if inversion.suffix else Path(str(inversion) + ".safetensors"), "saved inversion")
        saved = Inversion.load(inversion)
    weights = _parse_reweight(reweight)
    if mode == "reweight" and not weights:
        raise InputError("--mode reweight needs --reweight WORD=SCALE", "pass e.g. --reweight circle=2")
    return EditPlan(saved, weights)


def load_edit_model(options: dict, device: str = "auto"):
    """The model of an edit and its editing pipeline (:func:`real_image_edit_pipeline`)."""
    quiet_libraries()
    from attncraft.loading import load_text_to_image
    from attncraft.pipelines.dpl import real_image_edit_pipeline

    loaded = load_text_to_image(options["model"], device=device, dtype=options["dtype"], config=options["config"],
                                trust_pickle=options["trust_pickle"])
    return loaded, real_image_edit_pipeline(loaded.pipeline)


def run_edit(loaded, pipe, plan: EditPlan, options: dict, folder_for, progress: bool | None = None) -> tuple[list[Path], dict]:
    """Invert (or take the saved inversion), edit, and write every result into ``folder_for(target,
    seed)`` (called once the source and target are known); returns the files written and the settings."""
    from attncraft.attention_processors.dpl import DPLConfig
    from attncraft.attention_processors.prompt_to_prompt import make_controllers, tokenize_prompt
    from attncraft.errors import InputError
    from attncraft.pipelines.inversion import NullTextSettings, prepare_image
    from attncraft.progress import progress_task
    from attncraft.validation import check_text

    o = options
    image, inversion, saved, weights = o["image"], o["inversion"], plan.saved, plan.weights
    source, target, mode, dpl, nouns, seed = o["source"], o["target"], o["mode"], o["dpl"], o["nouns"], o["seed"]
    steps, guidance, method, width, height = o["steps"], o["guidance"], o["method"], o["width"], o["height"]
    cross_replace, self_replace = o["cross_replace"], o["self_replace"]
    shapes = loaded.reference == "shapes"
    if saved is not None:
        saved.check(pipe, source=f"the saved inversion {str(inversion)!r}")
        if source is not None and source != saved.prompts[0]:
            raise InputError(f"the saved inversion is of the caption {saved.prompts[0]!r}, not {source!r}",
                             "drop --source (it is read from the inversion) or invert again")
        if steps is not None and steps != saved.num_steps:
            raise InputError(f"the saved inversion has {saved.num_steps} steps, not --steps {steps}",
                             "drop --steps or invert again")
        source = saved.prompts[0]
        dpl = saved.token_vectors is not None
        if nouns is not None and saved.nouns and _words(nouns) != saved.nouns[0]:
            raise InputError(f"the saved inversion's nouns are {', '.join(saved.nouns[0])}, not {nouns}",
                             "drop --nouns (they are read from the inversion) or invert again")
    if source is None or target is None:
        if not shapes or image is not None or saved is not None:
            missing = "--source" if source is None else "--target"
            raise InputError(f"{missing} is missing", 'pass --source "caption of the image" --target "the edit"')
        default_source, default_target = _default_scene(seed)
        if source is None:
            source, target = default_source, target or default_target
    source = check_text("--source", source)
    target = check_text("--target", target)
    steps = steps or (saved.num_steps if saved else int(loaded.defaults.get("num_inference_steps", 25 if shapes else 50)))
    guidance = guidance or (saved.settings["guidance_scale"] if saved else float(loaded.defaults.get("guidance_scale", 7.5)))
    noun_list = _words(nouns) or (saved.nouns[0] if saved and saved.nouns else []) or (_shape_nouns(source) if shapes else [])
    if dpl and not noun_list:
        raise InputError("--dpl needs the nouns of the source prompt", "pass --nouns, e.g. --nouns cat,dog")
    blend_words = _words(o["local_blend"])
    # every word-level problem is found now, before the inversion
    tokenizer = pipe.tokenizer if pipe.tokenizer is not None else pipe.tokenizer_2
    src_tokens = tokenize_prompt(tokenizer, source, noun_list if dpl else (), collapse=True)
    tgt_tokens = tokenize_prompt(tokenizer, target, noun_list if dpl else (), names=src_tokens.placeholder_names if dpl else None)
    make_controllers(pipe, [src_tokens, tgt_tokens], mode=mode, cross_replace=cross_replace, self_replace=self_replace,
                     reweight=weights or None, local_blend=blend_words or None, num_inference_steps=steps)

    # ---- the source image
    source_image = None
    generated = image is None and saved is None
    if image is not None:
        arr, _ = prepare_image(pipe, image, height, width)
        from PIL import Image as PILImage

        source_image = PILImage.fromarray(arr)
    elif generated:
        from attncraft.pipelines.text_to_image import default_settings, generate

        settings = default_settings(loaded, source)
        settings.seed, settings.num_inference_steps = seed, steps
        if guidance is not None:
            settings.guidance_scale = guidance
        settings.width = width or settings.width
        settings.height = height or settings.height
        with progress_task("generating the source", settings.num_inference_steps, enabled=progress) as update:
            source_image = generate(loaded, settings, on_step=lambda i, n: update(i)).images[0]

    if progress is not False:
        console.print(f"model: {loaded.label}")
    folder = Path(folder_for(target, seed))
    total = steps if saved is not None else 3 * steps
    phases = {"inversion": 0, "optimisation": steps, "editing": 0 if saved is not None else 2 * steps}
    with progress_task("inversion + " + ("DPL + " if dpl else "") + "editing", total, enabled=progress) as update:
        def on_progress(phase, done, n):
            update(phases[phase] + done, phase)

        if saved is None:
            null_text = NullTextSettings.faithful() if o["faithful"] else NullTextSettings()
            if o["null_steps"] is not None:
                null_text.inner_steps = o["null_steps"]
            null_text.lr = o["null_lr"] or (SHAPES_NULL_LR if shapes else null_text.lr)
            inv = pipe.invert(
                source_image, source, nouns=noun_list or None,
                dpl=DPLConfig(token_steps=o["dpl_steps"]) if dpl else None, method=method, num_inference_steps=steps,
                guidance_scale=guidance, null_text=null_text, height=height, width=width, on_progress=on_progress,
            )
        else:
            inv = saved
            if source_image is not None:
                arr, _ = prepare_image(pipe, source_image, inv.settings["height"], inv.settings["width"])
                from attncraft.pipelines.inversion import image_fingerprint

                inv.check(pipe, [image_fingerprint(arr)], source=f"the saved inversion {str(inversion)!r}")
        store = _map_store(pipe)
        result = pipe(inv, target, mode=mode, cross_replace=cross_replace, self_replace=self_replace,
                      reweight=weights or None, local_blend=blend_words or None, guidance_scale=guidance,
                      output_type="pil", attention_store=store, on_progress=on_progress)
    reconstruction, edited = result.images[0], result.images[1]
    settings = {
        "task": "edit", "source": source, "target": target, "mode": mode, "dpl": bool(dpl), "nouns": noun_list,
        "local_blend": blend_words, "reweight": weights, "cross_replace": cross_replace, "self_replace": self_replace,
        "method": inv.settings.get("method"), "num_inference_steps": steps, "guidance_scale": guidance, "seed": seed,
        "model": loaded.reference, "model_label": loaded.label, "image": str(image) if image is not None else None,
        "generated_source": generated, "inversion": str(inversion) if inversion is not None else str(folder / "inversion.safetensors"),
        "null_text": inv.settings.get("null_text"), "dpl_settings": inv.settings.get("dpl"),
    }
    written = _write_results(folder, settings, source_image, reconstruction, edited, inv, store, saved is None,
                             noun_list or _words(nouns) or _changed_words(source, target), pipe)
    return written, settings


def _changed_words(source: str, target: str) -> list[str]:
    src, tgt = source.split(), target.split()
    return [w.strip(".,") for w in src if w not in tgt][:4] or src[-1:]


def _map_store(pipe):
    from attncraft.attention_processors import AttentionStore
    from attncraft.attention_processors.prompt_to_prompt import attention_plan

    return AttentionStore(attention_plan(pipe).map_selector())


def _write_results(folder, settings, source_image, reconstruction, edited, inv, store, save_inversion, words, pipe):
    import torch

    from attncraft.outputs import save_png_with_settings
    from attncraft.pipelines.dpl import map_picture, word_maps

    written = []
    if source_image is not None:
        written.append(save_png_with_settings(source_image, folder / "source.png", dict(settings, picture="source"), overwrite=True))
    written.append(save_png_with_settings(reconstruction, folder / "reconstruction.png", dict(settings, picture="reconstruction"), overwrite=True))
    written.append(save_png_with_settings(edited, folder / "edited.png", dict(settings, picture="edited"), overwrite=True))
    if save_inversion:
        written.append(inv.save(folder / "inversion"))
        written.append(folder / "inversion.json")
    rows = []
    tokenizer = pipe.tokenizer if pipe.tokenizer is not None else pipe.tokenizer_2
    resolution = inv.extras.get("map_resolution")
    before = inv.extras.get("maps_inversion")
    if before is not None and resolution is not None:
        rows.append(("inversion (before DPL)" if settings["dpl"] else "inversion", word_maps(tokenizer, settings["source"], before[0], resolution, words, plain=True)))
    if store is not None and store.layer_names:
        avg = store.average()
        res = store.resolution(store.layer_names[0])
        dyn = settings["dpl"]
        rows.append(("reconstruction (after DPL)" if dyn else "reconstruction",
                     word_maps(tokenizer, settings["source"], avg[0], res, words, plain=not dyn, nouns=settings["nouns"] if dyn else ())))
    if rows:
        picture = map_picture(source_image if source_image is not None else reconstruction, rows, words)
        written.append(save_png_with_settings(picture, folder / "maps.png", dict(settings, picture="attention maps", words=words), overwrite=True))
    del torch
    return written


# --------------------------------------------------------------------------------------------------
# The ``edit`` batch job: one result folder per job, the model loaded once per worker
# --------------------------------------------------------------------------------------------------


def _run_edit_jobs(model, jobs) -> None:
    loaded, pipe = model
    for job in jobs:
        _written, job.settings = run_edit(loaded, pipe, check_edit_options(**job.options), job.options,
                                          lambda target, seed: job.folder(), progress=False)


register_job(
    "edit", edit,
    check=check_edit_options,
    load=load_edit_model,
    run=_run_edit_jobs,
    model_options=("model", "config", "dtype", "trust_pickle"),
    name_option="target",
)
