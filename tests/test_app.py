"""The web app, started in-process on a free port and called over HTTP through gradio_client.

The collection is a small Shapes test split indexed with the shipped model, so the right answers are
known from the scene graphs.
"""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote

import httpx
import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError, AuthenticationError
from PIL import Image

from mmodal.app.server import Collection, ServeOptions, launch, parse_auth
from mmodal.data.audio import read_audio
from mmodal.data.generate import generate_shapes
from mmodal.pipeline import index_collection
from mmodal.search import Query
from reliability.fuzz import call
from tests.conftest import free_port


def search(client: Client, text: str = "", image=None, audio=None, negative: str = "", k: int = 10, rerank=True):
    gallery, rows, _heard, _note = client.predict(text, image, audio, negative, k, rerank, api_name="/search")
    assert len(gallery) == len(rows)
    return gallery, rows


@pytest.mark.slow
def test_text_search_brings_the_images_the_scene_graphs_name(served, dataset):
    _, _, client = served
    images = {r.id: str((dataset.root / r.file).resolve()) for r in dataset.images}
    queries = sorted((q for q in dataset.queries if q.kind == "object"), key=lambda q: -len(q.relevant))[:3]
    assert queries and len(queries[0].relevant) >= 5
    for query in queries:
        relevant = {images[i] for i in query.relevant}
        gallery, rows = search(client, query.text, k=5, rerank=False)
        hits = sum(row["file"] in relevant for row in rows)
        assert hits >= 4, f"{query.text!r}: {hits} of 5 results show it"
        assert all(item["image"] and Path(item["image"]).is_file() for item in gallery)
        assert rows == sorted(rows, key=lambda r: -r["score"])


@pytest.mark.slow
def test_reranked_search_reports_both_scores(served, dataset):
    _, _, client = served
    query = next(q for q in dataset.queries if q.kind == "object")
    _, rows = search(client, query.text, k=8)
    assert len(rows) == 8
    assert all(0 <= row["rerank_score"] <= 1 and -1 <= row["embedding_score"] <= 1 for row in rows)
    assert [row["score"] for row in rows] == sorted((row["rerank_score"] for row in rows), reverse=True)


@pytest.mark.slow
def test_reranked_results_box_the_objects_the_query_named(served, dataset):
    """A relation query's best results are true of their scenes, and the two boxes sit on the objects that
    the subject and the other phrase name."""
    from mmodal.shapes.semantics import parse_statement

    _, _, client = served
    scenes = {str((dataset.root / r.file).resolve()): r.scene for r in dataset.images}
    queries = [q for q in dataset.queries if q.kind == "relation" and len(q.relevant) >= 2][:3]
    assert queries
    for query in queries:
        relation = parse_statement(query.text).parts[0]
        _, rows = search(client, query.text, k=2)
        for row in rows:
            scene = scenes[row["file"]]
            assert parse_statement(query.text).holds(scene), f"{query.text!r}: {row['file']} is not true of it"
            boxes = {m["role"]: m for m in row["matched"]}
            assert set(boxes) == {"a", "b"}
            for role, phrase in (("a", relation.subject), ("b", relation.other)):
                box = boxes[role]
                nearest = min(scene.objects, key=lambda o: (o.cx - box["cx"]) ** 2 + (o.cy - box["cy"]) ** 2)
                assert phrase.matches(nearest) and abs(nearest.cx - box["cx"]) < nearest.d / 2


@pytest.mark.slow
def test_an_indexed_image_finds_itself_first(served, dataset):
    _, _, client = served
    target = (dataset.root / dataset.images[7].file).resolve()
    _, rows = search(client, image=handle_file(str(target)), k=3)
    assert rows[0]["file"] == str(target)
    assert rows[0]["embedding_score"] == pytest.approx(1.0, abs=1e-3)


@pytest.mark.slow
def test_voice_search_shows_what_it_heard_and_ranks_as_the_library_does(served, dataset):
    collection, _, client = served
    spoken = [q for q in dataset.queries if q.audio][:4]
    if not spoken:
        pytest.skip("espeak-ng or flite is missing, so the collection has no spoken queries")
    for query in spoken:
        clip = str(dataset.root / query.audio)
        gallery, rows, heard, note = client.predict("", None, handle_file(clip), "", 10, True, api_name="/search")
        assert len(gallery) == len(rows) == 10
        # The browser hands over 16-bit samples; they must be heard and ranked as the float samples of the file.
        searcher = collection.searcher()  # the library in this process; the page answers from its workers
        words, transcript = searcher.listen(Query(audio=read_audio(clip)))
        assert heard["value"] == transcript.text and heard["visible"]  # the page's "Heard" box shows it
        assert note.startswith(transcript.summary())
        expected = searcher.search(words, k=10, rerank=True)
        assert [row["file"] for row in rows] == [r.path for r in expected]
        assert [row["score"] for row in rows] == pytest.approx([r.score for r in expected], abs=2e-3)
        # Heard clearly, the words take the text path with re-ranking; otherwise the clip is searched by sound.
        assert all((row["rerank_score"] is not None) == (words.audio is None) for row in rows)


@pytest.mark.slow
def test_ask_gives_the_models_answer_with_a_map(served, dataset, model):
    _, _, client = served
    record = next(q for q in dataset.questions if q.type == "count")
    image_file = dataset.root / next(r.file for r in dataset.images if r.id == record.image_id)
    answer, confidence, choices, heat_map, note = client.predict(
        handle_file(str(image_file)), record.question, 3, api_name="/ask"
    )
    with Image.open(image_file) as picture:
        expected = model.ask([picture.convert("RGB")], [record.question], alternatives=3)[0]
        size = picture.size
    assert answer == expected.answer
    assert confidence == f"{expected.confidence:.0%}"  # as the page shows every confidence
    assert note == ""
    assert choices["label"] == expected.answer
    assert {c["label"] for c in choices["confidences"]} >= {a for a, _ in expected.alternatives}
    with Image.open(heat_map) as overlay:
        assert overlay.size == size


@pytest.mark.slow
def test_answers_are_right_on_easy_questions(served, dataset):
    _, _, client = served
    files = {r.id: dataset.root / r.file for r in dataset.images}
    records = [q for q in dataset.questions if q.type == "size"][:30]
    # Asked all at once, as many people would: the model's workers answer them in batches.
    jobs = [client.submit(handle_file(str(files[r.image_id])), r.question, 0, api_name="/ask") for r in records]
    right = sum(job.result(timeout=120)[0] == record.answer for job, record in zip(jobs, records))
    # The shipped model answers 78 of this split's 79 size questions right.
    assert right >= 27, f"{right} of {len(records)} size questions answered right"


@pytest.mark.slow
def test_bad_input_gets_a_message(served, tmp_path):
    _, _, client = served
    with pytest.raises(AppError, match="type what you look for") as empty:
        search(client)
    assert "--" not in str(empty.value)  # words for a page, not a shell's flags
    with pytest.raises(AppError, match="too long"):
        search(client, "a red circle " * 100)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
    truncated = tmp_path / "truncated.png"
    Image.effect_noise((300, 300), 64).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:2000])
    notes = tmp_path / "notes.wav"
    notes.write_text("not a sound", encoding="utf-8")
    refusals = {
        "ask": (broken, "cannot use broken.png as an image: not an image"),
        "search by image": (truncated, "cannot use truncated.png as an image: truncated or corrupt image"),
        "search by voice": (notes, "cannot read notes.wav as audio"),
    }
    for where, (upload, message) in refusals.items():
        with pytest.raises(AppError) as refused:  # the upload box itself refuses it, with mmodal's words
            if where == "ask":
                client.predict(handle_file(str(upload)), "what color is the star?", 3, api_name="/ask")
            elif where == "search by image":
                search(client, image=handle_file(str(upload)))
            else:
                search(client, audio=handle_file(str(upload)))
        assert message in str(refused.value), where
        assert "preprocess" not in str(refused.value) and "/tmp" not in str(refused.value), where
    good = tmp_path / "good.png"
    Image.new("RGB", (64, 64), "white").save(good)
    with pytest.raises(AppError, match="too long"):
        client.predict(handle_file(str(good)), "x" * 10_000, 3, api_name="/ask")
    with pytest.raises(AppError, match="empty"):
        client.predict(handle_file(str(good)), "   ", 3, api_name="/ask")
    with pytest.raises(AppError, match="no folder"):
        client.predict(str(tmp_path / "missing"), api_name="/add_folder")


@pytest.mark.slow
def test_only_indexed_folders_are_served(served, dataset):
    collection, url, client = served
    gallery, _ = search(client, "a red circle", k=1, rerank=False)
    assert gallery
    root = dataset.root / "images"
    outside_paths = (
        "/etc/passwd",
        f"{root}/../../../../../../etc/passwd",
        str(collection.index_dir / "metadata.sqlite"),
        str(Path(__file__).resolve()),
    )
    for outside in outside_paths:
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{url}gradio_api/file={outside}")
        assert refused.value.code in (403, 404)
    inside = (dataset.root / dataset.images[0].file).resolve()
    with urllib.request.urlopen(f"{url}gradio_api/file={inside}") as reply:
        assert reply.read() == inside.read_bytes()


def _gallery_links(url: str, text: str, k: int, rerank: bool) -> tuple[list[str], list[dict]]:
    """The thumbnail links of a search's gallery as the page receives them, and the result rows."""
    with httpx.Client(timeout=60) as http:
        outcome, reply = call(http, url.rstrip("/"), "search", [text, None, None, "", k, rerank])
    assert outcome == "answered", reply
    gallery, _, rows, _heard, _note = json.loads(reply)  # the page's own state sits between them
    return [item["image"]["url"] for item in gallery], rows


@pytest.mark.slow
def test_thumbnails_are_drawn_on_request_with_the_matched_boxes(served, dataset):
    _, url, _ = served
    query = next(q for q in dataset.queries if q.kind == "relation" and len(q.relevant) >= 2)
    links, rows = _gallery_links(url, query.text, k=2, rerank=True)
    assert len(links) == 2 and links[0].startswith(f"{url}mmodal/thumbnail/{rows[0]['id']}/")
    with httpx.Client(timeout=30) as http:
        boxed = http.get(links[0])
        assert boxed.status_code == 200 and boxed.headers["content-type"] == "image/webp"
        plain = http.get(f"{url}mmodal/thumbnail/{rows[0]['id']}/plain.webp")
    with Image.open(io.BytesIO(boxed.content)) as with_boxes, Image.open(io.BytesIO(plain.content)) as without:
        assert max(with_boxes.size) <= 320 and with_boxes.size == without.size
        changed = np.abs(np.asarray(with_boxes, np.int16) - np.asarray(without, np.int16)).sum(-1) > 60
        width, height = with_boxes.size
    # Two boxes, one per phrase, drawn as outlines: a few hundred pixels, not the picture.
    assert 100 < changed.sum() < 0.25 * changed.size
    ys, xs = np.nonzero(changed)
    for box in rows[0]["matched"]:  # each box is drawn around its object: changed pixels on its outline
        cx, cy, half = box["cx"] * width, box["cy"] * height, box["d"] * width * 0.6
        on_outline = (np.abs(np.abs(xs - cx) - half) <= 2) & (np.abs(ys - cy) <= half + 2)
        assert on_outline.sum() > half, box


@pytest.mark.slow
def test_thumbnails_show_only_indexed_images_and_refuse_bad_boxes(served, dataset):
    _, url, _ = served
    _, rows = _gallery_links(url, "a red circle", k=1, rerank=False)
    with httpx.Client(timeout=30) as http:
        for unknown in ("999999", "-1", "..%2F..%2Fetc%2Fpasswd", "0x10"):
            refused = http.get(f"{url}mmodal/thumbnail/{unknown}/plain.webp")
            assert refused.status_code in (404, 422), unknown
        for boxes in ("1,2", "a,b,c", "nan,0.5,0.1", "0.5,0.5,9", "_".join(["0.1,0.1,0.1"] * 9)):
            bad = http.get(f"{url}mmodal/thumbnail/{rows[0]['id']}/{boxes}.webp")
            assert bad.status_code == 400 and "box" in bad.text, boxes


@pytest.mark.slow
def test_add_folder_then_find_the_new_images(served, tmp_path):
    collection, _, client = served
    before = client.predict(api_name="/stats")["images"]
    extra = tmp_path / "extra"
    generate_shapes(extra, n=3, seed=99, split="test", n_queries=1, workers=1)
    summary, stats = client.predict(str(extra / "images"), api_name="/add_folder")
    assert "indexed 3 new" in summary
    assert stats["images"] == before + 3
    assert str((extra / "images").resolve()) in stats["roots"]
    newcomer = sorted((extra / "images").iterdir())[1].resolve()
    _, rows = search(client, image=handle_file(str(newcomer)), k=1)
    assert rows[0]["file"] == str(newcomer)


@pytest.mark.slow
def test_login_upload_limit_and_read_only_mode(tmp_path, model):
    index_dir = tmp_path / "index"
    folder = tmp_path / "pictures"
    folder.mkdir()
    Image.new("RGB", (80, 60), "red").save(folder / "red.png")
    index_collection(model, [folder], index_dir, workers=1, show_progress=False)
    # The model answers in the web process here (workers=0), the other way `mmodal serve` can run it.
    options = ServeOptions(
        port=free_port(), auth=parse_auth("ana:secret"), max_upload="2kb", allow_indexing=False, workers=0
    )
    collection = Collection(index_dir, model)
    app, url = launch(collection, options, block=False)
    try:
        with pytest.raises(AuthenticationError, match="credentials were not provided"):
            Client(url, verbose=False)
        client = Client(url, auth=("ana", "secret"), verbose=False)
        assert client.predict(api_name="/stats")["images"] == 1
        gallery, _ = search(client, "a red circle", k=1)  # its thumbnail is fetched with the login
        with Image.open(gallery[0]["image"]) as thumbnail:
            assert thumbnail.size == (80, 60)
        with pytest.raises(AppError, match="turned off"):
            client.predict(str(folder), api_name="/add_folder")
        big = tmp_path / "big.png"
        Image.effect_noise((200, 200), 64).save(big)
        with pytest.raises(ValueError, match="exceeds the maximum file size of 2048 bytes"):
            search(client, image=handle_file(str(big)), k=1)
    finally:
        app.close()
        collection.close()


@pytest.mark.slow
def test_with_a_login_no_route_answers_anonymous_calls(tmp_path, model):
    folder = tmp_path / "pictures"
    folder.mkdir()
    Image.new("RGB", (80, 60), "red").save(folder / "red.png")
    index_collection(model, [folder], tmp_path / "index", workers=1, show_progress=False)
    options = ServeOptions(port=free_port(), auth=parse_auth("ana:secret"), workers=0)
    collection = Collection(tmp_path / "index", model)
    app, url = launch(collection, options, block=False)
    picture = (folder / "red.png").resolve()
    body = {"data": ["a red circle", None, None, "", 3, True]}
    routes = [
        ("GET", "gradio_api/info", None),
        ("GET", f"gradio_api/file={picture}", None),
        ("GET", f"gradio_api/file={quote(str(picture))}", None),
        ("GET", "mmodal/thumbnail/1/plain.webp", None),
        ("POST", "gradio_api/call/search", body),
        ("POST", "gradio_api/run/search", body),
        ("POST", "gradio_api/queue/join", {**body, "fn_index": 0, "session_hash": "x"}),
    ]
    try:
        with httpx.Client(timeout=30) as anonymous:
            page = anonymous.get(url).text.replace(" ", "")  # the login page: no components, no events
            assert '"auth_required":true' in page and '"components":[],"dependencies":[]' in page
            for method, route, payload in routes:
                reply = anonymous.request(method, url + route, json=payload)
                assert reply.status_code in (401, 403), f"{method} /{route} answered {reply.status_code}"
            upload = anonymous.post(url + "gradio_api/upload", files=[("files", ("a.png", picture.read_bytes()))])
            assert upload.status_code in (401, 403), f"an anonymous upload answered {upload.status_code}"
    finally:
        app.close()
        collection.close()


def test_auth_strings_are_checked():
    assert parse_auth("a:b,c:d:e") == (("a", "b"), ("c", "d:e"))
    for bad in ("nobody", ":x", "a:"):
        with pytest.raises(ValueError, match="user:password"):
            parse_auth(bad)


def test_serve_creates_an_empty_index_to_add_folders_to(tmp_path, model):
    collection = Collection(tmp_path / "new-index", model)
    stats = collection.stats()
    assert (stats["images"], stats["model"], stats["roots"]) == (0, model.config.name, [])


@pytest.mark.slow
def test_the_remaining_endpoints_answer_over_http(served, dataset):
    collection, _, client = served
    assert client.predict(api_name="/stats_on_load") == collection.stats()
    record = next(q for q in dataset.questions if q.type == "size")
    image_file = dataset.root / next(r.file for r in dataset.images if r.id == record.image_id)
    direct = client.predict(handle_file(str(image_file)), record.question, 2, api_name="/ask")
    about_result = client.predict(handle_file(str(image_file)), record.question, 2, api_name="/ask_about_result")
    assert about_result[:3] == direct[:3]
    # Selecting acts on the page's own results (the browser test clicks one); API clients are not offered it.
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert "/select_result" not in endpoints
    for name, endpoint in endpoints.items():  # every input and output is named for what it is
        for part in endpoint["parameters"] + endpoint["returns"]:
            assert part["label"] and not part["label"].startswith("value_"), (name, part)


@pytest.mark.slow
def test_a_negated_text_moves_what_it_names_down(served, dataset):
    """ "a circle" but not "a COLOUR circle", for the colour most common among the top circles: circles of that
    colour leave the top results they held."""
    from collections import Counter

    _, _, client = served
    scenes = {str((dataset.root / r.file).resolve()): r.scene for r in dataset.images}

    def circle_colours(row) -> set[str]:
        return {o.color for o in scenes[row["file"]].objects if o.shape == "circle"}

    _, plain = search(client, "a circle", k=10)
    colour, held = Counter(c for r in plain for c in circle_colours(r)).most_common(1)[0]
    assert held >= 2
    _, negated = search(client, "a circle", negative=f"a {colour} circle", k=10)
    assert sum(colour in circle_colours(r) for r in negated) < held
    assert all(circle_colours(r) for r in negated[:5])  # still circles


@pytest.mark.slow
def test_the_page_names_the_words_it_does_not_know(served):
    _, _, client = served
    gallery, rows, _heard, note = client.predict(
        "show me a zorbly blue square", None, None, "", 5, True, api_name="/search"
    )
    assert len(rows) == 5 and '"zorbly"' in note and "does not know" in note
    gallery, rows, _heard, note = client.predict("zorbly blarf", None, None, "", 5, True, api_name="/search")
    assert rows == [] and "none of these words" in note
    _, _, _, note = client.predict("show me a big blue square", None, None, "", 5, True, api_name="/search")
    assert note == ""
