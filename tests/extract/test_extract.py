"""Feature extraction: the run_jobs pipeline, shards, resumable atomic outputs, milnce extract."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from milnce.extract import (
    JobResult,
    Shard,
    VideoInput,
    VideoJob,
    check,
    collect_inputs,
    extract,
    iter_feature_files,
    read_feature_file,
    resolve_shard,
    run_jobs,
    shard_inputs,
)
from milnce.windows import WindowSettings
from video_fixtures import make_empty_video, make_video

S = WindowSettings(fps=10, num_frames=8, size=32, stride=4)
SRC = str(Path(__file__).resolve().parents[2] / "src")


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """A folder of small videos (nested) and a folder of bad ones."""
    root = tmp_path_factory.mktemp("videos")
    (root / "good" / "sub").mkdir(parents=True)
    make_video(root / "good" / "a.mp4", n=12)
    make_video(root / "good" / "sub" / "b.mp4", n=16, width=48, height=64)
    make_video(root / "good" / "c.webm", n=8, codec="libvpx-vp9", options={})
    bad = root / "bad"
    bad.mkdir()
    (bad / "text.mp4").write_text("not a video\n" * 20)
    (bad / "zero.mp4").write_bytes(b"")
    make_empty_video(bad / "empty.mp4")
    data = (root / "good" / "a.mp4").read_bytes()
    (bad / "trunc.mp4").write_bytes(data[: len(data) // 2])
    return root


def _ckpt_args(checkpoint):
    w, v = checkpoint
    return ["--weights", str(w), "--vocab", str(v), "--no-download", "--num-frames", "8", "--size", "32",
            "--stride", "4", "--quiet"]


def _files(out: Path) -> dict[str, dict[str, np.ndarray]]:
    got = {}
    for p in sorted(out.rglob("*.npz")):
        with np.load(p, allow_pickle=False) as z:
            got[str(p.relative_to(out))] = {k: z[k] for k in z.files}
    return got


def _same(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        assert sorted(a[name]) == sorted(b[name]), name
        for k in ("start", "end", "duration"):
            np.testing.assert_array_equal(a[name][k], b[name][k])
        for k in ("video_embedding", "mixed_5c"):
            if k in a[name]:
                np.testing.assert_allclose(a[name][k], b[name][k], rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------ shards


def test_shards_disjoint_complete_balanced():
    rng = np.random.default_rng(0)
    items = [VideoInput(f"/v/{i}.mp4", f"{i}.npz", int(s)) for i, s in enumerate(rng.lognormal(15, 1.5, 500))]
    for n in (1, 2, 3, 7, 16):
        shares = [shard_inputs(items, i, n) for i in range(n)]
        names = [x.path for s in shares for x in s]
        assert sorted(names) == sorted(x.path for x in items) and len(set(names)) == len(items)
        loads = [sum(x.size for x in s) for s in shares]
        assert max(loads) - min(loads) <= max(x.size for x in items)  # greedy LPT bound
        # deterministic and independent of the input order
        assert shard_inputs(items[::-1], n - 1, n) == [x for x in items if x in set(shares[-1])][::-1] or \
            sorted(x.path for x in shard_inputs(items[::-1], n - 1, n)) == sorted(x.path for x in shares[-1])
    with pytest.raises(ValueError):
        shard_inputs(items, 2, 2)


def test_resolve_shard_env():
    assert resolve_shard(None, {}) == Shard(0, 1, None, "single")
    assert resolve_shard("1/4", {}).label == "1/4"
    s = resolve_shard(None, {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "3"})
    assert (s.index, s.count, s.local_rank) == (3, 8, 3)
    s = resolve_shard(None, {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_COUNT": "10"})
    assert (s.index, s.count) == (4, 10)
    s = resolve_shard("1/2", {"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "3", "RANK": "1", "WORLD_SIZE": "2"})
    assert (s.index, s.count) == ((1 * 3 + 2) * 2 + 1, 12)
    for bad in ("2/2", "x", "1/0", "-1/3"):
        with pytest.raises(ValueError):
            resolve_shard(bad, {})
    with pytest.raises(ValueError, match="RANK"):
        resolve_shard(None, {"RANK": "x", "WORLD_SIZE": "2"})


def test_collect_inputs(tree, tmp_path):
    got = collect_inputs([tree / "good"])
    assert [x.rel for x in got] == ["a.npz", "c.npz", "sub/b.npz"]
    # list files: relative to the list's folder; csv with a video_path column; clashing names keep suffixes
    (tree / "good" / "a.webm").write_bytes((tree / "good" / "c.webm").read_bytes())
    try:
        lst = tree / "list.txt"
        lst.write_text("# videos\ngood/a.mp4\n\ngood/a.webm\n" + str(tree / "good" / "sub" / "b.mp4") + "\n")
        assert [x.rel for x in collect_inputs([lst])] == ["a.mp4.npz", "a.webm.npz", "sub/b.npz"]
    finally:
        (tree / "good" / "a.webm").unlink()
    c = tmp_path / "l.csv"
    c.write_text(f"id,video_path\n1,{tree / 'good' / 'a.mp4'}\n2,{tree / 'good' / 'a.mp4'}\n")
    assert [x.rel for x in collect_inputs([c])] == ["a.npz"]
    c.write_text("id,path\n1,x.mp4\n")
    with pytest.raises(ValueError, match="video_path"):
        collect_inputs([c])
    with pytest.raises(ValueError, match="no such"):
        collect_inputs([tmp_path / "nope"])


# ------------------------------------------------------------------------------ pipeline


def test_run_jobs_equals_encode_video_file_workers_0_and_2(model, tree):
    paths = [str(p) for p in sorted((tree / "good").rglob("*.*"))] + [str(tree / "bad" / "text.mp4")]
    jobs = [VideoJob(p, key=i) for i, p in enumerate(paths)]
    runs = {}
    for workers in (0, 2):
        res = list(run_jobs(model, jobs, S, workers=workers, batch_size=3))
        assert sorted(r.key for r in res) == list(range(len(paths)))
        runs[workers] = {r.key: r for r in res}
    for i, p in enumerate(paths):
        a, b = runs[0][i], runs[2][i]
        assert isinstance(a, JobResult)
        if "bad" in p:
            assert a.error and b.error and "text.mp4" in a.error and len(a) == 0
            continue
        ref = model.encode_video_file(p, fps=10, num_frames=8, size=32, stride=4, features=True)
        for r in (a, b):
            assert r.error is None
            np.testing.assert_array_equal(r.starts, ref.starts)
            np.testing.assert_array_equal(r.ends, ref.ends)
            # batch composition changes the kernels' rounding: compare relative to the largest value
            np.testing.assert_allclose(r.video_embedding, ref.embeddings, rtol=1e-5,
                                       atol=1e-5 * float(np.abs(ref.embeddings).max()))
            np.testing.assert_allclose(r.mixed_5c, ref.features, rtol=1e-5, atol=1e-5 * float(np.abs(ref.features).max()))
            assert r.duration == pytest.approx(ref.duration)


def test_run_jobs_explicit_starts_zero_padding(model, tree):
    from milnce.video import read_clip

    p = str(tree / "good" / "a.mp4")  # 1.2 s
    for pad in ("zeros", "repeat"):
        clip = read_clip(p, 0.3, 2.0, num_windows=4, fps=10, num_frames=8, size=32, pad=pad)
        starts = np.linspace(0.3, 2.0 - 0.8, 4)
        if pad == "zeros":  # frames past the end are black
            assert int(clip.frames[-1, :, -1].max()) == 0
        ref = model.encode_video(clip.frames, features=True)
        (r,) = run_jobs(model, [VideoJob(p, key="k", starts=starts)], S, pad=pad, workers=0, features=True)
        assert r.key == "k" and r.error is None
        np.testing.assert_array_equal(r.starts, starts)
        np.testing.assert_allclose(r.video_embedding, ref[0].numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(r.mixed_5c, ref[1].numpy(), rtol=1e-5, atol=1e-5)
    (r,) = run_jobs(model, [VideoJob(p, starts=[9.0])], S, workers=0)
    assert r.error and "past the end" in r.error


def test_long_video_split_across_decoders_equals_whole(model, tmp_path):
    """Fewer videos than decoders: a long one is split into parts decoded side by side (seeking
    to keyframes, B-frames in between); windows, times and values equal one whole pass."""
    p = make_video(tmp_path / "long.mp4", n=150, rate=25, width=64, height=48,
                   options={"crf": "0", "preset": "ultrafast", "g": "10", "bf": "2"})
    (whole,) = run_jobs(model, [VideoJob(str(p))], S, workers=0, batch_size=4)
    stats: dict[str, float] = {}
    (split,) = run_jobs(model, [VideoJob(str(p))], S, workers=2, batch_size=4, min_part_s=1.0, stats=stats)
    assert whole.error is None and split.error is None and len(whole) == 14
    np.testing.assert_array_equal(split.starts, whole.starts)
    np.testing.assert_array_equal(split.ends, whole.ends)
    assert split.duration == whole.duration
    top = float(np.abs(whole.video_embedding).max())
    np.testing.assert_allclose(split.video_embedding, whole.video_embedding, rtol=1e-5, atol=1e-5 * top)
    np.testing.assert_allclose(split.mixed_5c, whole.mixed_5c, rtol=1e-5, atol=1e-5 * float(np.abs(whole.mixed_5c).max()))
    assert stats["parts"] == 4


def test_split_part_that_comes_up_short_asks_for_a_whole_pass(tmp_path):
    """The decoder checks each part against what the header promised; a mismatch -> redo whole."""
    import queue
    import threading

    from milnce.video.sources import DecodeTask, default_source
    from milnce.video.worker import Done, Redo, Window, decode_loop

    p = make_video(tmp_path / "v.mp4", n=30, rate=10)  # 3 s: 6 windows of 8 frames every 4
    slots = torch.empty((4, 3, 8, 32, 32), dtype=torch.uint8)
    for part, want in (((0, 99), Redo), ((2, None), Done), ((0, 3), Done)):
        tasks, free, ready = queue.Queue(), queue.Queue(), queue.Queue()
        for i in range(4):
            free.put(i)
        tasks.put(DecodeTask(7, str(p), None, 0.8 if part[0] else None, None if part[1] != 3 else 1.6, part))
        tasks.put(None)
        stop = threading.Event()
        t = threading.Thread(target=decode_loop, args=(0, tasks, free, ready, slots, S, "repeat", 1, stop, None,
                                                         default_source))
        t.start()
        msgs = []
        while not msgs or not isinstance(msgs[-1], (Done, Redo)):
            m = ready.get(timeout=30)
            msgs.append(m)
            if isinstance(m, Window):
                free.put(m.slot)
        stop.set()
        t.join(10)
        assert isinstance(msgs[-1], want), (part, msgs[-1])
        wins = [m for m in msgs if isinstance(m, Window)]
        if want is Done and part[0] == 2:  # windows numbered and timed as in the whole video
            assert [m.k for m in wins][:2] == [2, 3] and wins[0].start == 0.8 and wins[0].end == 1.6
        if part == (0, 3):
            assert len(wins) == 3 and msgs[-1].n == 3


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


# ------------------------------------------------------------------------------ extract


def test_extract_skip_redo_failures(model, tree, tmp_path):
    out = tmp_path / "out"
    rep = extract([tree / "good", tree / "bad"], out, model, S, workers=1)
    assert (rep.extracted, rep.failed, rep.skipped) == (3, 4, 0)
    with open(out / "failures.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(Path(r["path"]).name for r in rows) == ["empty.mp4", "text.mp4", "trunc.mp4", "zero.mp4"]
    assert all(r["reason"] for r in rows)
    ff = read_feature_file(out / "a.npz")
    ref = model.encode_video_file(tree / "good" / "a.mp4", fps=10, num_frames=8, size=32, stride=4, features=True)
    np.testing.assert_allclose(ff.video_embedding, ref.embeddings, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ff.mixed_5c, ref.features, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(ff.start, ref.starts)
    assert ff.meta["weights"] == model.weights_id and ff.meta["settings"]["stride"] == 4
    assert ff.video_path == str(tree / "good" / "a.mp4")
    assert sorted(Path(v).name for v, _ in iter_feature_files(out)) == ["a.mp4", "b.mp4", "c.webm"]
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.npz")}
    rep = extract([tree / "good"], out, model, S, workers=0)
    assert (rep.skipped, rep.extracted) == (3, 0)
    assert mtimes == {p: p.stat().st_mtime_ns for p in out.rglob("*.npz")}
    # changed settings or features: redone, never mixed
    rep = extract([tree / "good"], out, model, S.with_(stride=8), workers=0)
    assert (rep.extracted, rep.redone) == (3, 3)
    rep = extract([tree / "good"], out, model, S.with_(stride=8), features=["video_embedding"], workers=0)
    assert rep.redone == 3 and read_feature_file(out / "a.npz").mixed_5c is None
    # a changed video is redone
    os.utime(tree / "good" / "a.mp4", ns=(time.time_ns(), time.time_ns()))
    rep = extract([tree / "good"], out, model, S.with_(stride=8), features=["video_embedding"], workers=0)
    assert (rep.redone, rep.skipped) == (1, 2)
    c = check(out, [tree / "good", tree / "bad"])
    assert c.done == 3 and len(c.missing) == 4 and not c.complete and len(c.failed) == 0  # new failures.csv: none
    assert not list(out.rglob(".*"))


def test_disk_full_is_a_clear_error_and_leaves_nothing_partial(model, tree, tmp_path, monkeypatch):
    import errno

    from milnce.extract import StoreError, store

    out = tmp_path / "full"
    real = np.savez

    def full(f, **arrays):
        f.write(b"PK\x03\x04partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store.np, "savez", full)
    with pytest.raises(StoreError, match="No space left"):
        extract([tree / "good" / "a.mp4"], out, model, S, workers=0)
    assert [p.name for p in out.iterdir()] == ["failures.csv"]  # no .npz, no temporary file
    monkeypatch.setattr(store.np, "savez", real)
    assert extract([tree / "good" / "a.mp4"], out, model, S, workers=0).extracted == 1
    (out / "a.npz").write_bytes(b"garbage")
    with pytest.raises(StoreError, match="a.npz"):
        read_feature_file(out / "a.npz")
    assert extract([tree / "good" / "a.mp4"], out, model, S, workers=0).redone == 1  # damaged: redone


def test_cli_extract_exit_codes_and_check(checkpoint, tree, tmp_path, capsys):
    from milnce.cli import main

    out = tmp_path / "o"
    rc = main(["extract", str(tree / "good"), str(tree / "bad" / "trunc.mp4"), "--out", str(out), "--workers", "0",
               *_ckpt_args(checkpoint)])
    err = capsys.readouterr().err
    assert rc == 1 and "trunc.mp4" in err and "1 failed" in err
    rc = main(["extract", "--check", str(out), str(tree / "good"), str(tree / "bad" / "trunc.mp4")])
    text = capsys.readouterr().out
    assert rc == 1 and "3 of 4" in text and "trunc.mp4" in text
    rc = main(["extract", "--check", str(out), str(tree / "good"), "--json"])
    assert rc == 0
    rc = main(["extract", str(tree / "good"), "--out", str(out), "--shard", "3/2", *_ckpt_args(checkpoint)])
    assert rc == 2 and "shard" in capsys.readouterr().err


def _run_cli(args, env=None, **kw):
    e = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    e.update(env or {})
    return subprocess.Popen([sys.executable, "-m", "milnce.cli", *args], env=e, **kw)


def _children(pid: int) -> set[int]:
    out: set[int] = set()
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            kids = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        for k in map(int, kids):
            if k not in out:
                out.add(k)
                todo.append(k)
    return out


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc")
def test_kill9_then_rerun_equals_clean_run_and_two_writers(checkpoint, model, tree, tmp_path):
    src = tmp_path / "many"
    src.mkdir()
    for i in range(5):
        shutil.copy(tree / "good" / ("a.mp4" if i % 2 else "sub/b.mp4"), src / f"v{i}.mp4")
    clean = tmp_path / "clean"
    extract([src], clean, model, S, workers=0, batch_size=2)
    args = ["extract", str(src), "--workers", "1", "--batch-size", "2", *_ckpt_args(checkpoint)]
    out = tmp_path / "out"
    p = _run_cli([*args, "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    t0 = time.time()
    while not list(out.glob("*.npz")) and time.time() - t0 < 60 and p.poll() is None:
        time.sleep(0.02)
    kids = _children(p.pid)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert p.returncode == -signal.SIGKILL, p.stderr.read().decode()
    for _ in range(100):  # the decoding processes follow their parent
        if not any(Path(f"/proc/{k}").exists() and "zombie" not in Path(f"/proc/{k}/status").read_text().lower()
                   for k in kids):
            break
        time.sleep(0.1)
    else:
        pytest.fail("decoding processes outlived a kill -9 of their parent")
    for f in out.glob("*.npz"):  # whatever exists is complete
        read_feature_file(f)
    # two processes on the same (whole) share at once: both finish, files stay complete
    args[args.index("--workers") + 1] = "0"
    procs = [_run_cli([*args, "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for _ in range(2)]
    for q in procs:
        _, err = q.communicate(timeout=240)
        assert q.returncode == 0, err.decode()
    _same(_files(clean), _files(out))
    assert sorted(os.listdir(out)) == sorted(os.listdir(clean))  # no temporary files left


@pytest.mark.slow
def test_torchrun_two_ranks_equal_one(checkpoint, model, tree, tmp_path):
    pytest.importorskip("torch.distributed.run")
    one = tmp_path / "one"
    extract([tree / "good"], one, model, S, workers=0)
    two = tmp_path / "two"
    e = dict(os.environ, PYTHONPATH=SRC, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "-m", "milnce.cli", "extract", str(tree / "good"), "--out", str(two), "--workers", "0",
                        *_ckpt_args(checkpoint)], env=e, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    _same(_files(one), _files(two))
    assert sorted(x for x in os.listdir(two) if x.endswith(".csv")) == ["failures-rank0.csv", "failures-rank1.csv"]
    assert check(two, [tree / "good"]).complete


# ------------------------------------------------------------------------------ benchmarks


def _bench(name):
    import importlib.util

    bench_dir = Path(__file__).resolve().parents[2] / "benchmarks"
    sys.path.insert(0, str(bench_dir))
    try:
        spec = importlib.util.spec_from_file_location(name, bench_dir / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(bench_dir))
    return mod


@pytest.mark.slow
def test_bench_gpu_args_and_cpu_dry_run(tmp_path, capsys):
    bench = _bench("bench_gpu")
    a = bench.parse_args(["--quick"])
    assert (a.batch, a.frames, a.size, a.rounds, a.videos, a.no_compile) == (64, 32, 224, 3, 8, True)
    with pytest.raises(SystemExit):
        bench.parse_args(["--batch", "0"])
    if not torch.cuda.is_available():
        assert bench.main(["--quick"]) == 2
        assert "needs a CUDA GPU" in capsys.readouterr().err
    assert bench.main(["--dry-run", "--workdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "float64" in out and "fast bf16" in out and "extraction / min(bound, decode)" in out


@pytest.mark.slow
def test_bench_decode_runs(tmp_path):
    """benchmarks/bench_decode.py end to end on tiny videos (raw decoders vs the pipeline)."""
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_decode.py"
    r = subprocess.run([sys.executable, str(script), "--videos", "2", "--seconds", "1", "--width", "64", "--height", "48",
                        "--workers", "1", "--workdir", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "pipeline/raw" in r.stdout and "after start-up/raw" in r.stdout
