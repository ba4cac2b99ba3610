"""Result thumbnails, drawn when the page asks for them, never written to disk.

A search answers with links to this route rather than with pictures. Gradio would encode every thumbnail
inside the request, check its path and copy it into its file cache: that costs more than the search itself,
holds up the model's queue, and grows the cache with every query. Here the browser fetches the thumbnails
after the results arrive, outside the queue, and keeps them in its own cache.

Images are named by their id in the index, so nothing outside it can be asked for, and the route asks for the
same login as the rest of the app.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Callable, Sequence

import gradio as gr
from fastapi import HTTPException, Response
from gradio.components.gallery import GalleryData, GalleryImage
from gradio.data_classes import ImageData
from PIL import Image, ImageDraw

from mmodal.data.images import ImageSkipped, read_image

log = logging.getLogger(__name__)

ROUTE = "/mmodal/thumbnail"
THUMBNAIL_SIDE = 320
MATCH_COLOR = (255, 255, 0)  # boxes around the objects a query matched
MAX_BOXES = 8
BOX_SEPARATOR = "_"
PLAIN = "plain"  # the boxes part of a link with none
MEDIA_TYPE = "image/webp"
BROWSER_CACHE_SECONDS = 300
Box = tuple[float, float, float]  # cx, cy as fractions of the picture; d, the diameter over the width


def thumbnail_link(root_url: str, item_id: int, matched: Sequence[dict] = ()) -> str:
    """The address of an indexed image's thumbnail with a numbered box around each matched object. The boxes
    are in the path, not a query string, so that the link's last part is a short file name for API clients."""
    boxes = BOX_SEPARATOR.join(f"{m['cx']:.3f},{m['cy']:.3f},{m['d']:.3f}" for m in matched[:MAX_BOXES])
    return f"{root_url}{ROUTE}/{item_id}/{boxes or PLAIN}.webp"


def parse_boxes(text: str) -> list[Box]:
    """ "cx,cy,d_cx,cy,d" (or "plain") → boxes; refuses anything else with a ValueError that says what is wrong."""
    if text == PLAIN:
        return []
    entries = text.split(BOX_SEPARATOR)
    if len(entries) > MAX_BOXES:
        raise ValueError(f"at most {MAX_BOXES} boxes, got {len(entries)}")
    boxes = []
    for entry in entries:
        numbers = entry.split(",")
        if len(numbers) != 3:
            raise ValueError(f"a box is cx,cy,d; got {entry[:40]!r}")
        try:
            box = tuple(float(n) for n in numbers)
        except ValueError:
            raise ValueError(f"a box is three numbers; got {entry[:40]!r}") from None
        if not all(math.isfinite(v) and 0 <= v <= 2 for v in box):
            raise ValueError(f"box values are fractions of the picture, from 0 to 2; got {entry[:40]!r}")
        boxes.append(box)
    return boxes


def thumbnail_gallery(**options) -> gr.Gallery:
    """A gallery of (thumbnail link, caption) pairs, passed to the page and to API clients as links.

    Gradio's own gallery runs a thread pool per answer, and `gradio_client` fetches an item from the app's
    file route unless it is marked as a stream; marked so, it fetches the link itself, with its login.
    """
    box = gr.Gallery(**options)

    def postprocess(value: Sequence[tuple[str, str]] | None) -> GalleryData:
        items = [
            GalleryImage(
                image=ImageData(
                    path=link, url=link, orig_name=link.rsplit("/", 1)[-1], mime_type=MEDIA_TYPE, is_stream=True
                ),
                caption=caption,
            )
            for link, caption in value or ()
        ]
        return GalleryData(root=items)

    box.postprocess = postprocess
    return box


def draw_thumbnail(path: str, boxes: Sequence[Box] = ()) -> Image.Image:
    """The picture, small, with a box around each matched object, numbered in the query's order."""
    try:
        image = read_image(path, draft_size=THUMBNAIL_SIDE).image.convert("RGB")
    except ImageSkipped as skipped:  # moved or changed since indexing: show a grey tile, keep the rank
        log.warning("cannot show %s: %s", path, skipped.reason)
        return Image.new("RGB", (THUMBNAIL_SIDE, THUMBNAIL_SIDE), (128, 128, 128))
    image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    draw = ImageDraw.Draw(image)
    for number, (cx, cy, d) in enumerate(boxes, 1):
        cx, cy, half = cx * image.width, cy * image.height, d * image.width * 0.6
        draw.rectangle((cx - half, cy - half, cx + half, cy + half), outline=MATCH_COLOR, width=2)
        draw.text((cx - half + 3, cy - half + 1), str(number), fill=MATCH_COLOR)
    return image


def add_thumbnail_route(app: gr.Blocks, path_of: Callable[[int], str | None]) -> None:
    """Serves ``ROUTE`` from the launched ``app``, for the images ``path_of`` finds in the index."""
    server = app.app
    # Gradio's own login check, as it guards its config route; none when the app has no login.
    login_required = next(route.dependencies for route in server.routes if getattr(route, "path", None) == "/config")

    def thumbnail(item_id: int, boxes: str) -> Response:
        path = path_of(item_id)
        if path is None:
            raise HTTPException(status_code=404, detail=f"no indexed image has the id {item_id}")
        try:
            parsed = parse_boxes(boxes)
        except ValueError as error:
            raise HTTPException(status_code=400, detail=str(error)) from None
        encoded = io.BytesIO()
        draw_thumbnail(path, parsed).save(encoded, "WEBP", quality=85)
        return Response(
            encoded.getvalue(),
            media_type=MEDIA_TYPE,
            headers={"Cache-Control": f"private, max-age={BROWSER_CACHE_SECONDS}"},
        )

    server.add_api_route(
        ROUTE + "/{item_id}/{boxes}.webp",
        thumbnail,
        methods=["GET"],
        dependencies=list(login_required),
        include_in_schema=False,
    )
