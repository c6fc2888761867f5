"""``milnce.video.sources``: Window sources."""

from __future__ import annotations

from video_fixtures import make_video


def test_ffmpeg_frames_are_a_window_source_picked_by_the_settings(tmp_path, model):
    """The pipeline's decoder hook: ``settings.decoder`` picks the source in one place, the
    ffmpeg-exact source is never split, and refuses what it does not cut (the video fails, the run goes on)."""
    from milnce.video.ffmpeg_exact import ffmpeg_chunks
    from milnce.video.pipeline import VideoJob, run_jobs
    from milnce.video.sources import default_source, ffmpeg_source, source_for, splittable
    from milnce.windows import WindowSettings

    s = WindowSettings(fps=8.0, num_frames=8, size=32, stride=8, crop="center", decoder="ffmpeg")
    assert source_for(s) is ffmpeg_source and not splittable(ffmpeg_source)
    assert source_for(s.with_(decoder="pyav")) is default_source and splittable(default_source)
    v = make_video(tmp_path / "long.mp4", n=60, rate=10, width=48, height=32)  # 6 s: split with min_part_s 1
    stats: dict[str, float] = {}
    (r,) = run_jobs(model, [v], s, pad="zeros", features=False, workers=2, min_part_s=1.0, stats=stats)
    assert r.error is None and stats["parts"] == 0
    list(run_jobs(model, [v], s.with_(decoder="pyav"), pad="zeros", features=False, workers=2, min_part_s=1.0,
                  stats=stats))
    assert stats["parts"] > 0  # the control: the same video, PyAV frames, is split
    assert len(r) == len(list(ffmpeg_chunks(str(v), 8.0, 32, 8)))
    res = {x.key: x for x in run_jobs(model, [VideoJob(str(v), key="cut", start=1.0),
                                              VideoJob(str(v), key="whole")], s, pad="zeros", workers=0)}
    assert "whole videos" in str(res["cut"].error) and res["whole"].error is None
    (sq,) = run_jobs(model, [v], s.with_(crop="square"), pad="zeros", workers=0)
    assert "crop" in str(sq.error)
