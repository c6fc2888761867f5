"""Decode -> batch -> model: the one embedding path (``run_jobs``; ``encode_video_file``,
``localize``, ``embed-video``, ``extract``, ``index`` and ``eval`` all go through it).

``run_jobs(model, jobs, settings)`` embeds the windows of many videos. Decoding runs in worker
processes (``workers``; one decoder thread each by default), each taking whole videos from a
shared task queue (so long and short videos balance themselves) and writing each window as
uint8 into a slot of a shared-memory ring; only slot numbers travel through the queues, as the
typed messages of ``milnce.video.worker``. The main process (``Scheduler``) gathers ready
windows of any videos into batches of ``batch_size``, runs the model and hands the slots back.
On CUDA the gather goes into pinned memory, the copy to the device is non-blocking and the next
batch is queued before the previous one's outputs are fetched, so the device is never idle while
windows are ready; batches keep one shape (a short last batch is padded) and each model call
runs under a scoped ``cudnn.flags(benchmark=True)`` (the process-wide flag is left alone).
``workers=0`` decodes in a background thread of the calling process.

Decoder hook: ``source=`` takes a window source factory (``milnce.video.sources``): a picklable
callable ``(task, settings, pad, threads, warn) -> iterable of (k, start, end, uint8 frames)``
with ``3 x T x S x S`` or ``T x S x S x 3`` frames. The default is ``source_for(settings)``:
PyAV (``default_source``) or, with ``settings.decoder == "ffmpeg"``, the ffmpeg-exact frames
(``ffmpeg_source``, never split: it is not ``splittable``); another decoder plugs in there
without touching the scheduler.

A video that cannot be read yields a ``VideoWindows`` with ``error`` set and never stops the
run; a decoder process that dies fails only the video it was on and is replaced.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Iterable, Sequence

from ..errors import UsageError
from ..protocols import VideoEncoder
from ..runoptions import (
    MAX_BATCH,
    RunOptions,
    default_workers,
    resolve_batch_size,
    resolve_run_options,
    resolve_workers,
)
from ..windows import DEFAULT_BATCH_CPU, DEFAULT_BATCH_CUDA, WindowSettings, check_pad
from .decoders import Decoders, split_parts
from .jobs import VideoJob
from .result import VideoWindows
from .scheduler import Scheduler
from .sources import WindowSourceFactory, source_for, splittable

__all__ = ["VideoJob", "run_jobs", "default_workers", "resolve_batch_size", "resolve_workers", "MIN_PART_S",
           "DEFAULT_BATCH_CPU", "DEFAULT_BATCH_CUDA", "MAX_BATCH", "RunOptions"]

MIN_PART_S = 20.0  # a video is split into parts of at least this long (each part seeks to a keyframe)


def _check_ring(nslots: int, s: WindowSettings) -> None:
    """The uint8 window ring is allocated up front: refuse one larger than this machine's memory."""
    need = nslots * 3 * s.num_frames * s.size * s.size
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):  # pragma: no cover - not POSIX
        return
    if need > total:
        raise UsageError(f"a batch size this large needs {need / 2**30:.1f} GiB for its {nslots} windows "
                         f"of decoded frames, more than this machine's {total / 2**30:.1f} GiB")


def run_jobs(model: VideoEncoder, jobs: Iterable[VideoJob | str | os.PathLike[str]], settings: WindowSettings, *,
             pad: str = "repeat", features: bool = True, batch_size: int | None = None, workers: int | None = None,
             progress: bool | str = False, decode_threads: int | None = None, stats: dict[str, float] | None = None,
             min_part_s: float = MIN_PART_S, source: WindowSourceFactory | None = None,
             options: RunOptions | None = None) -> Generator[VideoWindows, None, None]:
    """Embed the windows of many videos; yields one ``VideoWindows`` per job, in completion order.

    ``model``: a ``MILNCE`` (``load_model``) or any ``protocols.VideoEncoder``; its device is used.
    ``settings``: the windows (``WindowSettings.for_model(model, ...)``). ``pad``: ``"repeat"``,
    ``"loop"`` or ``"zeros"`` (black frames past the end of a video). ``features``: also return
    ``mixed_5c``. ``batch_size``: windows per model call (default ``DEFAULT_BATCH_CUDA`` on CUDA,
    ``DEFAULT_BATCH_CPU`` on the CPU).
    ``workers``: decoding processes (default: available cores minus one; 0 = a thread of this
    process). ``decode_threads``: decoder threads per video (default 1 with workers, automatic
    without). ``progress``: a tqdm bar on stderr (a string is its label). ``stats``: filled with
    ``wall_s``, ``model_s``, ``wait_s`` (time the model side waited for windows), ``windows``,
    ``videos``, ``batches``, ``parts`` (decoding tasks of split videos), ``first_window_s`` and
    ``last_window_s``. Jobs are read lazily (a generator is fine). ``close()`` the returned
    generator to stop the decoders early. With fewer videos than ``2 * workers``, videos longer
    than ``2 * min_part_s`` seconds are split into parts decoded side by side (same windows, same
    values: each part's windows are checked against the whole video's, else it is decoded whole).
    ``source``: the window source factory (default ``source_for(settings)``; see the module
    docstring); one that is not ``splittable`` keeps every video whole. ``options``: a resolved
    ``milnce.runoptions.RunOptions`` (batch size, workers, decoder threads) instead of the three
    loose values (giving both is a ``UsageError``).
    """
    if not isinstance(settings, WindowSettings):
        raise UsageError(f"settings must be a WindowSettings, got {type(settings).__name__}")
    check_pad(pad)
    source = source or source_for(settings)
    if not splittable(source):
        min_part_s = float("inf")
    if options is None:  # the loose values, resolved by the one function
        options = resolve_run_options({"batch_size": batch_size, "workers": workers, "decode_threads": decode_threads},
                                        device=model.device)
    elif (batch_size, workers, decode_threads) != (None, None, None):
        raise UsageError("give either options= (RunOptions) or batch_size/workers/decode_threads, not both")
    batch, nworkers, threads = options.batch_size, options.workers, options.threads
    total = len(jobs) if isinstance(jobs, Sequence) else None
    nslots = batch + 2 * max(nworkers, 1) + 2  # a batch waiting to launch + two windows per decoder
    _check_ring(nslots, settings)
    decoders = Decoders(nworkers, nslots, settings, pad, threads, source)
    sched = Scheduler(model, decoders, settings, features=features, batch_size=batch, progress=progress,
                      total=total, stats=stats, split=lambda job, n: split_parts(job, settings, n, float(min_part_s)))
    return sched.run(iter(jobs))

