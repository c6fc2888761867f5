"""``milnce.model``: The S3D-G text-video network trained with MIL-NCE on HowTo100M."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import milnce
import milnce.api
import milnce.integrity
import milnce.weights
from conftest import VOCAB
from milnce.fast import FastVideoNet
from milnce.model import INCEPTION_CONFIG, S3D, MaxPool3dSame, space_to_depth, state_dict_shapes
from weights_fixtures import random_net

DATA = Path(__file__).resolve().parent / "data"


def _tsv() -> list[tuple[str, tuple[int, ...]]]:
    rows = []
    for line in (DATA / "state_dict.tsv").read_text().splitlines()[1:]:
        key, shape, _ = line.split("\t")
        rows.append((key, () if shape == "scalar" else tuple(int(n) for n in shape.split("x"))))
    return rows


def test_state_dict_matches_published_keys_shapes_and_order():
    rows = _tsv()
    assert len(rows) == 537
    with torch.device("meta"):
        net = S3D(None, 512)
    sd = net.state_dict()
    assert [k for k, _ in rows] == list(sd), "keys or their order differ from state_dict.tsv"
    for key, shape in rows:
        assert tuple(sd[key].shape) == shape, key
    assert sum(v.numel() for k, v in sd.items() if "running" not in k and "num_batches" not in k) == pytest.approx(31.2e6, rel=0.01)


def test_training_variant_differs_only_in_conv1():
    with torch.device("meta"):
        a, b = S3D(None).state_dict(), S3D(None, space_to_depth=False).state_dict()
    assert list(a) == list(b)
    diff = [k for k in a if a[k].shape != b[k].shape]
    assert diff == ["conv1.conv1.weight"]
    assert tuple(b["conv1.conv1.weight"].shape) == (64, 3, 3, 7, 7)


def test_stage_shapes_for_published_input():
    """Shapes of model.md's sequence for 1 x 3 x 32 x 224 x 224 (meta tensors: no compute)."""
    with torch.device("meta"):
        net = S3D(None).eval()
        x = torch.zeros(1, 3, 32, 224, 224)
        s = space_to_depth(x)
        assert tuple(s.shape) == (1, 24, 16, 112, 112)
        c1 = net.conv1(s)
        assert tuple(c1.shape) == (1, 64, 17, 113, 113)
        seen = {}
        for name in ("maxpool_2a", "maxpool_3a", "mixed_3c", "maxpool_4a", "mixed_4f", "maxpool_5a", "mixed_5c"):
            getattr(net, name).register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, tuple(o.shape[1:])))
        net.features(x)
    assert seen == {
        "maxpool_2a": (64, 16, 56, 56),
        "maxpool_3a": (192, 16, 28, 28),
        "mixed_3c": (480, 16, 28, 28),
        "maxpool_4a": (480, 8, 14, 14),
        "mixed_4f": (832, 8, 14, 14),
        "maxpool_5a": (832, 4, 7, 7),
        "mixed_5c": (1024, 4, 7, 7),
    }


def test_inception_table():
    net = S3D(None, num_embeddings=2)
    outs = {"mixed_3b": 256, "mixed_3c": 480, "mixed_4b": 512, "mixed_4c": 512, "mixed_4d": 512,
            "mixed_4e": 528, "mixed_4f": 832, "mixed_5b": 832, "mixed_5c": 1024}
    for name, out in outs.items():
        assert getattr(net, name).output_dim == out
        cfg = INCEPTION_CONFIG[name]
        assert getattr(net, name).conv_b0.conv1.in_channels == cfg[0]


def test_space_to_depth_channel_order():
    b, c, t, h, w = 1, 3, 4, 6, 8
    x = torch.arange(b * c * t * h * w, dtype=torch.float32).reshape(b, c, t, h, w)
    y = space_to_depth(x)
    for dt in range(2):
        for dh in range(2):
            for dw in range(2):
                for ch in range(c):
                    k = ((dt * 2 + dh) * 2 + dw) * c + ch
                    assert torch.equal(y[0, k], x[0, ch, dt::2, dh::2, dw::2])


@pytest.mark.parametrize(
    "kernel,stride,pads",
    [((1, 3, 3), (1, 2, 2), (0, 1, 0, 1, 0, 0)), ((3, 3, 3), (2, 2, 2), (0, 1, 0, 1, 0, 1)), ((2, 2, 2), (2, 2, 2), (0,) * 6)],
)
def test_tf_same_pool_padding(kernel, stride, pads):
    pool = MaxPool3dSame(kernel, stride)
    assert pool.padding == pads
    x = torch.rand(1, 2, 6, 9, 10)
    ref = F.max_pool3d(F.pad(x, pads), kernel, stride, ceil_mode=True)
    assert torch.equal(pool(x), ref)


def test_separable_and_gating_structure():
    net = S3D(None, num_embeddings=2)
    u = net.mixed_4b.conv_b1_b
    assert u.conv1.kernel_size == (1, 3, 3) and u.conv1.padding == (0, 1, 1)
    assert u.conv2.kernel_size == (3, 1, 1) and u.conv2.padding == (1, 0, 0)
    assert u.conv2.in_channels == u.conv2.out_channels == 208
    assert net.conv_2c.conv2.kernel_size == (3, 1, 1)
    assert net.conv1.bn1.eps == 1e-5 and net.conv1.bn1.momentum == 0.1
    assert net.mixed_4b.maxpool_b3.kernel_size == 3 and net.mixed_4b.maxpool_b3.padding == 1


def test_gating_is_applied_after_conv_2c():
    """model.md's self-gating sits between conv_2c and maxpool_3a: it takes conv_2c's output ``x``,
    gives ``x * sigmoid(fc(mean_THW(x)))`` per channel, maxpool_3a takes exactly that, and gates near 0
    silence the map."""
    net = random_net()
    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    order: list[str] = []

    def hook(name):
        def record(module, inputs, output):
            order.append(name)
            seen[name] = (inputs[0], output)
        return record

    for name in ("conv_2c", "gating", "maxpool_3a"):
        getattr(net, name).register_forward_hook(hook(name))
    x = torch.rand(1, 3, 8, 64, 64)
    with torch.inference_mode():
        y1 = net(x)["video_embedding"]
        assert order == ["conv_2c", "gating", "maxpool_3a"]
        a = seen["conv_2c"][1]
        assert torch.equal(seen["gating"][0], a)
        gate = torch.sigmoid(a.mean(dim=(2, 3, 4)) @ net.gating.fc.weight.T + net.gating.fc.bias)
        torch.testing.assert_close(seen["gating"][1], a * gate[:, :, None, None, None], rtol=1e-5, atol=1e-6)
        assert torch.equal(seen["maxpool_3a"][0], seen["gating"][1])
        net.gating.fc.bias.fill_(-30.0)  # gates ~1e-13
        y2 = net(x)["video_embedding"]
        silenced = seen["gating"][1]
    assert silenced.abs().max() <= 1e-9 * a.abs().max()
    assert not torch.allclose(y1, y2)


def test_eager_outputs_follow_the_spec_sequence():
    """Recompute the tower from model.md's description with plain functional ops."""
    net = random_net()
    sd = net.state_dict()
    x = torch.rand(1, 3, 8, 64, 64)

    def unit(prefix, v, conv="conv1", bn="bn1", stride=1, padding=0):
        v = F.conv3d(v, sd[f"{prefix}.{conv}.weight"], None, stride, padding)
        v = F.batch_norm(v, sd[f"{prefix}.{bn}.running_mean"], sd[f"{prefix}.{bn}.running_var"],
                         sd[f"{prefix}.{bn}.weight"], sd[f"{prefix}.{bn}.bias"], False, 0.0, 1e-5)
        return F.relu(v)

    def sep(prefix, v):
        return unit(prefix, unit(prefix, v, padding=(0, 1, 1)), "conv2", "bn2", padding=(1, 0, 0))

    def gate(prefix, v):
        return torch.sigmoid(F.linear(v.mean((2, 3, 4)), sd[f"{prefix}.fc.weight"], sd[f"{prefix}.fc.bias"]))[..., None, None, None] * v

    def same_pool(v, k, s):
        pad = []
        for kk, ss in zip(reversed(k), reversed(s)):
            p = max(kk - ss, 0)
            pad += [p // 2, p - p // 2]
        return F.max_pool3d(F.pad(v, pad), k, s, ceil_mode=True)

    def block(name, v):
        b0 = gate(f"{name}.gating_b0", unit(f"{name}.conv_b0", v))
        b1 = gate(f"{name}.gating_b1", sep(f"{name}.conv_b1_b", unit(f"{name}.conv_b1_a", v)))
        b2 = gate(f"{name}.gating_b2", sep(f"{name}.conv_b2_b", unit(f"{name}.conv_b2_a", v)))
        b3 = gate(f"{name}.gating_b3", unit(f"{name}.conv_b3_b", F.max_pool3d(v, 3, 1, 1)))
        return torch.cat([b0, b1, b2, b3], 1)

    with torch.inference_mode():
        v = unit("conv1", space_to_depth(x), padding=(1, 2, 2))[:, :, 1:, 1:, 1:]
        v = same_pool(v, (1, 3, 3), (1, 2, 2))
        v = gate("gating", sep("conv_2c", unit("conv_2b", v)))
        v = same_pool(v, (1, 3, 3), (1, 2, 2))
        v = block("mixed_3c", block("mixed_3b", v))
        v = same_pool(v, (3, 3, 3), (2, 2, 2))
        for n in "bcdef":
            v = block(f"mixed_4{n}", v)
        v = same_pool(v, (2, 2, 2), (2, 2, 2))
        v = block("mixed_5c", block("mixed_5b", v)).mean((2, 3, 4))
        emb = F.linear(v, sd["fc.weight"], sd["fc.bias"])
        out = net(x)
    torch.testing.assert_close(out["mixed_5c"], v, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["video_embedding"], emb, rtol=1e-5, atol=1e-6)


def test_text_tower_against_manual_computation():
    net = random_net()
    sd = net.state_dict()
    texts = ["Open the door", "cut tomato cut tomato", "", "zzz unknown"]
    ids = torch.zeros(4, 16, dtype=torch.long)
    ids[0, :2] = torch.tensor([VOCAB.index("open") + 1, VOCAB.index("door") + 1])
    ids[0, 1] = VOCAB.index("the") + 1
    ids[0, 2] = VOCAB.index("door") + 1
    ids[1, :4] = torch.tensor([VOCAB.index(w) + 1 for w in ("cut", "tomato", "cut", "tomato")])
    emb = sd["text_module.word_embd.weight"][ids]
    h = torch.relu(emb @ sd["text_module.fc1.weight"].T + sd["text_module.fc1.bias"]).max(dim=1).values
    expected = h @ sd["text_module.fc2.weight"].T + sd["text_module.fc2.bias"]
    with torch.inference_mode():
        out = net.text_module(texts)
    assert set(out) == {"text_embedding"}
    torch.testing.assert_close(out["text_embedding"], expected, rtol=1e-5, atol=1e-6)
    # no known word: the all-padding embedding, same for empty and unknown text
    torch.testing.assert_close(out["text_embedding"][2], out["text_embedding"][3])


def test_dropin_api(checkpoint):
    """The published usage from the model card, verbatim apart from paths."""
    weights, vocab = checkpoint
    net = S3D(str(vocab), 512)
    net.load_state_dict(torch.load(weights))
    net = net.eval()
    video = torch.rand(2, 3, 8, 64, 64)
    video_output = net(video)
    assert set(video_output) == {"video_embedding", "mixed_5c"}
    assert video_output["video_embedding"].shape == (2, 512)
    assert video_output["mixed_5c"].shape == (2, 1024)
    text_output = net.text_module(["open door", "cut tomato"])
    assert text_output["text_embedding"].shape == (2, 512)
    sim = torch.matmul(text_output["text_embedding"], video_output["video_embedding"].t())
    assert sim.shape == (2, 2)


@pytest.mark.parametrize(
    "video,err,match",
    [
        (torch.rand(3, 8, 64, 64), ValueError, "5 dims"),
        (torch.rand(1, 1, 8, 64, 64), ValueError, "3 RGB channels"),
        (torch.randint(0, 255, (1, 3, 8, 64, 64), dtype=torch.uint8), TypeError, "float"),
        (torch.rand(1, 3, 9, 64, 64), ValueError, "must be even"),
        (torch.rand(1, 3, 8, 65, 64), ValueError, "must be even"),
        (np.zeros((1, 3, 8, 64, 64), dtype=np.float32), TypeError, "torch.Tensor"),
    ],
)
def test_bad_video_tensors(video, err, match):
    net = random_net()
    with pytest.raises(err, match=match):
        net(video)
    with pytest.raises(err, match=match):
        FastVideoNet(net)(video)


def test_out_of_range_values_warn_once(monkeypatch):
    import milnce.model as m

    monkeypatch.setattr(m, "_warned_range", False)
    net = random_net()
    x = torch.rand(1, 3, 8, 64, 64) * 255
    with pytest.warns(UserWarning, match=r"\[0, 1\]"):
        net(x)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        net(x)  # only once


def test_gating_false_rejected():
    with pytest.raises(ValueError, match="gating"):
        S3D(None, gating=False)


# --------------------------------------------------------------------------- start-up


@pytest.mark.parametrize("s2d", [True, False])
def test_state_dict_shapes_table_matches_the_network(s2d):
    net = S3D(None, 256, space_to_depth=s2d, num_embeddings=77)
    real = [(k, tuple(v.shape)) for k, v in net.state_dict().items()]
    assert list(state_dict_shapes(s2d, 77, 256).items()) == real
    assert milnce.weights.expected_shapes(s2d, 77, 256) == dict(real)
