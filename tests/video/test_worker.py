"""``milnce.video.worker``: The decoding side of the pipeline."""

from __future__ import annotations

import torch

from video_fixtures import SMALL_WINDOWS as S
from video_fixtures import make_video


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
