"""``milnce.video.scheduler``: The model side of the pipeline."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from milnce.extract import (
    VideoJob,
    run_jobs,
)
from video_fixtures import SMALL_WINDOWS as S
from video_fixtures import SRC


@pytest.mark.slow
def test_decoders_that_die_at_start_are_a_clear_error_not_a_hang(tree, tmp_path):
    """A script without the ``__main__`` guard makes every decoding process die at start-up
    (it re-runs the script): the run stops with a clear error instead of respawning forever."""
    script = tmp_path / "noguard.py"
    script.write_text(
        "import sys, torch\n"
        f"sys.path.insert(0, {SRC!r})\n"
        "from milnce.extract import VideoJob, run_jobs\n"
        "from milnce.windows import WindowSettings\n"
        "class M:\n"
        "    device = torch.device('cpu')\n"
        "    def video_net(self, x):\n"
        "        return {'video_embedding': torch.zeros(len(x), 512), 'mixed_5c': torch.zeros(len(x), 1024)}\n"
        f"list(run_jobs(M(), [VideoJob({str(tree / 'good' / 'a.mp4')!r})], "
        "WindowSettings(fps=10, num_frames=8, size=32, stride=4), workers=1))\n")
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "keep dying before they take a video" in r.stderr and "__main__" in r.stderr


# ------------------------------------------------------------------------------ the decoder hook


def gray_source(task, settings, pad, threads, warn):
    """A plugged-in window source: three channels-last windows of gray frames (like FFmpeg's rawvideo)."""

    class Src:
        duration = 1.2

        def __iter__(self):
            T, s = settings.num_frames, settings.size
            for k in range(3):
                yield k, k * 0.4, k * 0.4 + 0.8, np.full((T, s, s, 3), 100 + k, np.uint8)

    return Src()


def test_a_plugged_in_window_source_feeds_the_scheduler(model, folder):
    before = torch.backends.cudnn.benchmark
    (res,) = run_jobs(model, [VideoJob(str(folder / "a.mp4"), key="x")], S, workers=0, source=gray_source)
    assert res.key == "x" and len(res) == 3 and res.duration == 1.2 and res.starts.tolist() == [0.0, 0.4, 0.8]
    x = torch.stack([torch.full((3, 8, 32, 32), 100.0 + k) for k in range(3)]) / 255
    want = model.encode_video(x).numpy()
    np.testing.assert_allclose(res.embeddings, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))
    assert torch.backends.cudnn.benchmark == before  # the process-wide flag is left alone
