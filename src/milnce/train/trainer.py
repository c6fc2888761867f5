"""``train``: MIL-NCE training and fine-tuning of the S3D text-video model, on one process or under
``torchrun`` (DDP), with AMP, gradient accumulation, exact resume and held-out retrieval metrics."""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..atomic import atomic_file
from ..errors import TrainingError, UsageError
from ..model import S3D
from ..printable import show_path
from ..text import Tokenizer, load_vocab
from ..weights import CheckpointError
from .badsamples import BadSamples
from .checkpoint import latest_checkpoint, load_training_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import RESUME_MAY_CHANGE, RESUME_MAY_REPLAN, TrainConfig, load_config_file
from .data import EvalClips, eval_pairs, worker_init
from .dist import DistContext, convert_sync_batchnorm, init_distributed
from .loaders import find_data, gather_positions, make_loader, note_position
from .report import Metrics, evaluate, retrieval_metrics
from .step import cached_step, check_finite, plain_step, set_train_mode

__all__ = ["train", "resolve_config", "build_network", "init_weights", "load_word_vectors", "lr_at",
           "retrieval_metrics", "TwoTower"]


# ----------------------------------------------------------------------------- configuration

def resolve_config(out: str | os.PathLike[str], overrides: dict[str, Any] | None = None,
                   config_file: str | None = None, resume: bool = False) -> TrainConfig:
    """The run's settings: defaults < ``config_file`` < ``overrides``; with ``resume`` the run's
    saved ``config.json`` is the base and only the settings in ``RESUME_MAY_CHANGE`` may differ."""
    out = Path(out)
    given = {k: v for k, v in (load_config_file(config_file) if config_file else {}).items() if v is not None}
    given.update({k: v for k, v in (overrides or {}).items() if v is not None})
    saved_path = out / "config.json"
    has_ckpt = latest_checkpoint(out) is not None
    if not resume and (has_ckpt or saved_path.exists()):
        raise UsageError(f"{out} already holds a training run; pass --resume to continue it, or choose a new --out")
    if resume and saved_path.is_file():
        try:
            saved = TrainConfig.from_dict(json.loads(saved_path.read_text()), str(saved_path))
        except json.JSONDecodeError as exc:
            raise UsageError(f"{saved_path}: not valid JSON ({exc})") from None
        wanted = TrainConfig.from_dict({**saved.to_dict(), **given}, "settings")
        changed = [f.name for f in fields(TrainConfig)
                   if f.name not in RESUME_MAY_CHANGE | RESUME_MAY_REPLAN
                   and getattr(wanted, f.name) != getattr(saved, f.name)]
        if changed:
            detail = ", ".join(f"{k}: {getattr(saved, k)!r} -> {getattr(wanted, k)!r}" for k in changed)
            raise UsageError(f"cannot resume {out} with different settings ({detail}); "
                             f"only {', '.join(sorted(RESUME_MAY_CHANGE | RESUME_MAY_REPLAN))} may change")
        return wanted.validate()
    cfg = TrainConfig.from_dict(given, "settings")
    if cfg.schedule_steps is None:
        cfg = cfg.with_(schedule_steps=cfg.steps)
    return cfg.validate()


# ----------------------------------------------------------------------------- model

class TwoTower(nn.Module):
    """Both towers in one module (so DDP synchronises both): ``(video, ids) -> (V, T)``."""

    def __init__(self, net: S3D) -> None:
        super().__init__()
        self.net = net

    def forward(self, video: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net(video)["video_embedding"], self.net.text_module.encode_ids(ids)


def init_weights(net: S3D, word_std: float = 1.0) -> None:
    """Initialise for training from scratch: He-normal convolutions (activations keep their scale
    through the depth, so eval-mode outputs do not vanish before BN statistics exist), unit BN,
    random unit-variance word vectors (padding row 0 zero)."""
    for m in net.modules():
        if isinstance(m, nn.Conv3d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm3d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    emb = net.text_module.word_embd.weight
    with torch.no_grad():
        emb.normal_(0.0, word_std)
        emb[0].zero_()


def load_word_vectors(path: str | os.PathLike[str], vocab_size: int) -> torch.Tensor:
    """A word2vec matrix from ``.npy`` or ``.pth``: ``vocab_size`` x D (row 0 = padding), or
    ``vocab_size - 1`` x D (a zero padding row is prepended)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UsageError(f"word vectors file not found: {path}")
    if path.endswith(".npy"):
        try:
            arr = torch.from_numpy(np.load(path, allow_pickle=False).astype(np.float32))
        except ValueError as exc:
            raise UsageError(f"{path}: not a plain numeric .npy array ({exc})") from None
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise UsageError(f"{path}: cannot read word vectors ({str(exc).splitlines()[0][:160]})") from None
        if isinstance(obj, dict):
            mats = [v for v in obj.values() if isinstance(v, torch.Tensor) and v.ndim == 2]
            if len(mats) != 1:
                raise UsageError(f"{path}: expected one 2-D tensor of word vectors")
            obj = mats[0]
        if not isinstance(obj, torch.Tensor):
            raise UsageError(f"{path}: expected a tensor of word vectors, got {type(obj).__name__}")
        arr = obj.float()
    if arr.ndim != 2:
        raise UsageError(f"{path}: word vectors must be a 2-D matrix, got shape {tuple(arr.shape)}")
    if arr.shape[0] == vocab_size - 1:
        arr = torch.cat((torch.zeros(1, arr.shape[1]), arr))
    if arr.shape[0] != vocab_size:
        raise UsageError(f"{path}: {arr.shape[0]} word vectors for a vocabulary of {vocab_size - 1} words "
                         f"(expected {vocab_size} rows including padding, or {vocab_size - 1})")
    if not bool(torch.isfinite(arr).all()):
        raise UsageError(f"{path}: word vectors contain NaN or inf")
    return arr


def build_network(cfg: TrainConfig, data_dir: Path | None) -> tuple[S3D, Tokenizer, str]:
    """The network to train (from scratch or ``cfg.init``), its tokenizer and a description."""
    from ..weights import load_checkpoint

    if cfg.init:
        from ..api import resolve_files

        wpath, vpath, _ = resolve_files(cfg.init, cfg.vocab, download=True)
        sd, spec = load_checkpoint(wpath)
        if cfg.space_to_depth is not None and cfg.space_to_depth != spec.space_to_depth:
            raise UsageError(f"--weights {cfg.init} is a space_to_depth={spec.space_to_depth} network; "
                             f"it cannot be trained as space_to_depth={cfg.space_to_depth}")
        tokenizer = Tokenizer(load_vocab(vpath))  # type: ignore[arg-type]
        if tokenizer.vocab_size != spec.vocab_size:
            raise UsageError(f"vocabulary {vpath} has {len(tokenizer)} words but {cfg.init} has "
                             f"{spec.vocab_size - 1}; they do not belong together")
        net = S3D(tokenizer, spec.embed_dim, space_to_depth=spec.space_to_depth)
        net.load_state_dict(sd, strict=True)
        what = f"fine-tuning {cfg.init}"
    else:
        vocab = cfg.vocab or (str(data_dir / "vocab.npy") if data_dir is not None and (data_dir / "vocab.npy").is_file() else None)
        if vocab is None:
            raise UsageError("no vocabulary: pass --vocab FILE.npy (or put vocab.npy in the data folder, or use --weights)")
        tokenizer = Tokenizer.from_file(vocab)
        torch.manual_seed(cfg.seed)
        net = S3D(tokenizer, 512, space_to_depth=True if cfg.space_to_depth is None else cfg.space_to_depth)
        init_weights(net)
        what = "training from scratch"
    if cfg.word2vec:
        with torch.no_grad():
            net.text_module.word_embd.weight.copy_(load_word_vectors(cfg.word2vec, tokenizer.vocab_size))
    net.text_module.word_embd.weight.requires_grad_(not cfg.freeze_word_embd)
    return net, tokenizer, what


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of optimiser step ``step`` (0-based): linear warm-up, then cosine to ``min_lr``."""
    warm = min(cfg.warmup_steps, cfg.horizon)
    if step >= cfg.horizon:  # past the horizon: the end of the curve
        return cfg.min_lr
    if step < warm:
        return cfg.lr * (step + 1) / warm
    span = max(1, cfg.horizon - warm)
    t = min(1.0, (step - warm) / span)
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * t))


# ----------------------------------------------------------------------------- training

def _autocast_factory(device: torch.device, precision: str):  # type: ignore[no-untyped-def]
    if precision in ("fp32", "fp64"):
        return contextlib.nullcontext
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast(device.type, dtype=dtype)


def _log(ctx: DistContext, msg: str) -> None:
    """A line on stderr from the main process, above the progress bar when there is one (not glued to it)."""
    if ctx.is_main:
        from tqdm import tqdm

        tqdm.write(msg, file=sys.stderr)
        sys.stderr.flush()


def _restore(net: S3D, state: dict[str, Any], path: Path) -> None:
    """Load a training checkpoint's weights, with a one-line error for a foreign shape."""
    sd = state.get("state_dict")
    if not isinstance(sd, dict):
        raise CheckpointError(f"{path}: the training checkpoint has no state_dict")
    own = net.state_dict()
    for k, v in sd.items():
        if k in own and (not isinstance(v, torch.Tensor) or tuple(v.shape) != tuple(own[k].shape)):
            got = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
            raise CheckpointError(f"{path}: {k} has shape {got}, this run's network has {tuple(own[k].shape)}; "
                                  "the checkpoint belongs to another network")
    try:
        net.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: does not fit this run's network ({str(exc).splitlines()[0][:200]})") from None


def _replan(ctx: DistContext, cfg: TrainConfig, state: dict[str, Any] | None, start: int) -> dict[str, Any] | None:
    """Say (and return a metrics record) when a resumed run changes its cosine horizon, and warn
    when the run goes past its horizon."""
    rec = None
    old = (state or {}).get("config", {}).get("schedule_steps") if state is not None else None
    if state is not None and old is not None and old != cfg.horizon:
        before, after = lr_at(max(0, start - 1), cfg.with_(schedule_steps=int(old))), lr_at(start, cfg)
        rec = {"step": start, "kind": "schedule", "schedule_steps": cfg.horizon, "previous_schedule_steps": int(old),
               "lr_before": before, "lr_after": after}
        _log(ctx, f"milnce train: the cosine horizon changes from {old} to {cfg.horizon} steps at step {start}: the "
                  f"learning rate continues on the new curve ({before:.3g} -> {after:.3g}); this run is no longer "
                  "bit-identical to an uninterrupted one")
    if cfg.steps > cfg.horizon:
        _log(ctx, f"milnce train: warning: --steps {cfg.steps} goes past the cosine horizon of {cfg.horizon} steps: "
                  f"steps {cfg.horizon + 1}..{cfg.steps} train at --min-lr {cfg.min_lr:g}; pass --schedule-steps "
                  f"{cfg.steps} to stretch the curve")
    return rec


@dataclass
class _Parts:
    """What ``train`` trains: the network (bare, in its two-tower wrapper, DDP-wrapped), the
    optimiser state, and where a resumed run stands."""

    net: S3D
    inner: nn.Module
    model: nn.Module
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    scaler: Any
    tokenizer: Tokenizer
    what: str
    state: dict[str, Any] | None
    start: int
    dtype: torch.dtype


def _build(cfg: TrainConfig, ctx: DistContext, run: Path, data_dir: Path | None, resume: bool) -> _Parts:
    """The network, optimiser and gradient scaler, restored from the run's newest checkpoint on resume."""
    device = ctx.device
    net, tokenizer, what = build_network(cfg, data_dir)
    ckpt_path = latest_checkpoint(run) if resume else None
    state = load_training_checkpoint(ckpt_path) if ckpt_path is not None else None
    if state is not None and ckpt_path is not None:
        _restore(net, state, ckpt_path)
        what = f"resuming from {show_path(str(ckpt_path))} (step {int(state.get('step', 0))})"
        if int(state.get("world_size", ctx.world_size)) != ctx.world_size:
            warnings.warn(f"resuming a {state['world_size']}-process run on {ctx.world_size} processes: "
                          "the data order is kept, but BN statistics differ unless --sync-bn", stacklevel=2)
    if cfg.sync_bn and ctx.distributed:
        net = convert_sync_batchnorm(net, device)  # type: ignore[assignment]
    dtype = torch.float64 if cfg.precision == "fp64" else torch.float32
    net = net.to(device, dtype)
    set_train_mode(net, cfg.freeze_bn)
    inner: nn.Module = TwoTower(net)
    model = inner
    if ctx.distributed:
        model = torch.nn.parallel.DistributedDataParallel(inner, device_ids=[device.index] if device.type == "cuda" else None)
    params = [p for p in net.parameters() if p.requires_grad]
    heads = {id(p) for m in (net.fc, net.text_module.fc1, net.text_module.fc2) for p in m.parameters()}
    groups = [{"params": [p for p in params if id(p) not in heads], "lr_mult": 1.0},
              {"params": [p for p in params if id(p) in heads], "lr_mult": cfg.head_lr_mult}]
    optimizer = torch.optim.Adam(groups, lr=cfg.lr, eps=cfg.adam_eps, weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    start = 0
    if state is not None:
        try:
            optimizer.load_state_dict(state["optimizer"])
            if state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
            set_rng_state(state["rng"], device)
        except (KeyError, ValueError, RuntimeError, TypeError, IndexError) as exc:
            raise CheckpointError(f"{ckpt_path}: damaged training state ({str(exc).splitlines()[0][:160]})") from None
        start = int(state["step"])
    else:
        torch.manual_seed(cfg.seed + 1)
    return _Parts(net, inner, model, params, optimizer, scaler, tokenizer, what, state, start, dtype)


def _write_run_folder(cfg: TrainConfig, run: Path, tokenizer: Tokenizer) -> None:
    """``config.json`` (the resolved settings, rewritten on every launch) and ``vocab.npy``."""
    try:
        run.mkdir(parents=True, exist_ok=True)
        cfg.save(run / "config.json")
        vocab_out = run / "vocab.npy"
        if not vocab_out.exists():
            with atomic_file(vocab_out) as f:
                np.save(f, np.asarray(tokenizer.vocab, dtype=str), allow_pickle=False)
    except OSError as exc:
        raise TrainingError(f"cannot write the run folder {run}: {exc.strerror or exc}") from None


def _gradients(cfg: TrainConfig, ctx: DistContext, parts: _Parts, it: Any, step: int, *, bad: BadSamples,
               metrics: Metrics, positions: dict[str, Any], autocast: Any) -> tuple[float, float]:
    """The gradients of one optimiser step (its micro-steps, or one gradient-cached step), clipped;
    returns the loss and the seconds spent waiting for data. The caller steps the optimiser."""
    device, dtype, scaler = ctx.device, parts.dtype, parts.scaler
    step_loss = waited = 0.0
    for m in range(cfg.grad_accum):
        t_wait = time.perf_counter()
        clips, ids, info = next(it)
        waited += time.perf_counter() - t_wait
        for note in bad.update(step + 1, info):
            metrics.write({"step": step + 1, "kind": "bad_sample", "sample": note})
        note_position(positions, info)
        clips = clips.to(device, non_blocking=True)
        ids = ids.to(device, non_blocking=True)
        if cfg.micro_batch:
            step_loss = cached_step(parts.model, parts.inner, clips, ids, cfg.micro_batch, dtype=dtype,
                                    autocast=autocast, scaler=scaler, distributed=ctx.distributed)
        else:
            step_loss += plain_step(parts.model, clips, ids, dtype=dtype, autocast=autocast, scaler=scaler,
                                    scale=1.0 / cfg.grad_accum,
                                    sync=m == cfg.grad_accum - 1 or not ctx.distributed) / cfg.grad_accum
    if not math.isfinite(step_loss):
        raise TrainingError(f"the loss became {step_loss} at step {step + 1}: the run diverged; lower --lr "
                            "(or --head-lr-mult), use --grad-clip or --precision fp32")
    if cfg.grad_clip is not None:
        scaler.unscale_(parts.optimizer)
        torch.nn.utils.clip_grad_norm_(parts.params, cfg.grad_clip)
    return step_loss, waited


def _check_inputs(cfg: TrainConfig, ctx: DistContext) -> tuple[Any, Any, dict[str, Any], Path | None]:
    """Refuse settings this run cannot train with; the training data, held-out split, the data's
    metadata and its folder (``None`` for a list file)."""
    cfg.process_batch(ctx.world_size)  # the batch splits over the processes
    if cfg.forward_batch(ctx.world_size) == 1 and not cfg.freeze_bn:
        raise UsageError("batch-norm needs at least 2 clips per forward pass (batch_size / processes"
                         + (" / grad_accum" if cfg.grad_accum > 1 else "") + (", or --micro-batch" if cfg.micro_batch else "")
                         + " is 1); use a larger --batch-size, or --freeze-bn")
    train_data, val_split, meta = find_data(cfg.data, cfg.val)
    data_dir = Path(cfg.data) if Path(cfg.data).is_dir() else None
    if cfg.precision == "fp16" and ctx.device.type != "cuda":
        raise UsageError("--precision fp16 needs a CUDA device; use bf16 on the CPU")
    return train_data, val_split, meta, data_dir


def _eval_data(cfg: TrainConfig, ctx: DistContext, val_split: Any,
               tokenizer: Tokenizer) -> tuple[Any, torch.Tensor | None]:
    """The held-out clips' loader and their captions' token ids (main process, ``eval_every`` set)."""
    if val_split is not None and ctx.is_main and cfg.eval_every:
        pairs = eval_pairs(val_split, cfg.eval_max)
        eval_ids = tokenizer([p.text for p in pairs])
        eval_loader = torch.utils.data.DataLoader(
            EvalClips(pairs, cfg.window, cfg.decode_side, cfg.min_time), batch_size=max(2, cfg.forward_batch(ctx.world_size)),
            num_workers=min(cfg.workers, 2), worker_init_fn=worker_init)
        return eval_loader, eval_ids
    if val_split is None and ctx.is_main:
        _log(ctx, "milnce train: no held-out split (DATA/val.csv or --val): no retrieval metrics")
    return None, None


def _announce(cfg: TrainConfig, ctx: DistContext, parts: _Parts, described: str) -> None:
    """The one-line summary of what this run trains, on what, how."""
    local = cfg.process_batch(ctx.world_size)
    n_params = sum(p.numel() for p in parts.params)
    how = (f"{local} per process in forward passes of {cfg.micro_batch} (gradient caching)" if cfg.micro_batch
           else f"{local} per process x {cfg.grad_accum} accumulation")
    _log(ctx, f"milnce train: {parts.what}: S3D space_to_depth={parts.net.space_to_depth}, {n_params / 1e6:.1f} M "
              f"trainable parameters; {described}; {ctx.world_size} process(es) on {ctx.device}; {cfg.batch_size} "
              f"clips/step ({how}); {cfg.num_frames} frames at {cfg.fps:g} fps, {cfg.size} px; steps "
              f"{parts.start} -> {cfg.steps}")


class _Session:
    """A run in progress: its held-out evaluation, checkpoints and logged records."""

    def __init__(self, cfg: TrainConfig, ctx: DistContext, run: Path, parts: _Parts, metrics: Metrics,
                 data_state: Any, eval_data: tuple[Any, torch.Tensor | None]) -> None:
        self.cfg, self.ctx, self.run, self.parts, self.metrics = cfg, ctx, run, parts, metrics
        self.autocast = _autocast_factory(ctx.device, cfg.precision)
        self.eval_loader, self.eval_ids = eval_data
        # counted per micro-step: a window of --bad-window optimiser steps
        self.bad = BadSamples(ctx, cfg.bad_fraction, cfg.bad_window * cfg.grad_accum, cfg.batch_size // cfg.grad_accum)
        self.positions: dict[str, Any] = dict(data_state.get("streams", {})) if isinstance(data_state, dict) else {}
        self.last: dict[str, Any] = {}

    def evaluate(self, step: int) -> None:
        """Held-out retrieval metrics at ``step`` (every rank agrees on a failure)."""
        cfg, ctx, net = self.cfg, self.ctx, self.parts.net
        failure: TrainingError | None = None
        rec: dict[str, Any] = {}
        if self.eval_loader is not None and self.eval_ids is not None:
            try:
                rec = {"step": step, "kind": "eval",
                       **evaluate(net, self.eval_loader, self.eval_ids, ctx.device, self.autocast, step)}
            except TrainingError as exc:  # decided together below: no rank is left waiting in a barrier
                failure = exc
            finally:
                set_train_mode(net, cfg.freeze_bn)
        if not ctx.all_ok(failure is None):
            raise failure or TrainingError(f"step {step}: the held-out evaluation found NaN or infinite embeddings")
        if rec:
            self.metrics.write(rec)
            self.last["eval"] = rec
            _log(ctx, f"step {step}: held-out text->video R@1 {rec['R@1']:.1f}% (chance {rec['chance_R@1']:.1f}%) "
                      f"R@5 {rec['R@5']:.1f}% R@10 {rec['R@10']:.1f}% median rank {rec['median_rank']:g} of {rec['n']:g}")
        ctx.barrier()

    def save(self, step: int) -> None:
        """The training checkpoint of ``step`` (weights, optimiser, RNG and data positions)."""
        cfg, ctx, parts = self.cfg, self.ctx, self.parts
        streams = gather_positions(ctx, self.positions)
        if ctx.is_main:
            sd = {k: v.detach().cpu() for k, v in parts.net.state_dict().items()}
            save_checkpoint(self.run, step, {
                "step": step, "samples": step * cfg.batch_size, "world_size": ctx.world_size,
                "state_dict": sd, "optimizer": parts.optimizer.state_dict(),
                "scheduler": {"name": "warmup_cosine", "step": step, "lr": lr_at(max(0, step - 1), cfg),
                              "schedule_steps": cfg.horizon},
                "scaler": parts.scaler.state_dict() if parts.scaler.is_enabled() else {},
                "rng": rng_state(ctx.device), "config": cfg.to_dict(),
                "data": {"seed": cfg.seed, "next_sample": step * cfg.batch_size, "streams": streams,
                         "bad_samples": self.bad.total},
            }, keep=cfg.keep_checkpoints)
        ctx.barrier()

    def finish(self) -> dict[str, Any]:
        """The last records, with the count of skipped samples (said when there were any)."""
        bad = self.bad
        self.last["bad_samples"] = bad.total
        if bad.total:
            _log(self.ctx, f"milnce train: {bad.total} unreadable sample(s) skipped (listed in metrics.jsonl as "
                           f"kind \"bad_sample\"), e.g. {bad.examples[0]}")
        return self.last


class _Window:
    """The running totals of the steps since the last ``kind: train`` record."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.t0, self.wait, self.steps, self.loss_sum = time.perf_counter(), 0.0, 0, 0.0

    def record(self, s: _Session, done: int, lr: float) -> dict[str, Any]:
        """Log the window's ``kind: train`` record (the caller then resets the window)."""
        cfg = s.cfg
        dt = time.perf_counter() - self.t0
        rec = {"step": done, "kind": "train", "loss": self.loss_sum / self.steps, "lr": lr,
               "schedule_steps": cfg.horizon, "steps_per_s": self.steps / dt,
               "clips_per_s": self.steps * cfg.batch_size / dt, "data_wait": self.wait / dt,
               "bad_samples": s.bad.take_log_count(), "time": time.time()}
        s.metrics.write(rec)
        s.last["train"] = rec
        return rec


def _loop(s: _Session, loader: Any) -> None:
    """The optimiser steps from ``parts.start`` to ``cfg.steps``, with logging, checkpoints and
    evaluations on their schedules; an interrupted single-process run keeps its finished steps."""
    cfg, ctx, parts = s.cfg, s.ctx, s.parts
    optimizer, scaler, start = parts.optimizer, parts.scaler, parts.start
    bar = None
    if ctx.is_main and cfg.progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=start, desc="train", unit="step", file=sys.stderr, dynamic_ncols=True)
    it = iter(loader)
    window = _Window()
    saved_at = completed = start
    updating = False
    try:
        for step in range(start, cfg.steps):
            lr = lr_at(step, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr * group["lr_mult"]
            step_loss, waited = _gradients(cfg, ctx, parts, it, step, bad=s.bad, metrics=s.metrics,
                                           positions=s.positions, autocast=s.autocast)
            window.wait += waited
            updating = True
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            done = completed = step + 1
            updating = False
            check_finite(parts.net, done, ctx.all_ok)
            window.steps += 1
            window.loss_sum += step_loss
            if bar is not None:
                bar.update()
                bar.set_postfix(loss=f"{step_loss:.3f}", lr=f"{lr:.2e}", refresh=False)
            if done % cfg.log_every == 0 or done == cfg.steps:
                rec = window.record(s, done, lr)
                if bar is not None:
                    bar.set_postfix(loss=f"{rec['loss']:.3f}", clips_s=f"{rec['clips_per_s']:.1f}", lr=f"{lr:.2e}")
                window.reset()
            if cfg.save_every and done % cfg.save_every == 0:
                s.save(done)
                saved_at = done
            if cfg.eval_every and (done % cfg.eval_every == 0 or done == cfg.steps):
                s.evaluate(done)
                window.t0 = time.perf_counter()  # evaluation is not training time
        if saved_at != cfg.steps and cfg.steps > start:
            s.save(cfg.steps)
        elif parts.state is None and cfg.steps == 0:
            s.save(0)
    except KeyboardInterrupt:
        if not ctx.distributed and not updating and completed > saved_at:  # keep the finished steps
            _log(ctx, f"milnce train: interrupted; saving step {completed}")
            s.save(completed)
        raise
    finally:
        if bar is not None:
            bar.close()
        s.metrics.close()
        del it


def train(cfg: TrainConfig, out: str | os.PathLike[str], *, resume: bool = False,
          ctx: DistContext | None = None) -> dict[str, Any]:
    """Train (or fine-tune) with MIL-NCE; checkpoints, ``config.json`` and ``metrics.jsonl`` go to ``out``.

    Runs on one process, or on every process of a ``torchrun`` group (each calls ``train``).
    Returns the last logged train and eval records (and ``bad_samples``).
    """
    cfg.validate()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    ctx = ctx or init_distributed(cfg.device)
    run = Path(out)
    train_data, val_split, meta, data_dir = _check_inputs(cfg, ctx)
    hflip = cfg.hflip if cfg.hflip is not None else bool(meta.get("hflip", True))

    parts = _build(cfg, ctx, run, data_dir, resume)
    state, start = parts.state, parts.start
    if ctx.is_main:
        _write_run_folder(cfg, run, parts.tokenizer)
    ctx.barrier()
    metrics = Metrics(run, ctx.is_main, start)
    replan = _replan(ctx, cfg, state, start)
    if replan is not None:
        metrics.write(replan)
    data_state = (state or {}).get("data", {}) if state is not None else {}
    loader, described = make_loader(train_data, cfg, parts.tokenizer, hflip=hflip, start=start, ctx=ctx,
                                    resume=data_state, pin=ctx.device.type == "cuda")
    session = _Session(cfg, ctx, run, parts, metrics, data_state, _eval_data(cfg, ctx, val_split, parts.tokenizer))
    _announce(cfg, ctx, parts, described)
    if start == 0 and cfg.eval_every:
        session.evaluate(0)
    _loop(session, loader)
    return session.finish()
