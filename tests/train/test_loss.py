"""``milnce.train.loss``: The MIL-NCE loss (Miech et al., CVPR 2020), numerically stable and device-agnostic."""

from __future__ import annotations

import pytest
import torch


def naive_milnce(v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The public MILNCELoss formula, one element at a time."""
    b, k = v.shape[0], t.shape[0] // v.shape[0]
    total = v.new_zeros(())
    for i in range(b):
        num = v.new_zeros(())
        den = v.new_zeros(())
        for c in range(k):
            num = num + torch.exp(v[i] @ t[i * k + c])
        for j in range(b):
            for c in range(k):
                den = den + torch.exp(v[i] @ t[j * k + c])  # S[i, j, c]
                den = den + torch.exp(v[j] @ t[i * k + c])  # S[j, i, c]
        total = total + torch.log(den) - torch.log(num)
    return total / b


@pytest.mark.parametrize("b,k", [(1, 1), (3, 2), (4, 5)])
def test_loss_value_and_gradients_match_naive_loop(b, k):
    from milnce.train import milnce_loss

    g = torch.Generator().manual_seed(b * 10 + k)
    v = torch.randn(b, 6, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(b * k, 6, generator=g, dtype=torch.float64, requires_grad=True)
    ours = milnce_loss(v, t)
    ref = naive_milnce(v, t)
    gv, gt = torch.autograd.grad(ours, (v, t))
    rv, rt = torch.autograd.grad(ref, (v, t))
    assert ours.dtype == torch.float64
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gv, rv, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gt, rt, rtol=1e-10, atol=1e-12)


def test_loss_is_stable_and_checks_shapes():
    from milnce.errors import UsageError
    from milnce.train import milnce_loss

    v = torch.randn(4, 8) * 100
    t = torch.randn(8, 8) * 100
    loss = milnce_loss(v, t)  # logits ~1e4: a naive exp overflows
    assert torch.isfinite(loss) and loss >= 0
    assert milnce_loss(v.half(), t.half()).dtype == torch.float32
    with pytest.raises(UsageError, match="B\\*K rows"):
        milnce_loss(v, t[:7])
    with pytest.raises(UsageError, match="sizes differ"):
        milnce_loss(v, t[:, :4])
