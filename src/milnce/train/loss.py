"""The MIL-NCE loss (Miech et al., CVPR 2020), numerically stable and device-agnostic."""

from __future__ import annotations

import torch

from ..errors import UsageError

__all__ = ["milnce_loss"]


def milnce_loss(video_embd: torch.Tensor, text_embd: torch.Tensor) -> torch.Tensor:
    """MIL-NCE loss of ``video_embd`` (B x D) against ``text_embd`` ((B*K) x D).

    Rows ``i*K .. i*K+K-1`` of ``text_embd`` are the K candidate captions of clip ``i``. With
    ``S = video_embd @ text_embd.T`` viewed as B x B x K, the loss is
    ``mean_i [logsumexp(S[i, :, :] ++ S[:, i, :]) - logsumexp(S[i, i, :])]`` where ``++`` joins the
    two sets as in the public ``MILNCELoss`` (so the positives ``S[i, i, :]`` appear twice in the
    denominator). Computed in at least float32 with ``logsumexp``; returns a scalar.
    """
    if not isinstance(video_embd, torch.Tensor) or not isinstance(text_embd, torch.Tensor):
        raise UsageError("milnce_loss takes two tensors: video_embd (B x D) and text_embd ((B*K) x D)")
    if video_embd.ndim != 2 or text_embd.ndim != 2:
        raise UsageError(f"milnce_loss: expected 2-D embeddings, got {tuple(video_embd.shape)} and {tuple(text_embd.shape)}")
    b, d = video_embd.shape
    if b == 0:
        raise UsageError("milnce_loss: empty batch")
    if text_embd.shape[1] != d:
        raise UsageError(f"milnce_loss: embedding sizes differ: video {d}, text {text_embd.shape[1]}")
    if text_embd.shape[0] % b or text_embd.shape[0] == 0:
        raise UsageError(
            f"milnce_loss: text_embd must have B*K rows (K candidates per clip, grouped per clip); "
            f"got {text_embd.shape[0]} rows for B={b} clips"
        )
    k = text_embd.shape[0] // b
    dtype = torch.promote_types(torch.promote_types(video_embd.dtype, text_embd.dtype), torch.float32)
    scores = (video_embd.to(dtype) @ text_embd.to(dtype).T).view(b, b, k)
    positives = torch.diagonal(scores, dim1=0, dim2=1).T  # B x K: S[i, i, :]
    numerator = torch.logsumexp(positives, dim=1)
    pool = torch.cat((scores.reshape(b, b * k), scores.transpose(0, 1).reshape(b, b * k)), dim=1)
    denominator = torch.logsumexp(pool, dim=1)
    return (denominator - numerator).mean()
