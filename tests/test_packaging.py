"""The package from the outside: ``python -m milnce``, ``hubconf.py`` and pyproject's dependencies."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import milnce
from milnce.model import state_dict_shapes

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    """The environment of a child Python that imports this checkout's ``milnce``."""
    src = str(Path(milnce.__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    return env


@pytest.mark.slow
def test_python_dash_m_runs_the_cli():
    out = subprocess.run([sys.executable, "-m", "milnce", "--version"], capture_output=True, text=True, env=_env(), timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"milnce {milnce.__version__}"
    bad = subprocess.run([sys.executable, "-m", "milnce", "embed-text", "x", "--weights", str(ROOT / "missing.pth"),
                          "--no-download"], capture_output=True, text=True, env=_env(), timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("milnce: error:") and "Traceback" not in bad.stderr


def _hubconf():
    spec = importlib.util.spec_from_file_location("hubconf", ROOT / "hubconf.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _runtime_requirements() -> list[str]:
    """Distribution names in pyproject's ``[project] dependencies`` (a plain regex: no tomllib on 3.10)."""
    text = (ROOT / "pyproject.toml").read_text()
    block = re.search(r"^\[project\]$(.*?)^\[", text, re.S | re.M)
    assert block is not None
    deps = re.search(r"^dependencies\s*=\s*\[(.*?)\]", block.group(1), re.S | re.M)
    assert deps is not None
    return [re.split(r"[<>=!~;\[ ]", req, maxsplit=1)[0].lower() for req in re.findall(r'"([^"]+)"', deps.group(1))]


def test_hubconf_lists_every_runtime_dependency():
    listed = _hubconf().dependencies
    for name in listed:
        assert importlib.util.find_spec(name) is not None, f"hubconf dependency {name!r} is not importable"
    required = _runtime_requirements()
    assert {"torch", "numpy", "safetensors"} <= set(required)
    # the distributions milnce needs all import under their own names
    assert sorted(required) == sorted(n.lower() for n in listed), "hubconf.dependencies and pyproject differ"


def test_hubconf_entry_point_without_download():
    """``pretrained=False``: the published network (the keys, order and shapes of state_dict.tsv) with
    fresh weights and no file read; keyword arguments reach ``milnce.S3D``; a clip gives a 512-d embedding."""
    hub = _hubconf()
    net = hub.s3d_howto100m(pretrained=False)
    assert type(net) is milnce.S3D
    sd = net.state_dict()
    assert [(k, tuple(v.shape)) for k, v in sd.items()] == list(state_dict_shapes().items())
    words = net.text_module.word_embd
    assert words.num_embeddings == 66250 and words.weight.std() > 0  # drawn, not zeros
    with torch.no_grad():
        out = net.eval()(torch.rand(2, 3, 8, 64, 64))
    assert out["video_embedding"].shape == (2, 512) and out["mixed_5c"].shape == (2, 1024)
    assert torch.isfinite(out["video_embedding"]).all()
    training_variant = hub.s3d_howto100m(pretrained=False, space_to_depth=False)
    assert tuple(training_variant.state_dict()["conv1.conv1.weight"].shape) == (64, 3, 3, 7, 7)


def test_hubconf(checkpoint, monkeypatch):
    sys.path.insert(0, str(ROOT))
    try:
        import hubconf
    finally:
        sys.path.remove(str(ROOT))
    assert "s3d_howto100m" in dir(hubconf)
    net = hubconf.s3d_howto100m(pretrained=False)
    assert isinstance(net, milnce.S3D)
    monkeypatch.setenv("MILNCE_WEIGHTS", str(checkpoint[0]))
    monkeypatch.setenv("MILNCE_VOCAB", str(checkpoint[1]))
    net = hubconf.s3d_howto100m(pretrained=True)
    assert net.text_module(["open door"])["text_embedding"].shape == (1, 512)
    assert not net.training
