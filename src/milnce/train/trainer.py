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
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..atomic import atomic_file, atomic_write_text
from ..errors import UsageError
from ..model import S3D
from ..text import Tokenizer, load_vocab
from .checkpoint import latest_checkpoint, load_training_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import RESUME_MAY_CHANGE, TrainConfig, load_config_file
from .data import EvalClips, StepBatchSampler, TrainClips, eval_pairs, find_data, worker_init
from .dist import DistContext, all_gather_with_grad, convert_sync_batchnorm, init_distributed
from .loss import milnce_loss

__all__ = ["train", "resolve_config", "build_network", "init_weights", "load_word_vectors", "lr_at",
           "retrieval_metrics", "TwoTower"]


# ----------------------------------------------------------------------------- configuration

def resolve_config(out: str | os.PathLike[str], overrides: dict[str, Any] | None = None,
                   config_file: str | None = None, resume: bool = False) -> TrainConfig:
    """The run's settings: defaults < ``config_file`` < ``overrides``; with ``resume`` the run's
    saved ``config.json`` is the base and only the settings in ``RESUME_MAY_CHANGE`` may differ."""
    out = Path(out)
    given = dict(load_config_file(config_file)) if config_file else {}
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
                   if f.name not in RESUME_MAY_CHANGE and getattr(wanted, f.name) != getattr(saved, f.name)]
        if changed:
            detail = ", ".join(f"{k}: {getattr(saved, k)!r} -> {getattr(wanted, k)!r}" for k in changed)
            raise UsageError(f"cannot resume {out} with different settings ({detail}); "
                             f"only {', '.join(sorted(RESUME_MAY_CHANGE))} may change")
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
            raise UsageError(f"--init {cfg.init} is a space_to_depth={spec.space_to_depth} network; "
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
            raise UsageError("no vocabulary: pass --vocab FILE.npy (or put vocab.npy in the data folder, or use --init)")
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
    if step < warm:
        return cfg.lr * (step + 1) / warm
    span = max(1, cfg.horizon - warm)
    t = min(1.0, (step - warm) / span)
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * t))


# ----------------------------------------------------------------------------- evaluation

def retrieval_metrics(text_embd: torch.Tensor, video_embd: torch.Tensor) -> dict[str, float]:
    """Text->video retrieval where text ``i`` belongs to video ``i``: R@1/5/10 (%) and median rank.
    Ties count against the model (a collapsed model does not score)."""
    scores = text_embd.float() @ video_embd.float().T
    own = scores.diagonal()[:, None]
    ranks = (scores >= own).sum(dim=1)  # 1 + videos scoring at least as high, excluding itself
    n = scores.shape[0]
    out = {f"R@{k}": float((ranks <= k).float().mean() * 100) for k in (1, 5, 10)}
    out["median_rank"] = float(ranks.float().median())
    out["n"] = float(n)
    out["chance_R@1"] = 100.0 / n
    return out


@torch.no_grad()
def _evaluate(net: S3D, loader: torch.utils.data.DataLoader, text_ids: torch.Tensor, device: torch.device,
              autocast: Any) -> dict[str, float]:
    was_training = net.training
    net.eval()
    try:
        vids = []
        for clips in loader:
            with autocast():
                vids.append(net(clips.to(device).to(net.fc.weight.dtype).div_(255))["video_embedding"].float())
        with autocast():
            texts = net.text_module.encode_ids(text_ids.to(device)).float()
        return retrieval_metrics(texts, torch.cat(vids))
    finally:
        net.train(was_training)


# ----------------------------------------------------------------------------- logging

class _Metrics:
    def __init__(self, run: Path, enabled: bool, resume_step: int) -> None:
        self.enabled = enabled
        self.path = run / "metrics.jsonl"
        self.tb = None
        if not enabled:
            return
        if self.path.exists():  # drop what a killed run logged past its last checkpoint
            kept = []
            for line in self.path.read_text().splitlines():
                try:
                    if json.loads(line).get("step", 0) <= resume_step:
                        kept.append(line)
                except json.JSONDecodeError:
                    pass  # a line cut by a kill
            atomic_write_text(self.path, "".join(k + "\n" for k in kept))
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run / "tensorboard"), purge_step=resume_step + 1)
        except ImportError:
            self.tb = None

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if k not in ("step", "kind") and isinstance(v, (int, float)):
                    self.tb.add_scalar(f"{record.get('kind', 'train')}/{k}", v, record["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


# ----------------------------------------------------------------------------- training

def _autocast_factory(device: torch.device, precision: str):  # type: ignore[no-untyped-def]
    if precision in ("fp32", "fp64"):
        return contextlib.nullcontext
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast(device.type, dtype=dtype)


def _log(ctx: DistContext, msg: str) -> None:
    if ctx.is_main:
        print(msg, file=sys.stderr, flush=True)


def train(cfg: TrainConfig, out: str | os.PathLike[str], *, resume: bool = False,
          ctx: DistContext | None = None) -> dict[str, Any]:
    """Train (or fine-tune) with MIL-NCE; checkpoints, ``config.json`` and ``metrics.jsonl`` go to ``out``.

    Runs on one process, or on every process of a ``torchrun`` group (each calls ``train``).
    Returns the last logged train and eval records.
    """
    cfg.validate()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    ctx = ctx or init_distributed(cfg.device)
    run = Path(out)
    device = ctx.device
    micro = cfg.micro_batch(ctx.world_size)
    train_split, val_split, meta = find_data(cfg.data, cfg.val)
    data_dir = Path(cfg.data) if Path(cfg.data).is_dir() else None
    hflip = cfg.hflip if cfg.hflip is not None else bool(meta.get("hflip", True))
    if cfg.precision == "fp16" and device.type != "cuda":
        raise UsageError("--precision fp16 needs a CUDA device; use bf16 on the CPU")

    net, tokenizer, what = build_network(cfg, data_dir)
    ckpt_path = latest_checkpoint(run) if resume else None
    state = load_training_checkpoint(ckpt_path) if ckpt_path is not None else None
    if state is not None:
        net.load_state_dict(state["state_dict"], strict=True)
        if int(state.get("world_size", ctx.world_size)) != ctx.world_size:
            warnings.warn(f"resuming a {state['world_size']}-process run on {ctx.world_size} processes: "
                          "the data order is kept, but BN statistics differ unless --sync-bn", stacklevel=2)
    if cfg.sync_bn and ctx.distributed:
        net = convert_sync_batchnorm(net, device)  # type: ignore[assignment]
    dtype = torch.float64 if cfg.precision == "fp64" else torch.float32
    net = net.to(device, dtype).train()
    model: nn.Module = TwoTower(net)
    if ctx.distributed:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    params = [p for p in net.parameters() if p.requires_grad]
    heads = {id(p) for m in (net.fc, net.text_module.fc1, net.text_module.fc2) for p in m.parameters()}
    groups = [{"params": [p for p in params if id(p) not in heads], "lr_mult": 1.0},
              {"params": [p for p in params if id(p) in heads], "lr_mult": cfg.head_lr_mult}]
    optimizer = torch.optim.Adam(groups, lr=cfg.lr, eps=cfg.adam_eps, weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    start = 0
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"], device)
        start = int(state["step"])
    else:
        torch.manual_seed(cfg.seed + 1)

    if ctx.is_main:
        run.mkdir(parents=True, exist_ok=True)
        cfg.save(run / "config.json")
        vocab_out = run / "vocab.npy"
        if not vocab_out.exists():
            with atomic_file(vocab_out) as f:
                np.save(f, np.asarray(tokenizer.vocab, dtype=str), allow_pickle=False)
    ctx.barrier()
    metrics = _Metrics(run, ctx.is_main, start)
    autocast = _autocast_factory(device, cfg.precision)

    dataset = TrainClips(train_split, tokenizer, cfg.window, seed=cfg.seed, decode_size=cfg.decode_side,
                         min_time=cfg.min_time, num_candidates=cfg.num_candidates, hflip=hflip)
    sampler = StepBatchSampler(start, cfg.steps, micro, cfg.grad_accum, ctx.rank, ctx.world_size)
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, num_workers=cfg.workers, worker_init_fn=worker_init,
        pin_memory=device.type == "cuda", prefetch_factor=4 if cfg.workers else None,
        multiprocessing_context="fork" if cfg.workers and sys.platform.startswith("linux") else None,
    )
    eval_loader = None
    eval_ids = None
    if val_split is not None and ctx.is_main and cfg.eval_every:
        pairs = eval_pairs(val_split, cfg.eval_max)
        eval_ids = tokenizer([p.text for p in pairs])
        eval_loader = torch.utils.data.DataLoader(
            EvalClips(pairs, cfg.window, cfg.decode_side, cfg.min_time), batch_size=max(1, micro),
            num_workers=min(cfg.workers, 2), worker_init_fn=worker_init)
    elif val_split is None and ctx.is_main:
        _log(ctx, "milnce train: no held-out split (DATA/val.csv or --val): no retrieval metrics")

    n_params = sum(p.numel() for p in params)
    _log(ctx, f"milnce train: {what}: S3D space_to_depth={net.space_to_depth}, {n_params / 1e6:.1f} M trainable "
              f"parameters; {len(train_split.videos)} videos ({len(dataset)} samples/epoch); {ctx.world_size} "
              f"process(es) on {device}; {cfg.batch_size} clips/step ({micro} per process x {cfg.grad_accum} "
              f"accumulation); {cfg.num_frames} frames at {cfg.fps:g} fps, {cfg.size} px; steps {start} -> {cfg.steps}")

    last: dict[str, Any] = {}

    def do_eval(step: int) -> None:
        if eval_loader is not None and eval_ids is not None:
            rec = {"step": step, "kind": "eval", **_evaluate(net, eval_loader, eval_ids, device, autocast)}
            metrics.write(rec)
            last["eval"] = rec
            _log(ctx, f"step {step}: held-out text->video R@1 {rec['R@1']:.1f}% (chance {rec['chance_R@1']:.1f}%) "
                      f"R@5 {rec['R@5']:.1f}% R@10 {rec['R@10']:.1f}% median rank {rec['median_rank']:g} of {rec['n']:g}")
        ctx.barrier()

    def do_save(step: int) -> None:
        if ctx.is_main:
            sd = {k: v.detach().cpu() for k, v in net.state_dict().items()}
            save_checkpoint(run, step, {
                "step": step, "samples": step * cfg.batch_size, "world_size": ctx.world_size,
                "state_dict": sd, "optimizer": optimizer.state_dict(),
                "scheduler": {"name": "warmup_cosine", "step": step, "lr": lr_at(max(0, step - 1), cfg)},
                "scaler": scaler.state_dict() if scaler.is_enabled() else {},
                "rng": rng_state(device), "config": cfg.to_dict(), "data": {"seed": cfg.seed, "next_sample": step * cfg.batch_size},
            }, keep=cfg.keep_checkpoints)
        ctx.barrier()

    if start == 0 and cfg.eval_every:
        do_eval(0)
    bar = None
    if ctx.is_main and cfg.progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=start, desc="train", unit="step", file=sys.stderr, dynamic_ncols=True)
    it = iter(loader)
    window_t0, window_wait, window_steps, loss_sum = time.perf_counter(), 0.0, 0, 0.0
    saved_at = completed = start
    updating = False
    try:
        for step in range(start, cfg.steps):
            lr = lr_at(step, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr * group["lr_mult"]
            step_loss = 0.0
            for m in range(cfg.grad_accum):
                t_wait = time.perf_counter()
                clips, ids = next(it)
                window_wait += time.perf_counter() - t_wait
                clips = clips.to(device, non_blocking=True).to(dtype).div_(255)
                ids = ids.to(device, non_blocking=True).reshape(-1, ids.shape[-1])
                sync = m == cfg.grad_accum - 1 or not ctx.distributed
                with (contextlib.nullcontext() if sync else model.no_sync()):  # type: ignore[operator]
                    with autocast():
                        v, t = model(clips, ids)
                    loss = milnce_loss(all_gather_with_grad(v.to(dtype)), all_gather_with_grad(t.to(dtype)))
                    scaler.scale(loss / cfg.grad_accum).backward()
                step_loss += float(loss.detach()) / cfg.grad_accum
            if not math.isfinite(step_loss):
                raise UsageError(f"the loss became {step_loss} at step {step + 1}; lower --lr or use --precision fp32")
            if cfg.grad_clip is not None:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            updating = True
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            done = completed = step + 1
            updating = False
            window_steps += 1
            loss_sum += step_loss
            if bar is not None:
                bar.update()
                bar.set_postfix(loss=f"{step_loss:.3f}", lr=f"{lr:.2e}", refresh=False)
            if done % cfg.log_every == 0 or done == cfg.steps:
                dt = time.perf_counter() - window_t0
                rec = {"step": done, "kind": "train", "loss": loss_sum / window_steps, "lr": lr,
                       "steps_per_s": window_steps / dt, "clips_per_s": window_steps * cfg.batch_size / dt,
                       "data_wait": window_wait / dt, "time": time.time()}
                metrics.write(rec)
                last["train"] = rec
                if bar is not None:
                    bar.set_postfix(loss=f"{rec['loss']:.3f}", clips_s=f"{rec['clips_per_s']:.1f}", lr=f"{lr:.2e}")
                window_t0, window_wait, window_steps, loss_sum = time.perf_counter(), 0.0, 0, 0.0
            if cfg.save_every and done % cfg.save_every == 0:
                do_save(done)
                saved_at = done
            if cfg.eval_every and (done % cfg.eval_every == 0 or done == cfg.steps):
                do_eval(done)
                window_t0 = time.perf_counter()  # evaluation is not training time
        if saved_at != cfg.steps and cfg.steps > start:
            do_save(cfg.steps)
        elif state is None and cfg.steps == 0:
            do_save(0)
    except KeyboardInterrupt:
        if not ctx.distributed and not updating and completed > saved_at:  # keep the finished steps
            _log(ctx, f"milnce train: interrupted; saving step {completed}")
            do_save(completed)
        raise
    finally:
        if bar is not None:
            bar.close()
        metrics.close()
        del it
    return last
