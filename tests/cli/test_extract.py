"""Feature recipes end to end: ``milnce extract --recipe``, ``milnce recipes``, ``milnce pack``."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import torch

import milnce.commands.extract as extract_cmd
from ffmpeg_reference import HAVE_FFMPEG, WHY_NO_FFMPEG, extractor_chunks
from milnce.cli import main
from milnce.errors import UsageError
from milnce.recipes import RECIPES, check_conflicts, get_recipe
from video_fixtures import make_audio_only, make_video


@pytest.fixture()
def fast_model(monkeypatch, checkpoint, model):
    """The recipe run (``milnce extract``'s own path) gets the already-loaded conftest model."""
    monkeypatch.setattr(extract_cmd, "model_from_args", lambda args: model)
    return model


def test_recipes_listed(capsys):
    assert main(["recipes"]) == 0
    a = capsys.readouterr().out
    assert main(["extract", "--recipe", "list"]) == 0
    assert capsys.readouterr().out == a
    for r in RECIPES.values():
        assert r.name in a and r.source in a
    assert "fps=30" in a and "fps=16" in a and "mixed_5c (1024)" in a


@pytest.mark.parametrize("opts,named", [(["--fps", "10"], "--fps"), (["--num-frames", "32"], "--num-frames"),
                                        (["--pad", "repeat"], "--pad"), (["--crop", "square"], "--crop"),
                                        (["--start", "1"], "--start"), (["--features", "mixed_5c"], "--features")])
def test_conflicting_options_are_refused_naming_the_option(tmp_path, capsys, wargs, opts, named):
    v = make_video(tmp_path / "a.mp4")
    rc = main(["extract", str(v), "--recipe", "videoclip", "--out", str(tmp_path / "o"), *opts, *wargs])
    err = capsys.readouterr().err
    assert rc != 0 and named in err and "videoclip" in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_matching_options_are_accepted():
    check_conflicts(get_recipe("univl"), {"fps": 16.0, "num_frames": 16, "pad": "zeros", "features": ["mixed_5c"]})
    with pytest.raises(UsageError, match="unknown recipe"):
        get_recipe("nope")


def test_same_stem_refused_naming_both(tmp_path, capsys, wargs):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    x = make_video(tmp_path / "a" / "clip.mp4")
    y = make_video(tmp_path / "b" / "clip.mkv")
    rc = main(["extract", str(x), str(y), "--recipe", "univl", "--out", str(tmp_path / "o"), *wargs])
    err = capsys.readouterr().err
    assert rc != 0 and str(x) in err and str(y) in err and "'clip'" in err


@pytest.mark.skipif(not HAVE_FFMPEG, reason=WHY_NO_FFMPEG)
def test_videoclip_end_to_end_matches_the_reference(tmp_path, capsys, wargs, fast_model):
    """Rows, dtype, layout and per-row cosine to the reference pipeline (its ffmpeg frames
    through the same weights), plus resume and --check."""
    (tmp_path / "in").mkdir()
    v = make_video(tmp_path / "in" / "vid_a.mp4", n=40, rate=25, width=80, height=48, marker=True)  # 1.6 s
    out = tmp_path / "o"
    args = ["extract", str(tmp_path / "in"), "--recipe", "videoclip", "--out", str(out), "--workers", "0",
            "--quiet", *wargs]
    assert main(args) == 0
    rows = np.load(out / "vid_a.npy", allow_pickle=False)
    assert rows.dtype == np.float16 and rows.shape == (2, 512)
    np.testing.assert_allclose(np.linalg.norm(rows.astype(np.float32), axis=1), 1.0, atol=2e-3)
    ref = extractor_chunks(str(v), 30)
    with torch.inference_mode():
        e = fast_model.encode_video(torch.from_numpy(ref).permute(0, 4, 1, 2, 3).float().div(255)).float()
    e = torch.nn.functional.normalize(e, dim=1).half().float()
    cos = torch.nn.functional.cosine_similarity(e, torch.from_numpy(rows.astype(np.float32)), dim=1)
    assert float(cos.min()) >= 0.999
    assert sorted(os.listdir(out)) == [".milnce", "failures.csv", "milnce-recipe.json", "vid_a.npy"]
    side = json.loads((out / ".milnce" / "vid_a.json").read_text())
    assert side["rows"] == 2 and side["settings"]["decoder"] == "ffmpeg" and side["source"]["size"] > 0
    capsys.readouterr()
    assert main([*args, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["skipped"] == 1
    assert main(["extract", "--check", str(out), str(tmp_path / "in"), "--recipe", "videoclip"]) == 0


def test_univl_bad_inputs_listed_and_the_rest_written(tmp_path, capsys, wargs, fast_model):
    d = tmp_path / "in"
    d.mkdir()
    make_video(d / "good.mp4", n=10, rate=25, width=64, height=48)
    (d / "empty.mp4").write_bytes(b"")
    make_audio_only(d / "audio.mp4")
    good = make_video(tmp_path / "t.mp4", n=30, rate=25, width=64, height=48)
    (d / "trunc.mp4").write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    whole = make_video(tmp_path / "t.mkv", n=75, rate=25, width=64, height=48)  # 3 s, header first
    (d / "cut.mkv").write_bytes(whole.read_bytes()[: whole.stat().st_size * 6 // 10])
    bad_name = os.fsdecode(b"caf\xe9.mp4")
    tmp = make_video(tmp_path / "cafe.mp4", n=5, rate=25, width=64, height=48)
    os.rename(tmp, os.path.join(os.fsencode(d), b"caf\xe9.mp4"))  # a name that is not UTF-8
    rc = main(["extract", str(d), "--recipe", "univl", "--out", str(tmp_path / "o"), "--workers", "0", "--quiet",
               *wargs])
    assert rc == 1
    g = np.load(tmp_path / "o" / "good.npy", allow_pickle=False)
    assert g.dtype == np.float16 and g.shape == (1, 1024)
    failed = (tmp_path / "o" / "failures.csv").read_text(encoding="utf-8", errors="replace")
    assert "empty.mp4" in failed and "audio.mp4" in failed
    cut = np.load(tmp_path / "o" / "cut.npy", allow_pickle=False)  # the rows of what could be decoded
    assert 1 <= cut.shape[0] < 3 and "cut.mkv" not in failed
    if HAVE_FFMPEG:
        assert cut.shape[0] == len(extractor_chunks(str(d / "cut.mkv"), 16))
    assert os.path.exists(os.path.join(os.fsencode(tmp_path / "o"), b"caf\xe9.npy")) or bad_name in failed


def test_pack_layouts(tmp_path, capsys):
    d = tmp_path / "f"
    d.mkdir()
    np.save(d / "va.npy", np.ones((3, 1024), np.float16))  # univl: mixed_5c rows
    np.save(d / "vb.npy", np.zeros((2, 1024), np.float16))
    assert main(["pack", "univl", str(d), str(tmp_path / "u.pickle")]) == 0
    with open(tmp_path / "u.pickle", "rb") as f:
        u = pickle.load(f)  # the test reads what the consumer would read; milnce never does
    assert set(u) == {"va", "vb"} and u["va"].dtype == np.float16 and u["vb"].shape == (2, 1024)
    d = tmp_path / "g"
    d.mkdir()
    a = np.ones((3, 512), np.float16)  # videoclip: video_embedding rows
    np.save(d / "va.npy", a)
    np.save(d / "vb.npy", np.zeros((2, 512), np.float16))
    (tmp_path / "ids.txt").write_text("vb\nva\n")
    assert main(["pack", "videoclip", str(d), str(tmp_path / "m"), "--ids", str(tmp_path / "ids.txt"),
                 "--shard-size", "1", "--split", "val"]) == 0
    m = tmp_path / "m"
    with open(m / "val_meta.pkl", "rb") as f:
        assert pickle.load(f) == {0: ["vb"], 1: ["va"]}
    s1 = np.load(m / "val_1_starts.npy")
    assert s1.dtype == np.int64 and s1.tolist() == [0, 3]
    np.testing.assert_array_equal(np.load(m / "val_1_data.npy"), a)
    np.save(d / "x.y.npy", a)
    assert main(["pack", "univl", str(d), str(tmp_path / "u2.pickle")]) != 0
    assert "x.y.npy" in capsys.readouterr().err


def test_window_settings_decoder_field():
    from milnce.windows import WindowSettings

    assert "decoder" not in WindowSettings().to_dict()  # settings stored before the field stay equal
    s = get_recipe("videoclip").settings()
    assert WindowSettings.from_dict(s.to_dict()) == s and s.to_dict()["decoder"] == "ffmpeg"
    with pytest.raises(UsageError, match="resize"):
        WindowSettings(crop="resize", decoder="ffmpeg")
    with pytest.raises(UsageError, match="decoder"):
        WindowSettings(decoder="opencv")


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


def test_recipe_verify_finds_and_redoes_a_damaged_npy(tmp_path, capsys, wargs, fast_model):
    """``--verify`` sits behind the same layout calls as the default ``.npz`` tree."""
    (tmp_path / "in").mkdir()
    make_video(tmp_path / "in" / "v.mp4", n=16, rate=16, width=48, height=32)
    out = tmp_path / "o"
    args = ["extract", str(tmp_path / "in"), "--recipe", "univl", "--out", str(out), "--workers", "0", "--quiet",
            *wargs]
    assert main(args) == 0
    f = out / "v.npy"
    good = f.read_bytes()
    f.write_bytes(good[:-64] + b"\xff" * 64)  # header intact (the cheap check passes), values NaN
    check = ["extract", "--check", str(out), str(tmp_path / "in"), "--recipe", "univl"]
    assert main(check) == 0
    assert main([*check, "--verify-files"]) == 1
    assert "non-finite" in capsys.readouterr().out
    assert main([*args, "--json"]) == 0 and json.loads(capsys.readouterr().out)["skipped"] == 1
    assert main([*args, "--json", "--verify-files"]) == 0
    assert json.loads(capsys.readouterr().out)["redone"] == 1
    assert np.isfinite(np.load(f, allow_pickle=False).astype(np.float32)).all()
