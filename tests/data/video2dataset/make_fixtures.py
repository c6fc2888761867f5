"""Make the video2dataset 1.3.0 fixture shards of tests/test_train_video2dataset.py.

Run with an interpreter that has ``video2dataset==1.3.0`` installed (its own venv, not the
project's), from anywhere:

    python3.10 -m venv /tmp/v2d && /tmp/v2d/bin/pip install video2dataset==1.3.0
    /tmp/v2d/bin/python tests/data/video2dataset/make_fixtures.py

It writes three webdataset shards next to itself, each made by video2dataset's own downloading,
clipping and writing code, unmodified:

- ``default/00000.tar``: config ``config_default.yaml`` (video2dataset's ``default`` config with
  one process): whole videos, YouTube subtitles in ``KEY.json`` under ``yt_meta_dict``;
- ``clipped/00000.tar``: config ``config_clipped.yaml`` (``captions_are_subtitles: True``): one
  clip per subtitle line, each clip's own subtitles under ``clip_subtitles`` and its caption in
  ``KEY.txt`` as video2dataset writes it (the Python repr of ``{"en": [...]}``);
- ``caption_col/00000.tar``: config ``config_caption_col.yaml``, a CSV with a ``caption``
  column and plain local paths (video2dataset reads them itself; ``file://`` URLs fail inside
  video2dataset): ``KEY.txt`` is that caption.

What stands in for the network: video2dataset gets subtitles only through yt-dlp's YouTube
metadata, which cannot be reached here. So this script puts a small local module named
``yt_dlp`` first on the path of the video2dataset run (written into a temporary folder; see
``FAKE_YT_DLP`` below). Its ``YoutubeDL.extract_info`` returns the metadata YouTube would
(``requested_subtitles[lang]["url"]``), pointing at WebVTT files that this script serves from
127.0.0.1, and its ``YoutubeDL.download`` fetches the video from the same local server. Everything
after that (video2dataset fetching the WebVTT with ``requests``, ``webvtt`` parsing, clipping
with ffmpeg, the tar writer) is video2dataset's own code.

The videos are generated with the ``ffmpeg`` command line: 3 s, 64 x 64 px, 10 fps, every frame a
key frame (so video2dataset's default ``precision: low`` stream-copy clipping cuts exactly where
asked).
"""

from __future__ import annotations

import csv
import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

HERE = Path(__file__).resolve().parent

# video id -> (ffmpeg test pattern, WebVTT cues (start, end, lines))
VIDEOS = {
    "vidA": ("testsrc", [("00:00:00.000", "00:00:01.000", ["add salt"]),
                         ("00:00:01.000", "00:00:02.500", ["stir the", "soup"])]),
    "vidB": ("smptebars", [("00:00:00.500", "00:00:02.000", ["cut the onions"]),
                           ("00:00:02.000", "00:00:03.000", ["serve"])]),
}
CAPTIONS = {"vidA": "a test pattern", "vidB": "colour bars"}  # the caption_col fixture's CSV column

FAKE_YT_DLP = '''"""A stand-in for yt-dlp (fixture generation only): metadata and media from 127.0.0.1."""
import json, os, shutil, urllib.request

_SERVER = os.environ["FAKE_YT_SERVER"]  # http://127.0.0.1:PORT


def _vid(url):
    return url.rsplit("=", 1)[-1]


class YoutubeDL:
    def __init__(self, params=None):
        self.params = dict(params or {})

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def download(self, url):
        url = url[0] if isinstance(url, (list, tuple)) else url
        with urllib.request.urlopen(f"{_SERVER}/{_vid(url)}.mp4") as r, open(self.params["outtmpl"], "wb") as f:
            shutil.copyfileobj(r, f)
        return 0

    def extract_info(self, url, download=False):
        vid = _vid(url)
        langs = self.params.get("subtitleslangs") or ["en"]
        subs = {lang: [{"ext": "vtt", "url": f"{_SERVER}/{vid}.{lang}.vtt"}] for lang in ("en",)}
        requested = {lang: {"ext": "vtt", "url": f"{_SERVER}/{vid}.{lang}.vtt"} for lang in langs if lang in subs}
        return {"id": vid, "title": f"video {vid}", "duration": 3, "webpage_url": url,
                "subtitles": subs, "automatic_captions": {}, "requested_subtitles": requested,
                "formats": [], "requested_formats": [], "thumbnails": []}
'''

DEFAULT = {
    "subsampling": {},
    "reading": {"yt_args": {"download_size": 360, "download_audio_rate": 44100,
                            "yt_metadata_args": {"writesubtitles": "all", "subtitleslangs": ["en"],
                                                 "writeautomaticsub": True, "get_info": True}},
                "timeout": 60, "sampler": None},
    "storage": {"number_sample_per_shard": 1000, "oom_shard_count": 5, "captions_are_subtitles": False},
    "distribution": {"processes_count": 1, "thread_count": 1, "subjob_size": 1000, "distributor": "multiprocessing"},
}


def _vtt(cues: list[tuple[str, str, list[str]]]) -> str:
    return "WEBVTT\n\n" + "".join(f"{s} --> {e}\n" + "\n".join(lines) + "\n\n" for s, e, lines in cues)


def _make_video(pattern: str, path: Path) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"{pattern}=size=64x64:rate=10:duration=3",
                    "-c:v", "libx264", "-g", "1", "-pix_fmt", "yuv420p", "-preset", "veryfast", "-crf", "35",
                    "-an", str(path)], check=True)


def _yaml(config: dict) -> str:
    return json.dumps(config, indent=2) + "\n"  # JSON is YAML: OmegaConf.load reads it


def _run(name: str, config: dict, rows: list[dict[str, str]], columns: list[str], fake: Path, server: str,
         **kwargs: str) -> None:
    cfg_path = HERE / f"config_{name}.yaml"
    cfg_path.write_text(_yaml(config))
    out = HERE / name
    shutil.rmtree(out, ignore_errors=True)
    with tempfile.TemporaryDirectory() as tmp:
        listing = Path(tmp) / "videos.csv"
        with open(listing, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=columns)
            w.writeheader()
            w.writerows(rows)
        code = ("import sys; from video2dataset import video2dataset; "
                "video2dataset(url_list=sys.argv[1], output_folder=sys.argv[2], output_format='webdataset', "
                "input_format='csv', url_col='url', config=sys.argv[3], tmp_dir=sys.argv[4], "
                f"**{kwargs!r})")
        env = dict(os.environ, PYTHONPATH=str(fake), FAKE_YT_SERVER=server)
        subprocess.run([sys.executable, "-c", code, str(listing), str(out), str(cfg_path), tmp], env=env, check=True)
    for junk in out.glob("*"):  # keep the shard; drop the parquet, stats and logs
        if junk.suffix != ".tar" or junk.is_dir():
            shutil.rmtree(junk) if junk.is_dir() else junk.unlink()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        media = root / "media"
        media.mkdir()
        for vid, (pattern, cues) in VIDEOS.items():
            _make_video(pattern, media / f"{vid}.mp4")
            (media / f"{vid}.en.vtt").write_text(_vtt(cues))
        fake = root / "fake"
        (fake / "yt_dlp").mkdir(parents=True)
        (fake / "yt_dlp" / "__init__.py").write_text(FAKE_YT_DLP)
        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(media))
        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        server = f"http://127.0.0.1:{httpd.server_address[1]}"
        try:
            yt_rows = [{"url": f"{server}/watch?v={vid}"} for vid in VIDEOS]
            _run("default", DEFAULT, yt_rows, ["url"], fake, server)
            clipped = json.loads(json.dumps(DEFAULT))
            clipped["storage"]["captions_are_subtitles"] = True
            _run("clipped", clipped, yt_rows, ["url"], fake, server)
            rows = [{"url": str(media / f"{vid}.mp4"), "caption": CAPTIONS[vid]} for vid in VIDEOS]
            _run("caption_col", DEFAULT, rows, ["url", "caption"], fake, server, caption_col="caption")
        finally:
            httpd.shutdown()
    total = sum(p.stat().st_size for p in HERE.rglob("*.tar"))
    print(f"wrote {sorted(str(p.relative_to(HERE)) for p in HERE.rglob('*.tar'))}: {total} bytes")


if __name__ == "__main__":
    main()
