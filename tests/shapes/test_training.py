"""Shapes model training: smoke runs of every stage on CPU, saved folders, architecture and size budget.

The smoke configuration (``--config smoke``) shrinks the widths but keeps the classes and code paths of
the full one; the full configuration is only built (on the meta device) to check its size budget.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from attncraft.shapes.training import common


def _first_last(history: list[float], k: int = 8) -> tuple[float, float]:
    return float(np.mean(history[:k])), float(np.mean(history[-k:]))


def _run_args(out: Path, **kw) -> common.RunArgs:
    return common.RunArgs(config="smoke", out=str(out), minutes=5.0, device="cpu", seed=0,
                          argv=["python", "smoke"], **kw)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Smoke-train CLIP, VAE and UNet once for the module (the UNet needs the other two)."""
    from attncraft.shapes.training.clip import train_clip
    from attncraft.shapes.training.unet import train_unet
    from attncraft.shapes.training.vae import train_vae

    root = tmp_path_factory.mktemp("shapes_training")
    clip = train_clip(_run_args(root / "shapes-clip"), quiet=True)
    vae = train_vae(_run_args(root / "shapes-vae"), quiet=True)
    unet = train_unet(_run_args(root / "shapes-sd", clip_dir=str(root / "shapes-clip"),
                                vae_dir=str(root / "shapes-vae")), quiet=True)
    return root, {"clip": clip, "vae": vae, "unet": unet}


def _safetensors_dtypes(folder: Path) -> set[str]:
    dtypes = set()
    for path in folder.rglob("*.safetensors"):
        with safe_open(str(path), "pt") as f:
            for key in f.keys():
                dtypes.add(str(f.get_slice(key).get_dtype()))
    return dtypes


# -------------------------------------------------------------------------------- smoke training
@pytest.mark.parametrize("stage,ratio", [("clip", 0.97), ("vae", 0.85), ("unet", 0.95)])
def test_smoke_training_decreases_loss(trained, stage, ratio):
    _, info = trained
    history = info[stage]["loss_history"]
    assert len(history) == info[stage]["steps"] > 10
    assert all(np.isfinite(history))
    first, last = _first_last(history)
    assert last < ratio * first, f"{stage}: loss {first:.4f} -> {last:.4f}"


def test_training_logs_written(trained):
    root, _ = trained
    for name in ("shapes-clip", "shapes-vae", "shapes-sd"):
        log = json.loads((root / name / "training_log.json").read_text())
        for key in ("steps", "wall_seconds", "hardware", "final_loss", "command", "steps_per_second"):
            assert key in log, (name, key)
        assert log["config"] == "smoke" and log["steps"] > 0


def test_clip_folder_loads_fp16(trained):
    from transformers import CLIPModel

    root, _ = trained
    folder = root / "shapes-clip"
    assert _safetensors_dtypes(folder) == {"F16"}
    model = CLIPModel.from_pretrained(str(folder), local_files_only=True, dtype=torch.float32)
    assert model.config.text_config.vocab_size == 49408
    assert model.config.text_config.eos_token_id == 49407
    pre = json.loads((folder / "preprocessor_config.json").read_text())
    assert pre["image_mean"] == [0.5, 0.5, 0.5] and pre["crop_size"] == {"height": 64, "width": 64}


def test_vae_scaling_factor_measured(trained):
    from diffusers import AutoencoderKL

    root, info = trained
    vae = AutoencoderKL.from_pretrained(str(root / "shapes-vae"), local_files_only=True)
    assert vae.config.scaling_factor == pytest.approx(info["vae"]["scaling_factor"])
    assert vae.config.scaling_factor != 1.0
    assert _safetensors_dtypes(root / "shapes-vae") == {"F16"}


def test_sd_folder_loads_offline_and_generates(trained):
    from diffusers import StableDiffusionPipeline

    from attncraft.shapes.vocab import VocabRemap
    from attncraft.tokenizer import load_clip_tokenizer

    root, _ = trained
    folder = root / "shapes-sd"
    assert not (folder / "tokenizer" / "tokenizer.json").exists()
    assert (folder / "tokenizer" / "vocab.json").is_file() and (folder / "tokenizer" / "merges.txt").is_file()
    assert _safetensors_dtypes(folder) == {"F16"}
    with safe_open(str(folder / "text_encoder" / "model.safetensors"), "pt") as f:
        assert all(k.startswith("text_model.") for k in f.keys())  # SD 1.x key names
    pipe = StableDiffusionPipeline.from_pretrained(str(folder), local_files_only=True, torch_dtype=torch.float32)
    assert pipe.tokenizer.model_max_length == 77
    text = "a big striped red circle on the left and a blue heart"
    # saved with the Shapes vocabulary (attncraft.shapes.vocab): CLIP's ids of a world caption, remapped
    remap = VocabRemap.for_tokenizer(pipe.tokenizer)
    assert remap is not None and 500 < remap.size < 2000
    assert pipe.tokenizer(text).input_ids == remap(torch.tensor(load_clip_tokenizer()(text).input_ids)).tolist()
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    pipe.set_progress_bar_config(disable=True)
    out = pipe("a red circle", num_inference_steps=2, guidance_scale=5.0, height=64, width=64, output_type="np",
               generator=torch.Generator().manual_seed(0)).images
    assert out.shape == (1, 64, 64, 3) and np.isfinite(out).all()
    defaults = json.loads((folder / "attncraft_defaults.json").read_text())
    assert defaults["width"] == 64 and defaults["num_inference_steps"] > 0


def test_sd_text_encoder_is_the_clip_text_tower(trained):
    from transformers import CLIPModel, CLIPTextModel

    root, _ = trained
    clip = CLIPModel.from_pretrained(str(root / "shapes-clip"), local_files_only=True, dtype=torch.float32)
    enc = CLIPTextModel.from_pretrained(str(root / "shapes-sd" / "text_encoder"), local_files_only=True,
                                        dtype=torch.float32)
    from attncraft.shapes.vocab import VocabRemap

    ids = torch.tensor([[49406, 320, 736, 7117, 49407] + [49407] * 72])  # CLIP's ids of "a red circle"
    a = clip.text_model(input_ids=ids).last_hidden_state
    b = enc(input_ids=VocabRemap.for_folder(root / "shapes-sd")(ids)).last_hidden_state  # the folder's own ids
    torch.testing.assert_close(a, b)


def test_unet_probe_recorded(trained):
    _, info = trained
    probe = info["unet"]["heldout_v_loss"]
    assert set(probe) == {"true", "shuffled", "empty"} and all(np.isfinite(list(probe.values())))
    flip = info["unet"]["heldout_relation_flip_v_loss"]
    assert set(flip) == {f"{a}_{k}" for a in ("vertical", "horizontal") for k in ("true", "flipped", "ratio")}
    assert all(np.isfinite(list(flip.values())))
    assert flip["vertical_ratio"] == pytest.approx(flip["vertical_flipped"] / flip["vertical_true"])


def test_cli_evaluate_clip(trained, tmp_path):
    from attncraft.shapes.training.__main__ import main

    root, _ = trained
    assert main(["evaluate", "--what", "clip", "--config", "smoke", "--clip", str(root / "shapes-clip"),
                 "--out", str(tmp_path), "--device", "cpu"]) == 0
    res = json.loads((tmp_path / "shapes_eval_clip.json").read_text())
    assert set(res["clip"]["accuracy"]) == {"color", "shape", "position", "joint"}
    assert "shapes CLIP" in (tmp_path / "shapes_eval_clip.md").read_text()


# ------------------------------------------------------------------------ architecture and budget
def test_full_size_architectures_fit_the_size_budget():
    from attncraft.shapes.models import SIZE_BUDGET_BYTES, shapes_size_budget

    budget = shapes_size_budget()
    assert budget["total"]["fp16_bytes"] < SIZE_BUDGET_BYTES
    assert 3e6 < budget["shapes-sd/unet"]["params"] < 12e6
    assert 1e6 < budget["shapes-sd/vae"]["params"] < 2e6
    from attncraft.shapes.models import shipped_sd_vocab_size

    vocab = shipped_sd_vocab_size() or 49408  # the text tower, its token embedding cut to the Shapes vocabulary
    assert budget["shapes-sd/text_encoder"]["params"] == budget["shapes-clip (text tower)"]["params"] - (49408 - vocab) * 128


def test_full_configs_match_the_world_and_tokenizer():
    from attncraft.shapes.models import shapes_clip_config, shapes_unet_config, shapes_vae_config

    cfg = shapes_clip_config()
    t, v = cfg.text_config, cfg.vision_config
    assert (t.vocab_size, t.bos_token_id, t.eos_token_id, t.pad_token_id) == (49408, 49406, 49407, 49407)
    assert t.hidden_size == 128 and v.image_size == 64 and v.patch_size == 8
    assert shapes_unet_config()["cross_attention_dim"] == t.hidden_size
    vae = shapes_vae_config()
    assert len(vae["block_out_channels"]) == 3 and vae["latent_channels"] == 4  # 64 px -> 16x16x4


def test_random_stand_in_has_cross_attention_at_16_and_8():
    from diffusers.models.attention_processor import AttnProcessor2_0

    from attncraft.shapes.models import build_random_shapes_sd_pipeline

    pipe = build_random_shapes_sd_pipeline(seed=0)
    seen: dict[str, int] = {}

    class Recorder(AttnProcessor2_0):
        def __init__(self, name):
            super().__init__()
            self.name = name

        def __call__(self, attn, hidden_states, encoder_hidden_states=None, *args, **kwargs):
            if encoder_hidden_states is not None:
                seen[self.name] = hidden_states.shape[1]
            return super().__call__(attn, hidden_states, encoder_hidden_states, *args, **kwargs)

    pipe.unet.set_attn_processor({name: Recorder(name) for name in pipe.unet.attn_processors})
    with torch.no_grad():
        pipe.unet(torch.randn(1, 4, 16, 16), 10, encoder_hidden_states=torch.randn(1, 77, 128))
    lengths = sorted(set(seen.values()))
    assert lengths == [64, 256], seen  # 8x8 and 16x16 query grids
    assert sum(v == 256 for v in seen.values()) >= 2 and all(k.endswith("attn2.processor") for k in seen)
    assert pipe.vae_scale_factor == 4 and pipe.unet.config.sample_size == 16


# ----------------------------------------------------------------------------------- conventions
def test_training_noise_matches_diffusers_and_sampler_inverts_it():
    from attncraft.shapes.models import NOISE_SCHEDULE, shapes_scheduler, shapes_training_scheduler

    sched = shapes_training_scheduler()
    ac = torch.linspace(NOISE_SCHEDULE["beta_start"] ** 0.5, NOISE_SCHEDULE["beta_end"] ** 0.5, 1000,
                        dtype=torch.float64) ** 2
    mine = torch.cumprod(1.0 - ac, 0).float()
    torch.testing.assert_close(mine, sched.alphas_cumprod.float())
    z, n, t = torch.randn(3, 4, 16, 16), torch.randn(3, 4, 16, 16), torch.tensor([0, 500, 999])
    sa, sb = mine[t].sqrt()[:, None, None, None], (1 - mine[t]).sqrt()[:, None, None, None]
    torch.testing.assert_close(sched.add_noise(z, n, t), sa * z + sb * n)
    torch.testing.assert_close(sched.get_velocity(z, n, t), sa * n - sb * z)

    # an oracle v-model (knows x0) must be inverted exactly by every Shapes sampler
    x0 = torch.randn(1, 4, 16, 16)
    for name in ("DPMSolverMultistepScheduler", "DDIMScheduler", "EulerDiscreteScheduler"):
        s = shapes_scheduler(name)
        s.set_timesteps(25)
        x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0)) * s.init_noise_sigma
        for step_t in s.timesteps:
            xin = s.scale_model_input(x, step_t)
            a = mine[int(step_t)]
            eps = (xin - a.sqrt() * x0) / (1 - a).sqrt()
            v = a.sqrt() * eps - (1 - a).sqrt() * x0
            x = s.step(v, step_t, x).prev_sample
        assert (x - x0).abs().max() < 1e-3, name


def test_cached_tokenizer_matches_clip_tokenizer():
    from attncraft.shapes.captions import caption_scene
    from attncraft.shapes.training.data import CachedTokenizer, tokenize
    from attncraft.shapes.world import sample_scenes

    scenes = sample_scenes(150, seed=7)
    texts = [caption_scene(s, seed=i, omit=(0.0, 0.5, 0.9)[i % 3]) for i, s in enumerate(scenes)]
    texts += ["A  Polka-dot RED circle; it's 12 o'clock", ""]
    fast = CachedTokenizer()(texts, check=0)
    assert np.array_equal(fast, tokenize(texts))
    assert fast.shape == (len(texts), 77) and fast.dtype == np.int32


def test_scene_chunks_are_seeded_and_disjoint_from_evaluation():
    from attncraft.shapes.training.data import TRAIN_SEED_BASE, ChunkStream, SceneChunks

    ds = SceneChunks(8, caption_omits=(0.0, 0.5))
    a, b = ds.chunk(3), ds.chunk(3)
    assert [s.to_dict() for s in a.scenes] == [s.to_dict() for s in b.scenes]
    assert np.array_equal(a.tokens, b.tokens) and a.tokens.shape == (8, 2, 77)
    assert TRAIN_SEED_BASE >= 10_000_000
    stream = ChunkStream(ds, workers=0)
    assert stream.synchronous and [c.index for c in (stream.get(), stream.get())] == [0, 1]
    stream.close()


# ------------------------------------------------------------------------- warm starts, VAE loss
def test_edge_loss_is_the_mean_absolute_pixel_difference_of_the_error():
    from attncraft.shapes.training.vae import edge_l1

    ones = torch.ones(2, 1, 8, 8)
    assert float(edge_l1(torch.zeros(2, 3, 8, 8), ones)) == 0.0
    assert float(edge_l1(torch.full((2, 3, 8, 8), 0.7), ones)) == 0.0  # a uniform offset has no edges
    ramp = torch.arange(8.0).view(1, 1, 1, 8).expand(2, 3, 8, 8) * 0.25  # d/dx = 0.25, d/dy = 0
    assert float(edge_l1(ramp, ones)) == pytest.approx(0.125)
    checks = (torch.arange(8).view(8, 1) + torch.arange(8).view(1, 8)) % 2 * 2.0 - 1.0  # +-1 checkerboard
    assert float(edge_l1(checks.expand(2, 3, 8, 8), ones)) == pytest.approx(2.0)
    # a difference takes the larger weight of its two pixels: with column 3 weighing 3, the x
    # differences (8 rows x 7) weigh 1 except pairs (2,3) and (3,4): total 8 * (5 + 2 * 3) = 88
    w = torch.ones(1, 1, 8, 8)
    w[..., 3] = 3.0
    step = torch.zeros(1, 1, 8, 8)
    step[..., 4:] = 1.0  # one vertical edge, between columns 3 and 4 (no y differences)
    assert float(edge_l1(step, w)) == pytest.approx(0.5 * (3.0 * 8) / 88)


def test_warm_starts_keep_the_weights_they_start_from_and_record_them(trained, tmp_path):
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from attncraft.shapes.training.unet import train_unet
    from attncraft.shapes.training.vae import train_vae

    root, info = trained
    vae = train_vae(_run_args(tmp_path / "vae", init_dir=str(root / "shapes-vae"), max_steps=0), quiet=True)
    assert vae["steps"] == 0
    assert vae["initialised_from"]["folder"] == str(root / "shapes-vae")
    assert vae["initialised_from"]["steps"] == info["vae"]["steps"]
    before = AutoencoderKL.from_pretrained(str(root / "shapes-vae"), torch_dtype=torch.float32).eval()
    after = AutoencoderKL.from_pretrained(str(tmp_path / "vae"), torch_dtype=torch.float32).eval()
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():  # the latent re-normalisation is exact: decoding is unchanged
        rec_before = before.decode(before.encode(x).latent_dist.mean).sample
        rec_after = after.decode(after.encode(x).latent_dist.mean).sample
    torch.testing.assert_close(rec_after, rec_before, atol=2e-2, rtol=0)

    unet = train_unet(_run_args(tmp_path / "sd", init_dir=str(root / "shapes-sd"), max_steps=0,
                                clip_dir=str(root / "shapes-clip"), vae_dir=str(root / "shapes-vae")), quiet=True)
    assert unet["initialised_from"]["steps"] == info["unet"]["steps"]
    a = UNet2DConditionModel.from_pretrained(str(root / "shapes-sd" / "unet")).state_dict()
    b = UNet2DConditionModel.from_pretrained(str(tmp_path / "sd" / "unet")).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log = json.loads((tmp_path / "sd" / "training_log.json").read_text())
    assert log["run_args"]["init_dir"] == str(root / "shapes-sd")


def test_init_folder_accepts_a_model_or_a_pipeline_folder(trained, tmp_path):
    root, _ = trained
    assert common.init_folder(root / "shapes-sd", "unet") == root / "shapes-sd" / "unet"
    assert common.init_folder(root / "shapes-sd" / "vae", "vae") == root / "shapes-sd" / "vae"
    with pytest.raises(FileNotFoundError, match="config.json"):
        common.init_folder(tmp_path, "vae")


def test_learning_rate_override_from_the_command_line():
    from attncraft.shapes.training.__main__ import parse
    from attncraft.shapes.training.configs import get_configs

    ns = parse(["vae", "--out", "x", "--lr", "3e-4", "--init", "some/folder"])
    assert ns.lr == 3e-4 and ns.init_dir == "some/folder"
    cfg = get_configs("full").vae
    assert common.apply_overrides(cfg, common.RunArgs(lr=ns.lr)).lr == 3e-4
    assert common.apply_overrides(cfg, common.RunArgs()).lr == cfg.lr


# ------------------------------------------------------------------ relation-heavy fine-tune path
def test_scene_chunks_relation_share():
    from attncraft.shapes.captions import parse_caption
    from attncraft.shapes.training.data import SceneChunks

    for share, expect in ((1.0, True), (0.0, False)):
        chunk = SceneChunks(24, caption_omits=(0.0, 0.3), keep_text=True, relation=share).chunk(0)
        for scene, caps in zip(chunk.scenes, chunk.captions):
            if len(scene.objects) > 1:
                assert all(bool(parse_caption(c).relations) == expect for c in caps), caps
    assert SceneChunks(8).relation_share == 0.4  # the grammar's default


def test_finetune_config_is_full_with_the_warm_start_settings():
    from dataclasses import asdict

    from attncraft.shapes.training.configs import FINETUNE_UNET, get_configs

    full, fine = get_configs("full"), get_configs("finetune")
    changed = {k for k, v in asdict(fine.unet).items() if asdict(full.unet)[k] != v}
    assert changed == set(FINETUNE_UNET) and fine.unet.caption_relation > 0.4
    assert fine.eval == full.eval and fine.clip == full.clip and fine.vae == full.vae


def test_cpu_configs_are_their_gpu_twins_at_cpu_size():
    """finetune-text-cpu differs from finetune-text only in sizes (same learning rates, warm-ups, caption mix,
    EMA); motion-cpu is a fine-tune of a trained adapter; the CLI takes both, and the text path options."""
    from dataclasses import asdict

    from attncraft.shapes.training.__main__ import parse
    from attncraft.shapes.training.configs import get_configs

    text, cpu = asdict(get_configs("finetune-text").unet), asdict(get_configs("finetune-text-cpu").unet)
    sizes = {"batch", "pool", "chunk", "refresh_every", "workers", "pool_fill_limit_s", "probe_examples", "reserve_s",
             "log_every_s"}
    assert {k for k in text if text[k] != cpu[k]} <= sizes and cpu["train_text"] and cpu["batch"] == 64
    motion = get_configs("motion-cpu").motion
    assert motion.long_fraction == 0 and motion.lr < get_configs("full").motion.lr and motion.text_path is None
    ns = parse(["motion", "--config", "motion-cpu", "--text-path", "cross-kv", "--text-path-lr", "1e-4", "--out", "x"])
    assert (ns.config, ns.text_path, ns.text_path_lr) == ("motion-cpu", "cross-kv", 1e-4)
    assert parse(["unet", "--config", "finetune-text-cpu", "--out", "x"]).config == "finetune-text-cpu"


def test_mesh_cpu_config_is_full_mesh_at_cpu_size_and_the_frozen_trunk_is_a_flag():
    """mesh-cpu differs from full-mesh only in sizes; both train the whole vision tower by default (the shipped
    recipe); --train-vision-from sets the first trained vision layer (0: all of them, 5: the first mesh fine-tune's
    frozen trunk), and a negative index is a usage error."""
    from dataclasses import asdict

    from attncraft.shapes.training.__main__ import parse
    from attncraft.shapes.training.configs import get_configs

    full, cpu = asdict(get_configs("full-mesh").clip), asdict(get_configs("mesh-cpu").clip)
    sizes = {"batch", "warmup", "pool", "mesh_pool", "chunk", "workers", "mesh_workers", "mesh_refresh_every",
             "refresh_every", "pool_fill_limit_s", "reserve_s", "log_every_s"}
    assert {k for k in full if full[k] != cpu[k]} <= sizes and cpu["train_vision_from"] is None is full["train_vision_from"] and cpu["batch"] == 256
    assert cpu["mesh_fraction"] == full["mesh_fraction"] == 0.5 and cpu["lr"] == full["lr"]
    assert parse(["clip", "--config", "mesh-cpu", "--train-vision-from", "0", "--out", "x"]).train_vision_from == 0
    assert parse(["clip", "--config", "mesh-cpu", "--train-vision-from", "5", "--out", "x"]).train_vision_from == 5
    assert parse(["evaluate", "--config", "mesh-cpu", "--out", "x"]).train_vision_from is None
    with pytest.raises(SystemExit) as exc:
        parse(["clip", "--config", "mesh-cpu", "--train-vision-from", "-1", "--out", "x"])
    assert exc.value.code == 2


def test_a_vision_layer_past_the_tower_is_one_line_and_writes_nothing(tmp_path, capsys):
    from attncraft.shapes.models import SHAPES_CLIP_DIR
    from attncraft.shapes.training.__main__ import main

    out = tmp_path / "clip"
    assert main(["clip", "--config", "mesh-cpu", "--device", "cpu", "--init", str(SHAPES_CLIP_DIR),
                 "--train-vision-from", "9", "--out", str(out)]) == 2  # fmt: skip
    err = capsys.readouterr().err  # (beside transformers' loading bar)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--train-vision-from 9: the vision tower has 6 layers" in errors[0]
    assert "Traceback" not in err and not out.exists()


@pytest.mark.parametrize("stage,config", [("unet", "motion-cpu"), ("motion", "finetune-text"), ("unet", "cpu"),
                                          ("realcustom", "finetune"), ("vae", "full-mesh"), ("unet", "mesh-cpu")])
def test_a_config_of_another_stage_is_a_usage_error(stage, config, capsys):
    from attncraft.shapes.training.__main__ import parse

    with pytest.raises(SystemExit) as exc:
        parse([stage, "--config", config, "--out", "x"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert exc.value.code == 2 and f"--config {config} is a configuration of" in err and f"not of {stage}" in err


def test_relation_heavy_warm_start_trains_and_records_its_captions(trained, tmp_path):
    from dataclasses import replace

    from diffusers import UNet2DConditionModel

    from attncraft.shapes.training.configs import get_configs
    from attncraft.shapes.training.unet import train_unet

    root, _ = trained
    cfg = replace(get_configs("smoke").unet, caption_relation=0.9, caption_vertical=0.75, high_noise_share=0.5)
    info = train_unet(_run_args(tmp_path / "sd", init_dir=str(root / "shapes-sd"), max_steps=4,
                                clip_dir=str(root / "shapes-clip"), vae_dir=str(root / "shapes-vae")), cfg, quiet=True)
    assert info["steps"] == 4 and all(np.isfinite(info["loss_history"]))
    log = json.loads((tmp_path / "sd" / "training_log.json").read_text())
    assert log["captions"] == {"omits": list(cfg.caption_omits), "relation_share": 0.9, "vertical_share": 0.75}
    assert log["high_noise_share"] == 0.5
    assert log["initialised_from"]["folder"] == str(root / "shapes-sd" / "unet")
    a = UNet2DConditionModel.from_pretrained(str(root / "shapes-sd" / "unet")).state_dict()
    b = UNet2DConditionModel.from_pretrained(str(tmp_path / "sd" / "unet")).state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_cli_evaluate_relations(trained, tmp_path):
    from attncraft.shapes.training.__main__ import main
    from attncraft.shapes.training.evaluate import RELATION_EVAL_WORDS

    root, _ = trained
    folder = root / "shapes-sd"
    before = {p.name: p.read_bytes() for p in folder.rglob("*.json")}
    assert main(["evaluate", "--what", "relations", "--config", "smoke", "--sd", str(folder), "--relation-prompts",
                 "1", "--out", str(tmp_path), "--device", "cpu"]) == 0
    res = json.loads((tmp_path / "shapes_eval_relations.json").read_text())["relations"]
    assert list(res["words"]) == list(RELATION_EVAL_WORDS) and res["prompts_per_word"] == 1
    for row in res["words"].values():
        assert row["n"] == 1 and row["relation"] + row["reversed"] + row["neither"] == pytest.approx(1.0)
    assert "relations, word by word" in (tmp_path / "shapes_eval_relations.md").read_text()
    assert np.isfinite(res["flip_probe"]["vertical_ratio"]) and np.isfinite(res["flip_probe"]["horizontal_ratio"])
    assert {p.name: p.read_bytes() for p in folder.rglob("*.json")} == before  # the folder is left alone


def test_clip_mesh_fine_tune_from_a_trained_clip(trained, tmp_path):
    """--init + --mesh-fraction: the smoke CLIP fine-tuned on half mesh renders; the mesh tables are written."""
    from attncraft.shapes.training.clip import train_clip
    from attncraft.shapes.training.evaluate import eval_clip_mesh
    from attncraft.shapes.training.configs import get_configs

    from dataclasses import replace

    from transformers import CLIPModel

    root, _ = trained
    cfg = replace(get_configs("smoke").clip, train_vision_from=1)  # the smoke vision tower has one layer
    info = train_clip(_run_args(tmp_path / "clip-mesh", init_dir=str(root / "shapes-clip"), mesh_fraction=0.5,
                                max_steps=6), cfg, quiet=True)
    assert info["steps"] == 6 and info["mesh_fraction"] == 0.5 and info["mesh_pool"]["meshes_added"] > 0
    log = json.loads((tmp_path / "clip-mesh" / "training_log.json").read_text())
    assert log["initialised_from"]["folder"] == str(root / "shapes-clip") and log["frozen_vision"]["unchanged"]
    # the frozen trunk's states (what RealCustom reads: layer -2) are those of the CLIP it started from
    old, new = (CLIPModel.from_pretrained(str(d), local_files_only=True, dtype=torch.float32)
                for d in (root / "shapes-clip", tmp_path / "clip-mesh"))
    pixels = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        a, b = (m.vision_model(pixel_values=pixels, output_hidden_states=True).hidden_states[-2] for m in (old, new))
    assert torch.equal(a, b)
    assert not torch.equal(old.visual_projection.weight, new.visual_projection.weight)
    # --train-vision-from 0 overrides the config's frozen trunk: every vision layer moves, nothing is recorded frozen
    info = train_clip(_run_args(tmp_path / "clip-open", init_dir=str(root / "shapes-clip"), mesh_fraction=0.5,
                                max_steps=3, train_vision_from=0), cfg, quiet=True)
    opened = CLIPModel.from_pretrained(str(tmp_path / "clip-open"), local_files_only=True, dtype=torch.float32)
    assert "frozen_vision" not in json.loads((tmp_path / "clip-open" / "training_log.json").read_text())
    assert not torch.equal(old.vision_model.embeddings.patch_embedding.weight,
                           opened.vision_model.embeddings.patch_embedding.weight)
    ecfg = get_configs("smoke").eval
    ecfg.mesh_scenes = 12
    res = eval_clip_mesh(tmp_path / "clip-mesh", ecfg, torch.device("cpu"))
    assert set(res["conditions"]) == {"render", "train", "xmesh"}
    assert set(res["conditions"]["train"]["accuracy"]) == {"color", "shape", "pattern", "joint"}


def test_unet_warm_start_keeps_the_text_encoder_its_unet_was_trained_with(trained, tmp_path):
    """A CLIP whose text tower moved (the mesh fine-tune trains it) does not reach a fine-tuned SD."""
    from transformers import CLIPTextModel

    from attncraft.shapes.training.clip import build_clip_model
    from attncraft.shapes.training.configs import get_configs
    from attncraft.shapes.training.unet import train_unet

    root, _ = trained
    other = build_clip_model(get_configs("smoke").clip, seed=5)  # another text tower, same shapes
    other.save_pretrained(tmp_path / "other-clip")
    info = train_unet(_run_args(tmp_path / "sd", init_dir=str(root / "shapes-sd"), max_steps=0,
                                clip_dir=str(tmp_path / "other-clip"), vae_dir=str(root / "shapes-vae")), quiet=True)
    assert info["steps"] == 0
    log = json.loads((tmp_path / "sd" / "training_log.json").read_text())
    assert log["text_encoder_from"] == str(root / "shapes-sd" / "text_encoder")
    before = CLIPTextModel.from_pretrained(str(root / "shapes-sd" / "text_encoder"))
    after = CLIPTextModel.from_pretrained(str(tmp_path / "sd" / "text_encoder"))
    a, b = before.state_dict(), after.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    emb = after.get_input_embeddings().weight
    assert not torch.equal(other.text_model.embeddings.token_embedding.weight.half().float(), emb)


def test_sd_evaluation_cut_short_keeps_the_folders_sampler(trained, tmp_path):
    """Out of time after the first sampler, the evaluation has compared nothing: it evaluates at the folder's own
    sampler and guidance and writes none of the folder's files (a job beside it may read them)."""
    import shutil
    import time
    from dataclasses import replace

    from attncraft.shapes.models import SD_DEFAULTS_FILE, shapes_scheduler
    from attncraft.shapes.training import common
    from attncraft.shapes.training.configs import get_configs
    from attncraft.shapes.training.evaluate import Scorer, eval_sd, to_markdown

    root, _ = trained
    folder = tmp_path / "sd"
    shutil.copytree(root / "shapes-sd", folder)
    shapes_scheduler("DDIMScheduler").save_pretrained(str(folder / "scheduler"))
    index = json.loads((folder / "model_index.json").read_text())
    index["scheduler"] = ["diffusers", "DDIMScheduler"]
    (folder / "model_index.json").write_text(json.dumps(index))
    (folder / SD_DEFAULTS_FILE).write_text(json.dumps({"guidance_scale": 7.5, "num_inference_steps": 4}))
    before = {p: p.read_bytes() for p in folder.rglob("*.json")}
    cfg = get_configs("smoke").eval
    assert len(cfg.sweep_schedulers) * len(cfg.sweep_guidance) > 1
    spent = common.Budget(0.01, 0.0, t0=time.time() - 60.0)  # already over
    scorer = Scorer(0)
    try:
        res = eval_sd(folder, replace(cfg, sd_one=1, sd_two=1), torch.device("cpu"), scorer, tmp_path / "out", spent,
                      say=lambda m: None)
    finally:
        scorer.close()
    assert len(res["sweep"]["results"]) == 1 and res["sweep"]["complete"] is False
    assert res["default"]["scheduler"] == "DDIMScheduler" and res["default"]["guidance_scale"] == 7.5
    assert res["default"]["from"] == "folder (sweep cut short)"
    assert {p: p.read_bytes() for p in folder.rglob("*.json")} == before
    assert "guidance 7.5 (the folder's own: the sweep was cut short)" in to_markdown({"sd": res})
