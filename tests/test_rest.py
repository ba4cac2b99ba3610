"""The REST API (``/api/v1``) over HTTP, on the same server as the page: every endpoint, its errors and its login.

The collection is the small Shapes test split of ``conftest.served``, so the library's own answers are the
expected ones.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from mmodal.app.rest import PREFIX
from mmodal.app.server import Collection, ServeOptions, launch, parse_auth
from mmodal.data.audio import read_audio
from mmodal.data.generate import generate_shapes
from mmodal.pipeline import index_collection
from mmodal.search import Query
from mmodal.shapes.semantics import parse_statement
from tests.conftest import free_port

# A server or the model's worker processes, end to end.
pytestmark = pytest.mark.slow


@pytest.fixture()
def api(served):
    _, url, _ = served
    with httpx.Client(base_url=url.rstrip("/") + PREFIX, timeout=120) as client:
        yield client


def _files(path: Path, field: str = "image") -> dict:
    return {field: (path.name, path.read_bytes())}


def _refused(reply: httpx.Response, status: int, words: str) -> None:
    """An error answers JSON with its status and a message in words, and shows nothing of the server's inside (a
    traceback, where it keeps uploads)."""
    assert reply.status_code == status, reply.text
    body = reply.json()
    assert body["status"] == status and words in body["error"], body
    assert "Traceback" not in reply.text and "mmodal-uploads" not in body["error"] and "/upload" not in body["error"]


def test_text_search_ranks_as_the_library_and_pages_through_the_ranking(served, api, dataset):
    collection, _, _ = served
    query = max(dataset.queries, key=lambda q: len(q.relevant))
    expected = collection.searcher().search(Query(text=query.text), k=10, rerank=True)
    first = api.get("/search", params={"q": query.text, "k": 5}).json()
    second = api.get("/search", params={"q": query.text, "k": 5, "offset": first["next_offset"]}).json()
    assert first["offset"] == 0 and first["next_offset"] == 5 and second["offset"] == 5
    rows = first["results"] + second["results"]
    assert [row["path"] for row in rows] == [r.path for r in expected]
    assert [row["rerank_score"] for row in rows] == pytest.approx([r.rerank_score for r in expected], abs=2e-3)
    assert first["unknown_words"] == [] and "heard" not in first
    image = api.get(rows[0]["image_url"].removeprefix(PREFIX))
    assert image.status_code == 200 and image.content == Path(rows[0]["path"]).read_bytes()


NOWHERE = (
    "a red circle left of a blue square",
    "four big green hexagons",
    "three small white stars and a big red triangle",
    "a big yellow star above a small purple hexagon",
)


def test_a_search_with_nothing_that_fits_says_so_and_shows_the_closest(api, dataset):
    text = next(t for t in NOWHERE if not any(parse_statement(t).holds(r.scene) for r in dataset.images))
    reply = api.get("/search", params={"q": text, "k": 3}).json()
    assert len(reply["results"]) == 3
    assert reply["message"].startswith(f'nothing matches "{text}"') and "closest" in reply["message"]
    assert max(r["rerank_score"] for r in reply["results"]) < 0.5
    fits = next(q for q in dataset.queries if q.kind == "binding" and len(q.relevant) >= 3)
    assert api.get("/search", params={"q": fits.text, "k": 3}).json()["message"] is None


def test_search_by_example_image_voice_and_negatives(served, api, dataset):
    collection, _, _ = served
    picture = (dataset.root / dataset.images[3].file).resolve()
    by_image = api.post("/search", data={"k": 3}, files=_files(picture)).json()
    assert by_image["results"][0]["path"] == str(picture)

    spoken = next((q for q in dataset.queries if q.audio), None)
    if spoken is not None:
        by_voice = api.post("/search", data={"k": 4}, files=_files(dataset.root / spoken.audio, "audio")).json()
        words, transcript = collection.searcher().listen(Query(audio=read_audio(dataset.root / spoken.audio)))
        assert by_voice["transcript"] == transcript.text and len(by_voice["results"]) == 4
        assert by_voice["searched_by"] == ("sound" if words.audio is not None else "words")

    plain = api.get("/search", params={"q": "a circle", "k": 10}).json()["results"]
    negated = api.get("/search", params=[("q", "a circle"), ("not", "a red circle"), ("k", 10)]).json()["results"]
    expected = collection.searcher().search(Query(text="a circle", negative=("a red circle",)), k=10)
    assert [r["path"] for r in negated] == [r.path for r in expected] != [r["path"] for r in plain]


def test_ask_answers_as_the_model_and_names_words_it_does_not_know(api, dataset, model):
    record = next(q for q in dataset.questions if q.type == "count")
    picture = dataset.root / next(r.file for r in dataset.images if r.id == record.image_id)
    reply = api.post("/ask", data={"question": record.question, "alternatives": 2}, files=_files(picture)).json()
    with Image.open(picture) as opened:
        rgb = opened.convert("RGB")
    expected = model.ask([rgb], [record.question], alternatives=2)[0]
    assert reply["answer"] == expected.answer
    assert reply["confidence"] == pytest.approx(expected.confidence, abs=1e-4)  # 0 to 1, as every API gives it
    assert len(reply["alternatives"]) == 2 and reply["note"] is None and reply["unknown_words"] == []

    odd = api.post("/ask", data={"question": "how many zorbly squares are there?"}, files=_files(picture)).json()
    assert odd["unknown_words"] == ["zorbly"] and "zorbly" in odd["note"]


def test_bad_requests_get_a_status_and_a_message(api, tmp_path):
    _refused(api.get("/search", params={"q": ""}), 422, "q")
    _refused(api.get("/search", params={"q": "a red circle " * 100}), 422, "q")
    _refused(api.get("/search", params={"q": "a circle", "k": 0}), 422, "k")
    _refused(api.get("/search", params={"q": "a circle", "offset": 5000}), 422, "offset")
    _refused(api.get("/search", params={"q": "a circle", "k": 50, "offset": 990}), 400, "rank 1000")
    _refused(api.post("/search", data={"k": 3}), 400, "words, an example image or a voice clip")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
    _refused(api.post("/search", files=_files(broken)), 400, "cannot use broken.png as an image")
    _refused(api.post("/ask", data={"question": "what?"}, files=_files(broken)), 400, "cannot use broken.png")
    notes = tmp_path / "notes.wav"
    notes.write_text("not a sound", encoding="utf-8")
    _refused(api.post("/search", files=_files(notes, "audio")), 400, "cannot read notes.wav as audio")
    good = tmp_path / "good.png"
    Image.new("RGB", (64, 64), "white").save(good)
    _refused(api.post("/ask", data={"question": "   "}, files=_files(good)), 400, "empty")
    _refused(api.post("/ask", files=_files(good)), 422, "question")
    _refused(api.get("/images/987654"), 404, "no indexed image has the id 987654")
    _refused(api.get("/index/jobs/987654"), 404, "no job 987654")
    _refused(api.get("/no/such/endpoint"), 404, "openapi.json lists what there is")
    _refused(api.delete("/index"), 405, "no DELETE /api/v1/index here")


def test_adding_folders_runs_as_a_job_and_refuses_what_is_not_a_folder_of_pictures(served, api, tmp_path):
    collection, _, _ = served
    before = api.get("/index").json()
    assert before == collection.stats()
    _refused(api.post("/index/folders", json={"folder": str(tmp_path / "missing")}), 400, "no folder at")
    single = tmp_path / "one.png"
    Image.new("RGB", (64, 64), "red").save(single)
    _refused(api.post("/index/folders", json={"folder": str(single)}), 400, "is a file: add the folder that holds it")
    _refused(api.post("/index/folders", json={"folder": str(collection.index_dir)}), 400, "this index's own folder")
    _refused(api.post("/index/folders", json={}), 422, "folder")

    extra = tmp_path / "extra"
    generate_shapes(extra, n=3, seed=77, split="test", n_queries=1, workers=1)
    started = api.post("/index/folders", json={"folder": str(extra / "images")})
    assert started.status_code == 202 and started.json()["status"] == "running"
    deadline = time.monotonic() + 60
    while (job := api.get(f"/index/jobs/{started.json()['job']}").json())["status"] == "running":
        assert time.monotonic() < deadline, "adding 3 images took over 2 minutes"
        time.sleep(0.2)
    assert job["status"] == "done" and job["result"]["indexed"] == 3 and "indexed 3 new" in job["summary"]
    assert api.get("/index").json()["images"] == before["images"] + 3
    newcomer = sorted((extra / "images").iterdir())[0].resolve()
    found = api.post("/search", data={"k": 1}, files=_files(newcomer)).json()["results"]
    assert found[0]["path"] == str(newcomer)  # the model's workers read the index as it now is


def test_the_schema_lists_every_endpoint_and_health_needs_no_login(api):
    paths = api.get("/openapi.json").json()["paths"]
    assert set(paths) == {
        "/search",
        "/ask",
        "/index",
        "/index/folders",
        "/index/jobs/{job}",
        "/images/{item_id}",
        "/health",
    }
    assert set(paths["/search"]) == {"get", "post"}
    assert api.get("/health").json()["status"] == "ok"


def test_the_api_takes_the_pages_login_and_refuses_anonymous_calls(tmp_path, model):
    folder = tmp_path / "pictures"
    folder.mkdir()
    Image.new("RGB", (80, 60), "red").save(folder / "red.png")
    index_collection(model, [folder], tmp_path / "index", workers=1, show_progress=False)
    options = ServeOptions(
        port=free_port(), auth=parse_auth("ana:secret"), max_upload="2kb", allow_indexing=False, workers=0
    )
    collection = Collection(tmp_path / "index", model)
    app, url = launch(collection, options, block=False)
    base = url.rstrip("/") + PREFIX
    picture = folder / "red.png"
    calls = [
        ("GET", "/search?q=a+red+circle", {}),
        ("POST", "/search", {"data": {"text": "a red circle"}}),
        ("POST", "/ask", {"data": {"question": "what colour?"}, "files": _files(picture)}),
        ("GET", "/index", {}),
        ("POST", "/index/folders", {"json": {"folder": str(folder)}}),
        ("GET", "/index/jobs/1", {}),
        ("GET", "/images/1", {}),
    ]
    try:
        for credentials in (None, ("ana", "wrong"), ("bob", "secret")):
            with httpx.Client(base_url=base, timeout=60, auth=credentials) as anonymous:
                for method, route, extra in calls:
                    reply = anonymous.request(method, route, **extra)
                    _refused(reply, 401, "log in")
                    assert reply.headers["www-authenticate"].startswith("Basic")
                assert anonymous.get("/health").status_code == 200
        with httpx.Client(base_url=base, timeout=60, auth=("ana", "secret")) as logged_in:
            assert logged_in.get("/search", params={"q": "a red circle", "k": 1}).json()["results"]
            _refused(logged_in.post("/index/folders", json={"folder": str(folder)}), 403, "turned off")
            big = tmp_path / "big.png"
            Image.effect_noise((200, 200), 64).save(big)
            _refused(logged_in.post("/search", files=_files(big)), 413, "larger than this server takes")
        with httpx.Client(base_url=url.rstrip("/"), timeout=60) as page:  # the page's login cookie serves too
            assert page.post("/login", data={"username": "ana", "password": "secret"}).status_code == 200
            assert page.get(f"{PREFIX}/index").json()["images"] == 1
    finally:
        app.close()
        collection.close()
