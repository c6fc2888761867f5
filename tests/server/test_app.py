"""``milnce.server.app``: The FastAPI app over an index."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from milnce.windows import WindowSettings

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from milnce.index import Index, IndexReader  # noqa: E402
from milnce.server import create_app  # noqa: E402
from server_fixtures import asgi_call, asgi_request, raw_get  # noqa: E402


def test_host_check_parses_the_whole_header():
    from milnce.server.app import host_name

    assert host_name("127.0.0.1:8770") == "127.0.0.1" and host_name("[::1]:80") == "[::1]"
    assert host_name("LOCALHOST") == "localhost"
    for evil in ("127.0.0.1:8770@evil.com", "evil.com#127.0.0.1:1", "127.0.0.1:80:80", "127.0.0.1:abc",
                 "a b", "[::1]x", "127.0.0.1/x"):
        assert host_name(evil) == "", evil


def test_host_header_check(live):
    _, port = live
    assert raw_get(port, "/healthz")[0] == 200
    status, _, body = raw_get(port, "/healthz", {"Host": "evil.example:80"})
    assert status == 400 and b"Host" in body


@pytest.mark.parametrize("hosts,status", [([b"127.0.0.1:8000"], 200), ([b"127.0.0.1:99999"], 400),
                                          ([b"127.0.0.1:0"], 400),
                                          ([b"localhost", b"evil.example"], 400),
                                          ([b"evil.example", b"localhost"], 400),
                                          ([b"localhost", b"localhost"], 400)])
def test_host_header_port_and_duplicates(clip_lib, hosts, status):
    app = create_app(clip_lib["index"], clip_lib["model"], allowed_hosts=["localhost", "127.0.0.1"])
    assert asgi_call(app, asgi_request("/api/config", "", [(b"host", h) for h in hosts]))[0] == status


# ----- the OpenAPI schema ------------------------------------------------------------------

SCHEMA = Path(__file__).parents[1] / "data" / "openapi.json"
BASE = Path(__file__).parents[1] / "data" / "openapi-4071740.json"


class _Windows:
    embeddings = np.ones((2, 512), np.float32)
    starts = np.array([0.0, 1.6])
    ends = starts + 3.2
    duration = 4.8


def _schema(tmp_path, model) -> dict:
    with Index.create_for(tmp_path / "ix", model.weights_id, WindowSettings.for_model(model)) as w:
        w.add_videos([("/x/a.mp4", _Windows(), 1, 1.0, "")])
    with IndexReader.open(tmp_path / "ix", model) as ix:
        spec = create_app(ix, model).openapi()
    spec["info"].pop("version")
    return json.loads(json.dumps(spec, sort_keys=True))


def test_openapi_schema_is_unchanged(tmp_path, model):
    want = json.loads(SCHEMA.read_text(encoding="utf-8"))
    want["info"].pop("version")
    assert _schema(tmp_path, model) == want


def _contained(old, new, where: str = "") -> list[str]:
    """Where ``old`` is not contained in ``new`` (dict keys kept with contained values; list items
    kept, dicts matched by their ``name``)."""
    if isinstance(old, dict):
        if not isinstance(new, dict):
            return [where]
        return [p for k, v in old.items() if k != "description"  # prose may grow
                for p in (_contained(v, new[k], f"{where}/{k}") if k in new else [f"{where}/{k}"])]
    if isinstance(old, list):
        if not isinstance(new, list):
            return [where]
        out = []
        for item in old:
            if isinstance(item, dict) and "name" in item:
                match = [n for n in new if isinstance(n, dict) and n.get("name") == item["name"]]
                out += _contained(item, match[0], f"{where}[{item['name']}]") if match else [f"{where}[{item['name']}]"]
            elif item not in new:
                out.append(f"{where}[{item!r}]")
        return out
    return [] if old == new else [f"{where}: {old!r} -> {new!r}"]


def test_the_earlier_api_is_contained_in_todays(tmp_path, model):
    base = json.loads(BASE.read_text(encoding="utf-8"))
    base["info"].pop("version")
    assert _contained(base, _schema(tmp_path, model)) == []
