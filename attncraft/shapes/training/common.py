"""Shared pieces of the Shapes trainers: run settings, wall-clock budget, LR schedule, EMA, logging."""

from __future__ import annotations

import json
import math
import os
import platform
import random
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

#: Wall-clock time at which the command started (set by ``__main__`` before the heavy imports, so a
#: command's budget includes them). None when the trainers are called in-process (tests, scripts):
#: each budget then counts from its own start, not from whenever this module was first imported.
PROCESS_T0: float | None = None


@dataclass
class RunArgs:
    """What every stage receives from the command line."""

    config: str = "smoke"  # "smoke" | "full"
    out: str = "outputs/shapes"
    minutes: float = 1.0  # wall-clock budget of the whole command, start-up and saving included
    device: str = "cpu"
    seed: int = 0
    max_steps: int | None = None  # stop after this many steps (else only the time budget stops)
    workers: int | None = None  # scene-generation worker processes (None: the config's value)
    clip_dir: str | None = None  # unet/evaluate: the trained shapes CLIP folder
    vae_dir: str | None = None  # unet: the trained VAE folder
    sd_dir: str | None = None  # evaluate / motion / ctgm: the shapes SD folder
    adapter_dir: str | None = None  # evaluate --what motion / ctgm: the motion adapter; realcustom-eval: the checkpoint
    prompts: int | None = None  # evaluate --what motion: at most this many prompts per set (a small check)
    ctgm_mode: str | None = None  # ctgm: the CTGM mode (None: the config's)
    ctgm_sites: str | None = None  # ctgm: "all" or "part" (None: the config's)
    what: str = "all"  # evaluate: clip | sd | all | motion | relations
    relation_prompts: int | None = None  # evaluate: prompts per relation word (None: the config's)
    compile: bool = False
    init_dir: str | None = None  # vae/unet: warm start from these weights
    lr: float | None = None  # peak learning rate (None: the config's)
    mesh_fraction: float | None = None  # clip: share of mesh renders per batch (None: the config's)
    train_text: bool = False  # unet: train the text encoder jointly (as the config's train_text)
    text_lr: float | None = None  # unet: the text encoder's peak learning rate (None: the config's)
    text_path: str | None = None  # motion: train a motion text path of this kind (None: the config's)
    text_path_lr: float | None = None  # motion: its peak learning rate (None: the config's)
    contrast: float | None = None  # motion / unet: weight of the caption-contrast term (None: the config's, 0 = off)
    contrast_min_t: int | None = None  # motion: the lowest timestep the contrast covers (None: the config's, 0 = all)
    frame_deviation_weight: float | None = None  # motion: weight of the v-error's change over frames (None: the config's, 1)
    motion_region_weight: float | None = None  # motion: weight of where the clip changes (None: the config's, 0 = off)
    train_vision_from: int | None = None  # clip: first trained vision layer (None: the config's; 0: all trained)
    argv: list[str] = field(default_factory=lambda: list(sys.argv))


SWEEP_CUT_SHORT = "folder (sweep cut short)"
"""Where an evaluation's default came from when its sweep ran out of time: the folder's own saved one."""


def defaults_kept(path: Path | None, complete: bool) -> dict | None:
    """A folder's saved defaults (its ``attncraft_defaults.json``) when a sweep cut short by the time budget must
    not replace them: a partial sweep has not compared the settings, so the evaluation runs at the folder's own and
    writes nothing there (another job may be reading the folder). ``None``: the sweep decides, and is saved."""
    if complete or path is None or not path.is_file():
        return None
    saved = json.loads(path.read_text())
    return saved if "guidance_scale" in saved else None


class Budget:
    """The command's wall-clock budget: training stops ``reserve_s`` before the end, to save."""

    def __init__(self, minutes: float, reserve_s: float, t0: float | None = None):
        self.t0 = t0 if t0 is not None else PROCESS_T0 if PROCESS_T0 is not None else time.time()
        self.end = self.t0 + 60.0 * minutes
        self.reserve_s = reserve_s
        self.train_t0 = time.time()

    def start_training(self) -> None:
        self.train_t0 = time.time()

    @property
    def train_deadline(self) -> float:
        return self.end - self.reserve_s

    def train_fraction(self) -> float:
        """Fraction of the training window elapsed (0..1)."""
        span = max(1e-6, self.train_deadline - self.train_t0)
        return min(1.0, max(0.0, (time.time() - self.train_t0) / span))

    def time_up(self) -> bool:
        return time.time() >= self.train_deadline

    def elapsed(self) -> float:
        return time.time() - self.t0


def lr_at(step: int, frac: float, peak: float, warmup: int, final_ratio: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine from ``peak`` to ``final_ratio * peak``
    over the *fraction of the budget* ``frac`` (so the schedule fits any steps/s)."""
    warm = min(1.0, (step + 1) / max(1, warmup))
    cos = final_ratio + (1.0 - final_ratio) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, frac)))
    return peak * warm * cos


def progress_fraction(step: int, max_steps: int | None, budget: Budget) -> float:
    f = budget.train_fraction()
    if max_steps:
        f = max(f, step / max_steps)
    return min(1.0, f)


class PowerEMA:
    """Power-function EMA (Karras et al. 2024, EDM2): ``beta_t = (1 - 1/t)^(gamma + 1)``.

    Its averaging window is a fixed *fraction* of training so far (``gamma=6.94`` -> sigma_rel 0.10),
    which suits a wall-clock budget whose number of steps is unknown in advance.
    """

    def __init__(self, model: torch.nn.Module, gamma: float = 6.94):
        self.gamma = gamma
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.shadow = [p.detach().float().clone() for p in self.params]
        self.t = 0

    @torch.no_grad()
    def update(self) -> None:
        self.t += 1
        beta = (1.0 - 1.0 / self.t) ** (self.gamma + 1.0) if self.t > 1 else 0.0
        src = [p.detach().float() if p.dtype != torch.float32 else p.detach() for p in self.params]
        torch._foreach_lerp_(self.shadow, src, 1.0 - beta)

    @torch.no_grad()
    def copy_to(self, model: torch.nn.Module) -> None:
        params = [p for p in model.parameters() if p.requires_grad] or list(model.parameters())
        for p, s in zip(params, self.shadow):
            p.copy_(s.to(p.dtype))


def apply_overrides(cfg: Any, args: RunArgs) -> Any:
    """The stage config with the command line's overrides (``--lr``) applied."""
    return replace(cfg, lr=args.lr) if args.lr is not None else cfg


def init_folder(path: str | Path, component: str) -> Path:
    """The folder holding ``component``'s weights for a warm start: ``path`` itself when it is that
    model's folder (a ``config.json`` beside the weights), else ``path/component`` (a pipeline folder)."""
    path = Path(path)
    if (path / "config.json").is_file():
        return path
    if (path / component / "config.json").is_file():
        return path / component
    raise FileNotFoundError(f"--init {path}: neither it nor {path / component} holds a config.json")


def init_provenance(path: str | Path | None, component: str) -> dict[str, Any] | None:
    """Where a warm-started model came from: the folder, and the steps/examples/command of the run
    that made it (from its ``training_log.json``, when there is one)."""
    if not path:
        return None
    folder = init_folder(path, component)
    info: dict[str, Any] = {"folder": str(folder)}
    for log_path in (folder / "training_log.json", folder.parent / "training_log.json"):
        if log_path.is_file():
            prev = json.loads(log_path.read_text())
            info.update({k: prev[k] for k in ("stage", "command", "steps", "examples_seen", "train_seconds",
                                              "initialised_from") if k in prev})
            break
    return info


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def setup_device(device: str) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    return dev


@dataclass
class Stage:
    """What every trainer sets up first: output folder, device, time budget, step cap, workers, logger."""

    out: Path
    device: torch.device
    budget: Budget
    max_steps: int | None
    workers: int
    say: Any

    def unpack(self) -> tuple[Path, torch.device, Budget, int | None, int, Any]:
        return self.out, self.device, self.budget, self.max_steps, self.workers, self.say


def start_stage(name: str, args: RunArgs, cfg: Any, quiet: bool = False) -> Stage:
    """Seed, pick the device, start the wall-clock budget, and resolve per-run overrides of ``cfg``."""
    device = setup_device(args.device)
    budget = Budget(args.minutes, cfg.reserve_s)
    seed_everything(args.seed)
    max_steps = args.max_steps if args.max_steps is not None else cfg.max_steps
    workers = cfg.workers if args.workers is None else args.workers
    say = (lambda m: None) if quiet else (lambda m: print(f"[{name}] {m}", flush=True))
    return Stage(Path(args.out), device, budget, max_steps, workers, say)


class TrainingSteps:
    """The training loop's clock: ``for step, lr in steps`` until ``max_steps`` or the budget ends.

    Starts the training timer, sets each step's learning rate on ``optimizer`` (warm-up, then cosine
    over the steps or the wall-clock window), and counts the finished steps in :attr:`done`. A param
    group with its own ``peak_lr`` (and ``warmup``) follows the same cosine from its own peak after its
    own warm-up; the yielded ``lr`` is the config's (the groups without their own peak).
    """

    def __init__(self, budget: Budget, max_steps: int | None, cfg: Any, optimizer):
        self.budget, self.max_steps, self.cfg, self.optimizer = budget, max_steps, cfg, optimizer
        self.done = 0
        self.lr = 0.0

    def __iter__(self):
        self.budget.start_training()
        while not ((self.max_steps is not None and self.done >= self.max_steps) or self.budget.time_up()):
            frac = progress_fraction(self.done, self.max_steps, self.budget)
            self.lr = lr_at(self.done, frac, self.cfg.lr, self.cfg.warmup, self.cfg.final_lr_ratio)
            for group in self.optimizer.param_groups:
                group["lr"] = self.lr if "peak_lr" not in group else lr_at(
                    self.done, frac, group["peak_lr"], group.get("warmup", self.cfg.warmup), self.cfg.final_lr_ratio)
            yield self.done, self.lr
            self.done += 1

    def finish(self, log: LossLog) -> float:
        """Print and flush the last losses; return the seconds spent training."""
        log.maybe_print(self.done, self.lr, self.budget, force=True)
        log.flush()
        return time.time() - self.budget.train_t0


def descend(optimizer, loss: torch.Tensor, params, grad_clip: float | None, ema: PowerEMA | None = None) -> None:
    """One optimiser step on ``loss``: clear the gradients, back-propagate, clip their norm at
    ``grad_clip`` (None: no clipping), step, and update ``ema``."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    if ema is not None:
        ema.update()


def run_stats(step: int, batch: int, train_s: float, budget: Budget) -> dict[str, Any]:
    """Steps, examples and speed of a finished run, as recorded in ``training_log.json``."""
    return {
        "steps": step,
        "batch": batch,
        "examples_seen": step * batch,
        "train_seconds": round(train_s, 1),
        "wall_seconds": round(budget.elapsed(), 1),
        "steps_per_second": round(step / max(train_s, 1e-9), 2),
    }


def v_targets(z0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, alphas_cumprod: torch.Tensor):
    """Noisy input, v-prediction target and SNR of clean latents ``z0`` (any shape, batch first) at
    timesteps ``t``: ``x_t = sqrt(a) z0 + sqrt(1 - a) eps``, ``v = sqrt(a) eps - sqrt(1 - a) z0``."""
    a_bar = alphas_cumprod[t]
    shape = (-1,) + (1,) * (z0.ndim - 1)
    sa, sb = a_bar.sqrt().view(shape), (1.0 - a_bar).sqrt().view(shape)
    return sa * z0 + sb * noise, sa * noise - sb * z0, a_bar / (1.0 - a_bar)


def min_snr_v_weight(snr: torch.Tensor, gamma: float) -> torch.Tensor:
    """Loss weight of a v-MSE: the x0-MSE weight ``snr + 1`` clipped at ``gamma``, i.e.
    ``min(snr + 1, gamma) / (snr + 1)`` (full weight on the high-noise steps)."""
    return torch.clamp(snr + 1.0, max=gamma) / (snr + 1.0)


def caption_contrast(true_loss: torch.Tensor, swapped_loss: torch.Tensor, margin: float,
                     mask: torch.Tensor | None = None) -> torch.Tensor:
    """The caption-contrast term of the motion and UNet stages: mean over the rows of ``mask`` (all
    when None) of ``relu((1 + margin) * true - swapped) / true.detach()``, for per-example losses
    ``true`` (the example's caption) and ``swapped`` (the caption with what is to be read turned the
    other way: the motions, or the relation words), same noise and timestep. Zero where the
    swapped caption already costs ``1 + margin`` times the true one; scale-free across timesteps (the
    detached denominator). 0 when no row counts."""
    gap = torch.relu((1.0 + margin) * true_loss - swapped_loss) / true_loss.detach().clamp(min=1e-12)
    if mask is None:
        return gap.mean()
    weight = mask.to(gap.dtype)  # a weighted mean, not an index: no host sync on an accelerator
    return (gap * weight).sum() / weight.sum().clamp(min=1.0)


def with_contrast(cfg: Any, args: RunArgs, num_timesteps: int = 1000) -> Any:
    """``cfg`` (a motion or UNet config) with ``--contrast`` (and, for motion, ``--contrast-min-t``)
    applied; a weight below 0 or a lowest timestep outside ``[0, num_timesteps)`` is refused."""
    from attncraft.errors import InputError

    if args.contrast is not None:
        cfg = replace(cfg, contrast=float(args.contrast))
    if cfg.contrast < 0:
        raise InputError(f"--contrast must be >= 0, not {cfg.contrast}", "pass a weight such as 0.5, or 0 for off")
    if args.contrast_min_t is not None:
        if not hasattr(cfg, "contrast_min_t"):
            raise InputError("--contrast-min-t is an option of the motion stage", "leave it out for this stage")
        cfg = replace(cfg, contrast_min_t=int(args.contrast_min_t))
    low = getattr(cfg, "contrast_min_t", 0)
    if not 0 <= low < num_timesteps:
        raise InputError(f"--contrast-min-t must be in [0, {num_timesteps}), not {low}",
                         "pass a timestep such as 800 (the high-noise fifth), or 0 for all timesteps")
    return cfg


def contrast_rows(t: torch.Tensor, min_t: int, num_timesteps: int, slack: float = 1.5) -> torch.Tensor:
    """Indices of the batch rows the contrast's reversed-caption pass runs on: all rows when ``min_t``
    is 0; otherwise the ``ceil(slack * B * (T - min_t) / T)`` rows of largest timestep (at least 1, at
    most B). A fixed count for a given batch size (no host sync, one compiled shape): with uniform
    timesteps the rows at or above ``min_t`` are ``B * (T - min_t) / T`` on average, so the slack
    covers nearly all of them, and the rows below ``min_t`` among the chosen are masked out by the
    caller. The main loss keeps every row and its uniform timesteps."""
    B = t.shape[0]
    if min_t <= 0:
        return torch.arange(B, device=t.device)
    k = min(B, max(1, math.ceil(slack * B * (num_timesteps - min_t) / num_timesteps)))
    return torch.topk(t, k, sorted=False).indices


class ContrastLog:
    """What a stage records of its contrast term: its value and the share of the batch it covered,
    every 50 steps (each reading is a host sync, so only now and then)."""

    every = 50

    def __init__(self):
        self.readings: list[tuple[float, float]] = []

    def add(self, step: int, term: torch.Tensor, rows: torch.Tensor, batch: int | None = None) -> None:
        """``rows``: the rows the term counted, of a batch of ``batch`` (default: ``len(rows)``)."""
        if step % self.every == 0:
            self.readings.append((float(term.detach()), float(rows.float().sum()) / (batch or rows.numel())))

    def record(self, cfg: Any) -> dict[str, Any] | None:
        """The training log's entry (None when the term is off)."""
        if cfg.contrast <= 0:
            return None
        shares = [r for _, r in self.readings]
        return {"weight": cfg.contrast, "margin": cfg.contrast_margin, "min_t": getattr(cfg, "contrast_min_t", 0),
                "term_every_50_steps": [round(t, 5) for t, _ in self.readings],
                "rows_share_mean": sum(shares) / len(shares) if shares else None}  # fmt: skip


class CompiledOrEager:
    """``model`` under ``torch.compile`` when asked; if compiling fails on the first call, the run
    goes on eagerly (a compiler failure must not cost a GPU run). :attr:`compiled` says which ran."""

    def __init__(self, model: torch.nn.Module, compile: bool, say=print):
        self.model = model
        self.fn = torch.compile(model) if compile else model
        self.say = say
        self.calls = 0

    @property
    def compiled(self) -> bool:
        return self.fn is not self.model

    def __call__(self, *args: Any, **kwargs: Any):
        self.calls += 1
        try:
            return self.fn(*args, **kwargs)
        except Exception as exc:
            if not self.compiled or self.calls > 1:
                raise
            self.say(f"torch.compile failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); training eagerly")
            self.fn = self.model
            return self.fn(*args, **kwargs)


def autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def adamw(params, lr: float, weight_decay: float, device: torch.device, betas=(0.9, 0.99)):
    kw: dict[str, Any] = {}
    if device.type == "cuda":
        kw["fused"] = True
    return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay, eps=1e-8, **kw)


def hardware(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "device": str(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    else:
        info["cpu"] = platform.processor() or platform.machine()
        info["torch_threads"] = torch.get_num_threads()
    try:
        import diffusers
        import transformers

        info["diffusers"] = diffusers.__version__
        info["transformers"] = transformers.__version__
    except Exception:  # pragma: no cover
        pass
    return info


class LossLog:
    """Per-step losses kept on the device (no sync per step), printed every ``every_s`` seconds."""

    def __init__(self, name: str, every_s: float = 15.0, quiet: bool = False):
        self.name = name
        self.every_s = every_s
        self.quiet = quiet
        self.pending: list[torch.Tensor] = []
        self.history: list[float] = []
        self.last_print = time.time()
        self.last_step = 0
        self.t_start = time.time()

    def add(self, loss: torch.Tensor) -> None:
        self.pending.append(loss.detach().float())

    def flush(self) -> None:
        if self.pending:
            self.history.extend(torch.stack(self.pending).cpu().tolist())
            self.pending = []

    def maybe_print(self, step: int, lr: float, budget: Budget, extra: str = "", force: bool = False) -> None:
        now = time.time()
        if not force and now - self.last_print < self.every_s:
            return
        self.flush()
        n = step - self.last_step
        rate = n / max(1e-9, now - self.last_print)
        recent = self.history[-max(1, n):] if n else self.history[-1:]
        mean = sum(recent) / max(1, len(recent))
        if not self.quiet:
            print(
                f"[{self.name}] step {step:6d}  loss {mean:.5f}  {rate:6.1f} steps/s  lr {lr:.2e}  "
                f"t {budget.elapsed():6.1f}s {extra}",
                flush=True,
            )
        self.last_print, self.last_step = now, step


def write_training_log(out: Path, stage: str, args: RunArgs, info: dict[str, Any]) -> dict[str, Any]:
    log = {
        "stage": stage,
        "config": args.config,
        "seed": args.seed,
        "budget_minutes": args.minutes,
        "command": " ".join(["python", "-m", "attncraft.shapes.training", *args.argv[1:]]),
        "argv": args.argv,
        "run_args": {k: v for k, v in asdict(args).items() if k != "argv"},
        "hardware": hardware(torch.device(args.device)),
        **info,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "training_log.json").write_text(json.dumps(log, indent=2) + "\n")
    return log


def folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def summarize_losses(history: list[float], k: int = 20) -> dict[str, float]:
    if not history:
        return {}
    k = max(1, min(k, len(history) // 2 or 1))
    return {
        "first_loss_mean": sum(history[:k]) / k,
        "final_loss_mean": sum(history[-k:]) / k,
        "final_loss": history[-1],
    }
