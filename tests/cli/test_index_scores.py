"""Same query, same score: a query's text embedding and its scores are bit for bit the same alone
or in a batch, in the CLI (queries encoded together) and the web API (one at a time) (issue 24 item 7)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from milnce.cli import main
from video_fixtures import make_video

QUERIES = ["a red square moving", "a blue ball", "open the door", "cut tomato", "pour water into bowl",
           "the man is cooking", "green ball", "playing guitar", "car drifting", "waterfall"]

pytestmark = pytest.mark.usefixtures("reuse_model")  # CLI commands reuse the loaded model


def test_text_embedding_is_the_same_alone_and_in_a_batch(model):
    batch = model.encode_text(QUERIES).numpy()
    for i, q in enumerate(QUERIES):
        alone = model.encode_text([q]).numpy()[0]
        assert np.array_equal(alone, batch[i]), q  # bit for bit, not approximately
        assert np.array_equal(model.encode_text(q).numpy()[0], alone)
    # position in the batch and neighbours do not matter either
    shuffled = model.encode_text(QUERIES[::-1] + QUERIES[:3]).numpy()
    assert np.array_equal(shuffled[: len(QUERIES)][::-1], batch)


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory, model) -> Path:
    from milnce.index import build_index

    root = tmp_path_factory.mktemp("scores")
    vids = root / "v"
    vids.mkdir()
    make_video(vids / "a.mp4", n=40, marker=True)
    make_video(vids / "b.mp4", n=30, rate=10, width=48, height=48)
    build_index([vids], root / "idx", model, num_frames=8, size=32, workers=0, progress=False)
    return root / "idx"


def _cli(index_dir: Path, queries: list[str], wargs: list[str], capsys: pytest.CaptureFixture[str],
         *extra: str) -> list[list]:
    assert main(["search", "--index", str(index_dir), *queries, "-k", "20", *(extra or ["--no-merge"]), "--json", *wargs]) == 0
    out = json.loads(capsys.readouterr().out)
    return [[(m["path"], m["start"], m["end"], m["score"]) for m in r["moments"]] for r in out["results"]]


def test_cli_batch_and_alone_give_the_same_scores(index_dir, wargs, capsys):
    together = _cli(index_dir, QUERIES, wargs, capsys)
    for q, res in zip(QUERIES[:3], together):
        assert _cli(index_dir, [q], wargs, capsys) == [res], q
    merged = _cli(index_dir, QUERIES, wargs, capsys, "--videos")
    assert _cli(index_dir, QUERIES[4:5], wargs, capsys, "--videos") == merged[4:5]


def test_library_batch_and_alone_give_the_same_scores(index_dir, model):
    from milnce.index import Index

    with Index.open(index_dir, model) as index:
        for exact in (True, "scan"):
            together = index.search(QUERIES, k=50, merge=False, exact=exact)
            for q, res in zip(QUERIES, together):
                alone = index.search(q, k=50, merge=False, exact=exact)
                assert [(m.video_id, m.start, m.score) for m in alone] == [(m.video_id, m.start, m.score) for m in res]


def test_cli_and_api_give_the_same_scores(index_dir, model, wargs, capsys):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from milnce.index import Index
    from milnce.server import create_app
    from milnce.server.service import SearchService

    together = _cli(index_dir, QUERIES, wargs, capsys)
    batch = model.encode_text(QUERIES).numpy()
    with Index.open(index_dir, model) as index, TestClient(create_app(index, model)) as client:
        service = SearchService(index, model)
        for i, (q, res) in enumerate(zip(QUERIES, together)):
            assert np.array_equal(service.text_embedding(q), batch[i]), q  # the server embeds one at a time
            body = client.get("/api/search", params={"q": q, "k": 20, "merge": "false"}).json()
            api = [(m["path"], m["start"], m["end"], m["score"]) for m in body["results"]]
            # the API shows scores to 5 decimals: the same moments, in the same order, the same score
            assert api == [(p, a, b, round(sc, 5)) for p, a, b, sc in res], q
            curve = client.get(f"/api/videos/{body['results'][0]['video_id']}/curve", params={"q": q}).json()
            best = max(curve["scores"])
            assert best == round(max(sc for p, _, _, sc in res if p == body["results"][0]["path"]), 4)
