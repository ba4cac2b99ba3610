"""The REST API, beside the page on the same server: JSON in and out, the page's login, errors as JSON.

Mounted at ``/api/v1`` (its OpenAPI schema at ``/api/v1/openapi.json``). The README shows each endpoint with
`curl`. Every error is ``{"error": message, "status": code}`` with that HTTP status.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import itertools
import logging
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi import Query as Param
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from mmodal.app.collection import Collection
from mmodal.app.model_pool import PoolBusy, WorkerFailed
from mmodal.app.settings import MAX_RESULTS
from mmodal.data.audio import read_audio
from mmodal.data.images import ImageSkipped, read_image
from mmodal.indexes.errors import IndexBusyError, IndexProblem
from mmodal.search import MAX_RANK, Query, SearchReport

log = logging.getLogger(__name__)

PREFIX = "/api/v1"
UPLOAD_CHUNK = 1 << 20


Count = Annotated[int, Param(ge=1, le=MAX_RESULTS, description="results on this page")]
Offset = Annotated[int, Param(ge=0, lt=MAX_RANK, description="rank of the first result, from 0")]
Negatives = Annotated[list[str] | None, Param(alias="not", description="what the images must not show")]


class FolderToAdd(BaseModel):
    folder: str = Field(description="a folder on the server, as its path")


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)


def _validation_message(error: RequestValidationError) -> str:
    parts = []
    for problem in error.errors():
        where = ".".join(str(p) for p in problem.get("loc", ()) if p not in ("body", "query", "form"))
        parts.append(f"{where}: {problem.get('msg', 'invalid')}" if where else problem.get("msg", "invalid"))
    return "; ".join(parts) or "the request is not valid"


def _credentials_match(accounts, user: str, password: str) -> bool:
    if callable(accounts):
        return bool(accounts(user, password))
    expected = accounts.get(user)
    return expected is not None and hmac.compare_digest(expected.encode(), password.encode())


class _Jobs:
    """Folders being added, by job number: what a client polls after ``POST /index/folders``."""

    def __init__(self):
        self._jobs: dict[int, dict] = {}
        self._numbers = itertools.count(1)
        self._lock = threading.Lock()

    def start(self, folder: str, run) -> dict:
        number = next(self._numbers)
        job = {"job": number, "folder": folder, "status": "running", "summary": None, "result": None, "error": None}
        with self._lock:
            self._jobs[number] = job

        def work():
            try:
                summary = run()
                job.update(status="done", summary=summary.format(), result=summary.to_dict())
            except (ValueError, OSError, IndexProblem) as error:
                job.update(status="failed", error=str(error))
            except Exception as error:
                log.exception("adding %s failed", folder)
                job.update(status="failed", error=f"the server failed ({type(error).__name__}); its log says more")

        threading.Thread(target=work, name=f"add-folder-{number}", daemon=True).start()
        return dict(job)

    def get(self, number: int) -> dict | None:
        with self._lock:
            job = self._jobs.get(number)
            return None if job is None else dict(job)


def rest_api(
    collection: Collection, accounts, cookie_user, allow_indexing: bool, max_upload_bytes: int | None
) -> FastAPI:
    """The API as an app to mount at ``PREFIX``. ``accounts`` are the page's logins ({user: password}, a check
    function, or None for none); ``cookie_user`` gives the user a request's page login cookie names, if any."""
    api = FastAPI(
        title="mmodal",
        summary="Search a collection of images by text, example image or voice, and ask questions about images.",
        version="1",
        docs_url=None,  # the interactive docs load scripts from the web, which an offline server cannot
        redoc_url=None,
    )
    jobs = _Jobs()
    uploads = Path(tempfile.mkdtemp(prefix="mmodal-uploads-"))

    @api.exception_handler(StarletteHTTPException)  # also the router's own, for paths and methods it lacks
    async def http_error(request: Request, error: StarletteHTTPException):
        message = str(error.detail)
        if error.status_code in (404, 405) and message in ("Not Found", "Method Not Allowed"):
            message = f"no {request.method} {request.url.path} here; {PREFIX}/openapi.json lists what there is"
        return _error(error.status_code, message, getattr(error, "headers", None))

    @api.exception_handler(Exception)
    async def failed(request: Request, error: Exception):
        log.error("the REST API failed on %s", request.url.path, exc_info=error)
        return _error(500, f"the server failed on this request ({type(error).__name__}); its log says more")

    @api.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError):
        return _error(422, _validation_message(error))

    def login(request: Request) -> None:
        if accounts is None:
            return
        header = request.headers.get("authorization", "")
        if header[:6].lower() == "basic ":
            try:
                user, _, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                user, password = "", ""
            if user and _credentials_match(accounts, user, password):
                return
        elif cookie_user(request) is not None:
            return
        raise HTTPException(
            401,
            "log in with the page's user and password (HTTP Basic), or with the page's login cookie",
            headers={"WWW-Authenticate": 'Basic realm="mmodal"'},
        )

    guarded = [Depends(login)]

    def save(upload: UploadFile) -> tuple[Path, str]:
        shown = Path(upload.filename or "upload").name
        folder = Path(tempfile.mkdtemp(dir=uploads))
        path, size = folder / "upload", 0
        with path.open("wb") as out:
            while chunk := upload.file.read(UPLOAD_CHUNK):
                size += len(chunk)
                if max_upload_bytes is not None and size > max_upload_bytes:
                    shutil.rmtree(folder, ignore_errors=True)
                    raise HTTPException(413, f"{shown} is larger than this server takes ({max_upload_bytes:,} bytes)")
                out.write(chunk)
        return path, shown

    def picture(upload: UploadFile) -> tuple[Path, str]:
        path, shown = save(upload)
        try:
            read_image(path)
        except ImageSkipped as skipped:
            shutil.rmtree(path.parent, ignore_errors=True)
            raise HTTPException(400, f"cannot use {shown} as an image: {skipped.reason}") from None
        return path, shown

    def run(call):
        try:
            return call()
        except PoolBusy as busy:
            raise HTTPException(503, str(busy), headers={"Retry-After": "1"}) from None
        except IndexBusyError as busy:
            raise HTTPException(409, str(busy)) from None
        except (ValueError, OSError, IndexProblem) as refused:
            raise HTTPException(400, str(refused)) from None
        except WorkerFailed as failed:
            raise HTTPException(500, str(failed)) from None

    def reply(report: SearchReport, k: int) -> dict:
        out = report.to_dict()
        for row in out["results"]:
            row["image_url"] = f"{PREFIX}/images/{row['id']}"
        more = len(report.results) == k and report.offset + k < MAX_RANK
        return {**out, "next_offset": report.offset + k if more else None}

    def searched(query: Query, k: int, offset: int, rerank: bool) -> dict:
        return reply(run(lambda: collection.report(query, k=k, rerank=rerank, offset=offset)), k)

    def negatives(values: list[str] | None) -> tuple[str, ...]:
        return tuple(t.strip() for v in values or () for t in v.split(",") if t.strip())

    @api.get("/search", dependencies=guarded, summary="Search by text")
    def search_text(
        q: Annotated[str, Param(min_length=1, max_length=1000, description="what to look for")],
        k: Count = 12,
        offset: Offset = 0,
        rerank: bool = True,
        not_: Negatives = None,
    ) -> dict:
        """Images that match ``q``, best first, re-ranked by the slot reasoner."""
        return searched(Query(text=q.strip() or None, negative=negatives(not_)), k, offset, rerank)

    @api.post("/search", dependencies=guarded, summary="Search by text, example image and/or voice")
    def search_any(
        text: Annotated[str | None, Form(max_length=1000)] = None,
        image: Annotated[UploadFile | None, File(description="an example image")] = None,
        audio: Annotated[UploadFile | None, File(description="a spoken query (WAV, MP3, OGG, FLAC, WebM…)")] = None,
        not_: Annotated[list[str] | None, Form(alias="not")] = None,
        k: Annotated[int, Form(ge=1, le=MAX_RESULTS)] = 12,
        offset: Annotated[int, Form(ge=0, lt=MAX_RANK)] = 0,
        rerank: Annotated[bool, Form()] = True,
    ) -> dict:
        """A query of any parts: their embeddings add up, as in "like this picture, but blue"."""
        held: list[Path] = []
        try:
            picture_path = None
            if image is not None:
                path, _ = picture(image)
                held.append(path.parent)
                picture_path = str(path)
            clip = None
            if audio is not None:
                path, shown = save(audio)
                held.append(path.parent)
                clip = run(lambda: read_audio(str(path), shown_as=shown))
            query = Query(text=(text or "").strip() or None, image=picture_path, audio=clip, negative=negatives(not_))
            if query.empty:
                raise HTTPException(400, "a search needs words, an example image or a voice clip: give one of them")
            return searched(query, k, offset, rerank)
        finally:
            for folder in held:
                shutil.rmtree(folder, ignore_errors=True)

    @api.post("/ask", dependencies=guarded, summary="Ask a question about an image")
    def ask(
        image: Annotated[UploadFile, File(description="the picture to ask about")],
        question: Annotated[str, Form(max_length=10_000)],
        alternatives: Annotated[int, Form(ge=0, le=10)] = 3,
    ) -> dict:
        """The answer, its confidence (0 to 1), other answers, and the objects it looked at."""
        path, shown = picture(image)
        try:
            answer, _ = run(lambda: collection.ask(str(path), shown, question, alternatives))
        finally:
            shutil.rmtree(path.parent, ignore_errors=True)
        return {"note": None, "unknown_words": [], **answer.to_dict()}

    @api.get("/index", dependencies=guarded, summary="What the index holds")
    def index_stats() -> dict:
        return run(collection.stats)

    @api.post("/index/folders", dependencies=guarded, status_code=202, summary="Add a folder of the server")
    def add_folder(body: FolderToAdd) -> dict:
        """Starts indexing the folder; poll ``/index/jobs/{job}`` for its end."""
        if not allow_indexing:
            raise HTTPException(403, "adding folders from the web is turned off on this server")
        folder = body.folder.strip()
        if not folder:
            raise HTTPException(400, "give the path of a folder on the server")
        run(lambda: collection.check_folder(folder))
        return jobs.start(folder, lambda: collection.add(folder))

    @api.get("/index/jobs/{job}", dependencies=guarded, summary="How adding a folder went")
    def job_status(job: int) -> dict:
        found = jobs.get(job)
        if found is None:
            raise HTTPException(404, f"no job {job} on this server (jobs are kept until it restarts)")
        return found

    @api.get("/images/{item_id}", dependencies=guarded, summary="An indexed image, as its file")
    def image_file(item_id: int) -> FileResponse:
        path = collection.path_of(item_id)
        if path is None:
            raise HTTPException(404, f"no indexed image has the id {item_id}")
        if not Path(path).is_file():
            raise HTTPException(410, f"image {item_id} is no longer at {Path(path).name} (moved or deleted)")
        return FileResponse(path)

    @api.get("/health", summary="Whether the server answers, and where its requests spend their time (no login)")
    def health() -> dict:
        return {"status": "ok", "workers": collection.workers, "timings": collection.timings()}

    return api


def mount_rest_api(app, collection: Collection, allow_indexing: bool) -> None:
    """Mounts the API on the launched Gradio ``app``, behind the page's login (its accounts and its cookie)."""
    server = app.app

    def cookie_user(request: Request) -> str | None:
        token = request.cookies.get(f"access-token-{server.cookie_id}") or request.cookies.get(
            f"access-token-unsecure-{server.cookie_id}"
        )
        return server.tokens.get(token)

    server.mount(PREFIX, rest_api(collection, server.auth, cookie_user, allow_indexing, app.max_file_size))
