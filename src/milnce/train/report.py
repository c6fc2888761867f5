"""Held-out retrieval during training and the run's ``metrics.jsonl`` (and TensorBoard) log."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..atomic import atomic_write_text
from ..errors import TrainingError

__all__ = ["retrieval_metrics", "evaluate", "Metrics"]


def retrieval_metrics(text_embd: torch.Tensor, video_embd: torch.Tensor) -> dict[str, float]:
    """Text->video retrieval where text ``i`` belongs to video ``i``: R@1/5/10 (%) and median rank.
    Ties count against the model (a collapsed model does not score), and so do NaN or infinite
    scores: a non-finite score of another video counts as a tie, a non-finite own score ranks last."""
    scores = text_embd.float() @ video_embd.float().T
    n = scores.shape[0]
    own = scores.diagonal()[:, None]
    beats = (scores >= own) | ~torch.isfinite(scores)
    ranks = beats.sum(dim=1)  # 1 + videos scoring at least as high (or not comparable), excluding itself
    ranks = torch.where(torch.isfinite(own[:, 0]), ranks, torch.full_like(ranks, n))
    out = {f"R@{k}": float((ranks <= k).float().mean() * 100) for k in (1, 5, 10)}
    out["median_rank"] = float(ranks.float().median())
    out["n"] = float(n)
    out["chance_R@1"] = 100.0 / n
    return out


@torch.no_grad()
def evaluate(net: nn.Module, loader: torch.utils.data.DataLoader, text_ids: torch.Tensor, device: torch.device,
             autocast: Any, step: int = 0) -> dict[str, float]:
    """Held-out retrieval in eval mode (the caller restores its training mode). Raises
    ``TrainingError`` when an embedding is NaN or infinite (a diverged model)."""
    net.eval()
    vids = []
    dtype = net.fc.weight.dtype  # type: ignore[union-attr]
    for clips in loader:
        with autocast():
            vids.append(net(clips.to(device).to(dtype).div_(255))["video_embedding"].float())
    with autocast():
        texts = net.text_module.encode_ids(text_ids.to(device)).float()  # type: ignore[union-attr, operator]
    video = torch.cat(vids)
    for what, e in (("video", video), ("text", texts)):
        bad = int((~torch.isfinite(e)).any(dim=1).sum())
        if bad:
            raise TrainingError(f"step {step}: {bad} held-out {what} embedding(s) are NaN or infinite: the run "
                                "diverged; lower --lr (or --head-lr-mult), or use --grad-clip")
    return retrieval_metrics(texts, video)


class Metrics:
    """Appends JSON lines to ``RUN/metrics.jsonl`` (main process only); TensorBoard when installed."""

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
            try:
                atomic_write_text(self.path, "".join(k + "\n" for k in kept))
            except OSError as exc:
                raise TrainingError(f"cannot write {self.path}: {exc.strerror}") from None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run / "tensorboard"), purge_step=resume_step + 1)
        except ImportError:
            self.tb = None

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        try:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as exc:
            raise TrainingError(f"cannot write {self.path}: {exc.strerror}") from None
        if self.tb is not None:
            for k, v in record.items():
                if k not in ("step", "kind") and isinstance(v, (int, float)):
                    self.tb.add_scalar(f"{record.get('kind', 'train')}/{k}", v, record["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
