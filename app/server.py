"""The web app: search a collection by text, example image or voice, ask about an image, add folders.

Handlers are thin: they turn widget values into calls on `mmodal.search`, `MModalModel.ask` and
`mmodal.pipeline`, and turn `ValueError`s into messages in the page. Every event has an ``api_name``, so
the same app is an HTTP API (see the README, "The web app's API").
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import gradio as gr
from gradio.route_utils import get_api_call_path, get_root_url

from mmodal.app import gradio_overheads
from mmodal.app.collection import Collection
from mmodal.app.inputs import audio_upload, image_upload, whole_number_slider
from mmodal.app.model_pool import PoolBusy, WorkerFailed
from mmodal.app.rest import PREFIX, mount_rest_api
from mmodal.app.settings import (
    CACHE_MAX_AGE_SECONDS,
    CACHE_SWEEP_SECONDS,
    DEFAULT_HOST,
    DEFAULT_PORT,
    MAX_RESULTS,
    MAX_UPLOAD,
    QUEUE_SIZE,
    SESSION_CAPACITY,
)
from mmodal.app.thumbnails import add_thumbnail_route, thumbnail_gallery, thumbnail_link
from mmodal.indexes.errors import IndexProblem
from mmodal.loading import EMBEDDED_NAMES
from mmodal.search import Query, SearchReport, SearchResult

log = logging.getLogger(__name__)

MAX_ALTERNATIVES = 5
LANES_PER_WORKER = 8  # requests that may wait on each model worker at once
EMPTY_SEARCH = "type what you look for, add an example image or record a voice clip, then search"


@dataclass(frozen=True)
class ServeOptions:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    auth: tuple[tuple[str, str], ...] = ()
    max_upload: str = MAX_UPLOAD
    # Model worker processes, one core each (the model's operations are too small to gain from more threads
    # each); 0 answers in the web process, one search per core and one question at a time.
    workers: int = os.cpu_count() or 1
    allow_indexing: bool = True  # whether the Index tab may add folders on the server


def parse_auth(text: str) -> tuple[tuple[str, str], ...]:
    """ "user:password" or "user1:pass1,user2:pass2" → pairs; refuses empty names and passwords."""
    pairs = []
    for entry in text.split(","):
        user, sep, password = entry.strip().partition(":")
        if not sep or not user or not password:
            raise ValueError(f'give credentials as "user:password" (several separated by commas), got {entry!r}')
        pairs.append((user, password))
    return tuple(pairs)


# ------------------------------------------------------------------------------------------- handlers


def _user_error(error: Exception) -> gr.Error:
    return gr.Error(str(error), print_exception=False)


def _text(value: object, what: str) -> str:
    """A text box's value as the API may send it: text or nothing."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise gr.Error(f"{what} must be text, not {type(value).__name__}", print_exception=False)
    return value


def _flag(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise gr.Error(f"{what} must be true or false", print_exception=False)
    return value


def _api_row(result: SearchResult) -> dict:
    """A result as the API returns it: "file" rather than the CLI's "path", because gradio_client takes any
    {"path": ...} in a reply for a file to download and would swap in a local copy."""
    row = result.to_dict()
    return {"file": row.pop("path"), **row}


def _result_caption(rank: int, result: SearchResult) -> str:
    return f"{rank}. {Path(result.path).name} · {result.score:.3f}"


def percent(confidence: float) -> str:
    """The one way the page shows a confidence."""
    return f"{confidence:.0%}"


def _answered(call):
    """The model's answer, or its refusal as a message in the page."""
    try:
        return call()
    except (ValueError, OSError, IndexProblem, PoolBusy, WorkerFailed) as error:
        raise _user_error(error) from None


def _note(report: SearchReport) -> str:
    """What the page says above the results: what a clip was heard as, and anything the user should know."""
    lines = [report.transcript.summary()] if report.transcript is not None else []
    lines += report.messages
    if not report.results and not report.unknown_words and report.offset == 0:
        lines.append("the index holds no image yet: add a folder in the Index tab")
    return "\n\n".join(lines)


def build_app(collection: Collection, allow_indexing: bool = True) -> gr.Blocks:
    """The Blocks app; launch it with `launch`. Without ``allow_indexing`` nobody can add folders from the web."""

    def search(text, image, audio, negative, k, rerank, request: gr.Request):
        query = Query(
            text=_text(text, "the query").strip() or None,
            image=image or None,
            audio=audio,
            negative=tuple(t.strip() for t in _text(negative, "'But not'").split(",") if t.strip()),
        )
        if query.empty:
            raise gr.Error(EMPTY_SEARCH, print_exception=False)
        report = _answered(lambda: collection.report(query, k=k, rerank=_flag(rerank, "re-rank")))
        rows = [_api_row(r) for r in report.results]
        # Links the browser follows as the results arrive; absolute, as Gradio passes only those through untouched.
        root = get_root_url(request.request, get_api_call_path(request.request), app.root_path)
        results = report.results
        gallery = [(thumbnail_link(root, r.id, r.matched), _result_caption(i, r)) for i, r in enumerate(results, 1)]
        heard = report.transcript
        heard_box = gr.update(value=heard.text if heard else "", visible=heard is not None)
        return gallery, rows, rows, heard_box, _note(report)

    def search_heard(heard, image, negative, k, rerank, request: gr.Request):
        """The words heard, as the user corrected them, searched as typed text."""
        return search(heard, image, None, negative, k, rerank, request)

    def show_result(rows: list[dict], selected: gr.SelectData):  # Gradio fills it in by its type
        if not rows or not 0 <= selected.index < len(rows):
            raise gr.Error("search, then select a result to open it", print_exception=False)
        row = rows[selected.index]
        details = dict(row)
        state = collection.searcher().index.file_state(row["file"])
        if state is not None:
            size, mtime_ns = state
            modified = datetime.fromtimestamp(mtime_ns / 1e9, tz=timezone.utc).isoformat(timespec="seconds")
            details.update(file_bytes=size, modified=modified)
        return row["file"], details

    def ask(image, question, alternatives):
        if not image:
            raise gr.Error("add an image to ask about", print_exception=False)
        question = _text(question, "the question")
        answer, picture = _answered(lambda: collection.ask(image, Path(image).name, question, alternatives))
        choices = {answer.answer: answer.confidence} | {a: c for a, c in answer.alternatives}
        return answer.answer, percent(answer.confidence), choices, picture, answer.note or ""

    def add_folder(folder, progress=gr.Progress(track_tqdm=True)):  # noqa: B008 (how Gradio injects progress)
        if not allow_indexing:
            raise gr.Error(
                "adding folders from the web is turned off on this server (mmodal serve --no-indexing)",
                print_exception=False,
            )
        folder = _text(folder, "the folder")
        if not folder.strip():
            raise gr.Error("type the path of a folder on the server", print_exception=False)
        summary = _answered(lambda: collection.add(folder.strip()))
        allow_serving(app, collection)
        return summary.format(), collection.stats()

    def choose_model(name):
        if not allow_indexing:
            raise gr.Error("changing the index from the web is turned off on this server", print_exception=False)
        name = _text(name, "the model").strip()
        if not name:
            raise gr.Error("name a model: shapes, photos, clip:PATH or a model folder", print_exception=False)
        try:
            collection.use_model(name)
        except (ValueError, OSError, IndexProblem) as error:
            raise _user_error(error) from None
        return collection.stats()

    def stats():
        try:
            return collection.stats()
        except (ValueError, OSError, IndexProblem) as error:
            raise _user_error(error) from None

    with gr.Blocks(title="mmodal", delete_cache=(CACHE_SWEEP_SECONDS, CACHE_MAX_AGE_SECONDS)) as app:
        gr.Markdown("# mmodal\nSearch your images by text, example image or voice, and ask questions about them.")
        with gr.Tabs():
            with gr.Tab("Search", id="search"):
                with gr.Row():
                    with gr.Column(scale=2):
                        query_text = gr.Textbox(
                            label="Describe what you look for",
                            placeholder="a red circle left of a blue square",
                            max_length=1000,
                            elem_id="query-text",
                        )
                        negative_text = gr.Textbox(label="But not (comma-separated)", placeholder="green")
                    with gr.Column(scale=1):
                        query_image = image_upload(label="Or an example image", height=160)
                    with gr.Column(scale=1):
                        query_audio = audio_upload(
                            label="Or say it", sources=["upload", "microphone"], elem_id="query-audio"
                        )
                with gr.Row():
                    count = whole_number_slider(1, MAX_RESULTS, value=12, label="Results")
                    rerank = gr.Checkbox(
                        value=True, label="Re-rank with the slot reasoner (text queries; boxes show what matched)"
                    )
                    search_button = gr.Button("Search", variant="primary", elem_id="search-button")
                heard_note = gr.Markdown(label="Note", elem_id="heard-note")
                heard_box = gr.Textbox(
                    label="Heard (correct the words and press Enter to search by them)",
                    visible=False,
                    max_length=1000,
                    elem_id="heard",
                )
                gallery = thumbnail_gallery(
                    label="Results", columns=6, height=420, elem_id="results", allow_preview=False
                )
                rows_state = gr.State([])
                with gr.Row():
                    with gr.Column(scale=2):
                        picked = image_upload(label="Selected", interactive=False, elem_id="picked")
                    with gr.Column(scale=1):
                        picked_info = gr.JSON(label="Details")
                        picked_question = gr.Textbox(
                            label="Ask about this image", placeholder="how many stars are there?"
                        )
                        picked_ask = gr.Button("Ask")
                        picked_answer = gr.Textbox(label="Answer", interactive=False)
                        picked_confidence = gr.Textbox(label="Confidence", interactive=False)
                        picked_choices = gr.Label(label="Answers", num_top_classes=4)
                        picked_map = gr.Image(label="Where the answer came from", interactive=False)
                        picked_note = gr.Markdown(label="Answer note")
                with gr.Accordion("Results as JSON", open=False):
                    results_json = gr.JSON(label="Results as JSON")

            with gr.Tab("Ask", id="ask"):
                with gr.Row():
                    with gr.Column():
                        ask_image = image_upload(label="Image", height=320, elem_id="ask-image")
                        question = gr.Textbox(
                            label="Question",
                            placeholder="what color is the star?",
                            max_length=10_000,
                            elem_id="question",
                        )
                        alternatives = whole_number_slider(0, MAX_ALTERNATIVES, value=3, label="Other answers to show")
                        ask_button = gr.Button("Ask", variant="primary", elem_id="ask-button")
                    with gr.Column():
                        answer_text = gr.Textbox(label="Answer", interactive=False, elem_id="answer")
                        confidence = gr.Textbox(label="Confidence", interactive=False, elem_id="confidence")
                        choices = gr.Label(label="Answers", num_top_classes=6)
                        heat_map = gr.Image(label="Where the answer came from", interactive=False)
                        answer_note = gr.Markdown(label="Answer note", elem_id="answer-note")

            with gr.Tab("Index", id="index"):
                current = collection.model.source or collection.model.model_name
                model_choice = gr.Dropdown(
                    choices=list(dict.fromkeys([*EMBEDDED_NAMES, current])),
                    value=current,
                    allow_custom_value=True,
                    label="Model of this index (chosen while it is empty): shapes for the Shapes world, photos for "
                    "real photos, or clip:PATH, swin:PATH, a model folder",
                    elem_id="model-choice",
                    visible=allow_indexing,
                )
                folder = gr.Textbox(
                    label="Folder on the server to add",
                    placeholder="/home/me/Pictures",
                    elem_id="folder",
                    visible=allow_indexing,
                )
                add_button = gr.Button("Add to index", variant="primary", elem_id="add-button", visible=allow_indexing)
                summary = gr.Textbox(
                    label="Summary", lines=8, interactive=False, elem_id="summary", visible=allow_indexing
                )
                index_stats = gr.JSON(label="Index", elem_id="index-stats")
                refresh = gr.Button("Refresh statistics")

        gr.on(
            [search_button.click, query_text.submit],
            search,
            [query_text, query_image, query_audio, negative_text, count, rerank],
            [gallery, rows_state, results_json, heard_box, heard_note],
            api_name="search",
            concurrency_id="search",
        )
        heard_box.submit(
            search_heard,
            [heard_box, query_image, negative_text, count, rerank],
            [gallery, rows_state, results_json, heard_box, heard_note],
            api_name="search_heard",
            concurrency_id="search",
        )
        # A selection only means something on the page that holds the results, so API clients do not get it.
        gallery.select(
            show_result, [rows_state], [picked, picked_info], api_name="select_result", api_visibility="private"
        )
        # One handler behind two question boxes: under a selected result, and in the Ask tab.
        for name, button, image, question_box, outputs in (
            (
                "ask_about_result",
                picked_ask,
                picked,
                picked_question,
                [picked_answer, picked_confidence, picked_choices, picked_map, picked_note],
            ),
            ("ask", ask_button, ask_image, question, [answer_text, confidence, choices, heat_map, answer_note]),
        ):
            gr.on(
                [button.click, question_box.submit],
                ask,
                [image, question_box, alternatives],
                outputs,
                api_name=name,
                concurrency_id="answer",
            )
        model_choice.input(choose_model, [model_choice], [index_stats], api_name="choose_model", concurrency_id="index")
        add_button.click(add_folder, [folder], [summary, index_stats], api_name="add_folder", concurrency_id="index")
        refresh.click(stats, None, [index_stats], api_name="stats")
        app.load(stats, None, [index_stats], api_name="stats_on_load")
    return app


def allow_serving(app: gr.Blocks, collection: Collection) -> None:
    """Files may be served from the indexed folders, never from the index folder itself."""
    for root in collection.roots():
        if root not in app.allowed_paths:
            app.allowed_paths.append(root)
    if str(collection.index_dir) not in app.blocked_paths:
        app.blocked_paths.append(str(collection.index_dir))


def launch(collection: Collection, options: ServeOptions, block: bool = True) -> tuple[gr.Blocks, str]:
    """Starts the model's workers and the server; returns the app and its address. With ``block=False`` it runs in
    the background: close the app, then the collection."""
    collection.start_workers(options.workers)
    app = build_app(collection, allow_indexing=options.allow_indexing)
    # With workers, a request waits for one without holding a core, so many may wait together (and batch);
    # without, one search a core.
    lanes = collection.workers * LANES_PER_WORKER if collection.workers else os.cpu_count() or 1
    gradio_overheads.trim()
    app.queue(max_size=QUEUE_SIZE, default_concurrency_limit=lanes)
    roots = collection.roots()
    # The server answers as soon as its thread starts, inside ``launch``, so a Ctrl-C may come at any line from
    # there on; every way out closes the server, whose thread would otherwise keep the process alive.
    try:
        _, url, _ = app.launch(
            server_name=options.host,
            server_port=options.port,
            auth=list(options.auth) or None,
            max_file_size=options.max_upload,
            allowed_paths=roots,
            blocked_paths=[str(collection.index_dir)],
            prevent_thread_lock=True,
            quiet=True,
            footer_links=["api"],
            show_error=True,
            state_session_capacity=SESSION_CAPACITY,
        )
        add_thumbnail_route(app, collection.path_of)
        mount_rest_api(app, collection, options.allow_indexing)
        if block:
            print(f"mmodal is serving {collection.index_dir} at {url}\nopen that address in a browser; Ctrl-C stops")
            print(f"its REST API is at {url.rstrip('/')}{PREFIX} (schema: {PREFIX}/openapi.json)")
            app.block_thread()
    except BaseException:
        app.close()
        collection.close()
        raise
    if block:
        app.close()
        collection.close()
    return app, url
