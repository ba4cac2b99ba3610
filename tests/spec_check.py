"""Independent conformance checker for generated Shapes datasets.

Re-implements the rules of ``shapes-world.md`` (scene, pixels, language, questions, relevance, hold-out,
speech) from the spec text alone, without importing ``mmodal.shapes``, so a generator bug cannot hide here.

Usage: ``python -m tests.spec_check DIR [--no-pixels]``; exit code 0 when the dataset conforms.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from itertools import combinations
from pathlib import Path

import numpy as np

SHAPES = ("circle", "square", "triangle", "star", "hexagon")
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 90, 230),
    "yellow": (240, 220, 40),
    "purple": (150, 60, 200),
    "orange": (245, 140, 30),
    "cyan": (40, 210, 220),
    "white": (245, 245, 245),
}
SIZES = {"small": (0.12, 0.18), "large": (0.26, 0.36)}
NUMS = ("zero", "one", "two", "three", "four")
HELD_OUT = {("purple", "star"), ("yellow", "triangle"), ("cyan", "hexagon"), ("orange", "square"), ("green", "circle")}
MARGIN, TOL_D = 0.10, 1e-3
RELS = ("left of", "right of", "above", "below")
REL_RE = r"(left of|right of|above|below)"

Obj = tuple  # (shape, color, size, cx, cy)
Desc = tuple  # (size | None, color | None, shape | None)


def holds(a: Obj, rel: str, b: Obj) -> bool:
    """True when object a stands in relation rel to object b (margin 0.10 on cx or cy)."""
    if rel in ("left of", "right of"):
        return a[3] < b[3] - MARGIN if rel == "left of" else a[3] > b[3] + MARGIN
    return a[4] < b[4] - MARGIN if rel == "above" else a[4] > b[4] + MARGIN


def matches(o: Obj, d: Desc) -> bool:
    return (d[0] is None or o[2] == d[0]) and (d[1] is None or o[1] == d[1]) and (d[2] is None or o[0] == d[2])


def parse_desc(words: list[str], plural: bool = False, singular_ok: bool = True) -> Desc | None:
    """'[size] [color] noun' -> (size, color, shape); noun is a shape or 'object' (with 's' when plural)."""
    w, nouns = list(words), SHAPES + ("object",)
    size = w.pop(0) if len(w) > 1 and w[0] in SIZES else None
    color = w.pop(0) if len(w) > 1 and w[0] in COLORS else None
    if len(w) != 1 or not (singular_ok and w[0] in nouns or plural and w[0].endswith("s") and w[0][:-1] in nouns):
        return None
    noun = w[0] if w[0] in nouns else w[0][:-1]
    return size, color, None if noun == "object" else noun


def parse_part(text: str) -> tuple | None:
    """One caption/query part: ('obj', desc), ('count', n, desc) or ('rel', desc_a, rel, desc_b)."""
    m = re.fullmatch(r"(.+) " + REL_RE + r" (.+)", text)
    if m:
        a, b = parse_part(m.group(1)), parse_part(m.group(3))
        if a and b and a[0] == "obj" and b[0] == "obj":
            return "rel", a[1], m.group(2), b[1]
        return None
    words = text.split(" ")
    if words[0] in ("a", "an"):
        d = parse_desc(words[1:])
        return ("obj", d) if d else None
    if words[0] in NUMS[1:]:
        n = NUMS.index(words[0])
        d = parse_desc(words[1:], plural=n > 1, singular_ok=n == 1)
        return ("count", n, d) if d else None
    return None


def parse_text(text: str) -> list[tuple] | None:
    """A caption or query: parts joined by ', ' and ' and '. None when any part does not parse."""
    parts = [parse_part(p) for chunk in text.split(", ") for p in chunk.split(" and ")]
    return None if any(p is None for p in parts) else parts


def satisfied(parts: list[tuple], objs: list[Obj]) -> bool:
    """Every part holds, each by distinct objects; a count part uses up all the objects it counts."""
    used: set[int] = set()
    for p in parts:
        if p[0] == "count":
            idx = {i for i, o in enumerate(objs) if matches(o, p[2])}
            if len(idx) != p[1] or idx & used:
                return False
            used |= idx
    rest = [p for p in parts if p[0] != "count"]

    def search(k: int, used: set[int]) -> bool:
        if k == len(rest):
            return True
        p = rest[k]
        for i, o in enumerate(objs):
            if i in used or not matches(o, p[1]):
                continue
            if p[0] == "obj":
                if search(k + 1, used | {i}):
                    return True
                continue
            for j, q in enumerate(objs):
                if j != i and j not in used and matches(q, p[3]) and holds(o, p[2], q) and search(k + 1, used | {i, j}):
                    return True
        return False

    return search(0, used)


def norm_answer(a: str) -> str:
    a = " ".join(a.strip().lower().split())
    a = re.sub(r"^(a|an|the) ", "", a)
    return NUMS[int(a)] if a.isdigit() and int(a) < len(NUMS) else a


def answer_question(q: str, objs: list[Obj]) -> tuple[str | None, str | None, str]:
    """Returns (type, answer, problem); problem is '' when the question is well posed."""

    def unique(np_text: str, **forbid: bool) -> tuple[int | None, str]:
        d = parse_desc(np_text.split(" "))
        if d is None or any(d[("size", "color", "shape").index(k)] for k in forbid):
            return None, f"bad noun phrase '{np_text}'" if d is None else f"'{np_text}' names the asked {[*forbid][0]}"
        hits = [i for i, o in enumerate(objs) if matches(o, d)]
        return (hits[0], "") if len(hits) == 1 else (None, f"'{np_text}' picks {len(hits)} objects")

    if m := re.fullmatch(r"what color is the (.+)\?", q):
        i, err = unique(m.group(1), color=True)
        return "color", None if i is None else objs[i][1], err
    if m := re.fullmatch(r"what shape is the (.+)\?", q):
        if not m.group(1).endswith("object"):
            return "shape", None, "shape question must end in 'object'"
        i, err = unique(m.group(1))
        return "shape", None if i is None else objs[i][0], err
    if m := re.fullmatch(r"what size is the (.+)\?", q):
        i, err = unique(m.group(1), size=True)
        return "size", None if i is None else objs[i][2], err
    if m := re.fullmatch(r"how many (.+) are there\?", q):
        d = parse_desc(m.group(1).split(" "), plural=True, singular_ok=False)
        return "count", d and NUMS[sum(matches(o, d) for o in objs)], "" if d else "bad plural phrase"
    if m := re.fullmatch(r"is there an? (.+)\?", q):
        d = parse_desc(m.group(1).split(" "))
        return "exist", d and ("yes" if any(matches(o, d) for o in objs) else "no"), "" if d else "bad object phrase"
    if m := re.fullmatch(r"is the (.+) " + REL_RE + r" the (.+)\?", q):
        (i, e1), (j, e2) = unique(m.group(1)), unique(m.group(3))
        if i is None or j is None or i == j:
            return "relation", None, e1 or e2 or "both phrases pick the same object"
        if not any(holds(objs[i], r, objs[j]) for r in RELS):
            return "relation", None, "pair within the margin on both axes: no relation may be named"
        return "relation", "yes" if holds(objs[i], m.group(2), objs[j]) else "no", ""
    if m := re.fullmatch(r"what is " + REL_RE + r" the (.+)\?", q):
        j, err = unique(m.group(2))
        if j is None:
            return "query", None, err
        hits = [o for i, o in enumerate(objs) if i != j and holds(o, m.group(1), objs[j])]
        if len(hits) != 1:
            return "query", None, f"{len(hits)} objects are {m.group(1)} the anchor"
        return "query", f"{hits[0][1]} {hits[0][0]}", ""
    return None, None, "matches no template"


def names_held_out(text: str) -> bool:
    w = re.sub(r"[?,]", "", text.lower()).split()
    return any((a, b.removesuffix("s")) in HELD_OUT for a, b in zip(w, w[1:]))


def check_scene(iid: str, sc: dict) -> list[str]:
    errs: list[str] = []
    W, H, objs = sc.get("width"), sc.get("height"), sc.get("objects", [])
    if not all(isinstance(v, int) and 64 <= v <= 256 for v in (W, H)):
        return [f"image {iid}: canvas {W}x{H} outside 64-256"]
    if not 1 <= len(objs) <= 4:
        errs.append(f"image {iid}: {len(objs)} objects")
    tol = TOL_D * W
    for k, o in enumerate(objs):
        if o.get("shape") not in SHAPES or o.get("color") not in COLORS or o.get("size") not in SIZES:
            errs.append(f"image {iid} obj {k}: bad vocabulary {o}")
            continue
        lo, hi = SIZES[o["size"]]
        if not lo - TOL_D <= o["d"] <= hi + TOL_D:
            errs.append(f"image {iid} obj {k}: d={o['d']} outside {o['size']} range")
        r, x, y = o["d"] * W / 2, o["cx"] * W, o["cy"] * H
        if x - r < -tol or x + r > W + tol or y - r < -tol or y + r > H + tol:
            errs.append(f"image {iid} obj {k}: bounding circle leaves the canvas")
        if o["shape"] == "circle" and o.get("angle", 0) != 0:
            errs.append(f"image {iid} obj {k}: circle with angle {o['angle']}")
    for (a, o), (b, p) in combinations(enumerate(objs), 2):
        dist = float(np.hypot((o["cx"] - p["cx"]) * W, (o["cy"] - p["cy"]) * H))
        if dist < (o["d"] + p["d"]) * W / 2 - tol:
            errs.append(f"image {iid}: objects {a} and {b} intersect")
    return errs


def check_pixels_of(root: Path, rec: dict) -> list[str]:
    from PIL import Image

    iid, sc = rec["id"], rec["scene"]
    with Image.open(root / rec["file"]) as im:
        jpeg = im.format == "JPEG"
        px = np.asarray(im.convert("RGB"), dtype=np.float64)
    H, W = px.shape[:2]
    if (W, H) != (sc["width"], sc["height"]):
        return [f"image {iid}: pixel size {W}x{H} != scene {sc['width']}x{sc['height']}"]
    errs, tol = [], 24 + 30 + (45 if jpeg else 0)
    for k, o in enumerate(sc["objects"]):
        # the pixel that contains the centre; the 3x3 median ignores the odd outline/edge pixel of tiny shapes
        x, y = min(max(int(o["cx"] * W), 1), W - 2), min(max(int(o["cy"] * H), 1), H - 2)
        med = np.median(px[y - 1 : y + 2, x - 1 : x + 2].reshape(-1, 3), axis=0)
        if np.abs(med - COLORS[o["color"]]).max() > tol:
            errs.append(f"image {iid} obj {k}: centre colour {med.astype(int).tolist()} is not {o['color']}")
    for x, y in ((0, 0), (W - 1, 0), (0, H - 1), (W - 1, H - 1)):
        covered = any(
            np.hypot(x + 0.5 - o["cx"] * W, y + 0.5 - o["cy"] * H) <= o["d"] * W / 2 + 1 for o in sc["objects"]
        )
        if not covered and px[y, x].max() > 160:
            errs.append(f"image {iid}: corner ({x},{y}) is bright {px[y, x].astype(int).tolist()}")
    return errs


def check_audio(root: Path, qid: str, path: str) -> list[str]:
    import soundfile as sf

    f = root / path
    if not f.is_file():
        return [f"query {qid}: audio {path} missing"]
    try:
        (data, sr), subtype = sf.read(str(f), always_2d=True), sf.info(str(f)).subtype
    except Exception as e:
        return [f"query {qid}: audio unreadable: {e}"]
    errs = []
    if sr != 16000 or data.shape[1] != 1 or subtype != "PCM_16":
        errs.append(f"query {qid}: audio is {sr} Hz, {data.shape[1]} channels, {subtype} (want 16000 Hz mono PCM_16)")
    if len(data) < 0.3 * sr:
        errs.append(f"query {qid}: audio only {len(data) / sr:.2f} s")
    elif float(np.sqrt(np.mean(data**2))) <= 1e-3:
        errs.append(f"query {qid}: audio is silent")
    return errs


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()] if path.exists() else []


def badly_formed(text: str, question: bool = False) -> bool:
    """Not lowercase with single spaces, or final punctuation other than the '?' that ends a question."""
    return (
        text != " ".join(text.lower().split())
        or text[-1:] in ".!?,"
        and text[-1:] != "?" * question
        or (question and not text.endswith("?"))
    )


def check_dataset(root: str | Path, check_pixels: bool = True, stats: dict | None = None) -> list[str]:
    """All spec violations found in the dataset folder at root (an empty list means it conforms)."""
    root = Path(root)
    meta = json.loads((root / "dataset.json").read_text()) if (root / "dataset.json").exists() else {}
    train = meta.get("split") == "train"
    errs: list[str] = []
    if "held_out_pairs" in meta and {tuple(p) for p in meta["held_out_pairs"]} != HELD_OUT:
        errs.append(f"dataset.json: held_out_pairs {meta['held_out_pairs']} differ from the spec")
    images = read_jsonl(root / "images.jsonl")
    scenes: dict[str, list[Obj]] = {}
    for rec in images:
        iid, sc = rec["id"], rec.get("scene")
        errs += [f"image {iid}: duplicate id"] * (iid in scenes) + [f"image {iid}: no scene"] * (sc is None)
        if sc is None:
            continue
        errs += (e := check_scene(iid, sc))
        scenes[iid] = [tuple(o.get(k) for k in ("shape", "color", "size", "cx", "cy")) for o in sc["objects"]]
        if train and any((o[1], o[0]) in HELD_OUT for o in scenes[iid]):
            errs.append(f"image {iid}: held-out pair in a train image")
        if check_pixels and not e:
            try:
                errs += check_pixels_of(root, rec)
            except OSError as ex:
                errs.append(f"image {iid}: cannot read {rec['file']}: {ex}")

    def truth(where: str, iid: str, text: str) -> bool | None:
        parts = parse_text(text)
        if parts is None:
            errs.append(f"{where}: cannot parse '{text}'")
        elif iid not in scenes:
            errs.append(f"{where}: unknown image {iid}")
        else:
            return satisfied(parts, scenes[iid])
        return None

    def held(where: str, *texts: str) -> None:
        if train and any(names_held_out(t) for t in texts):
            errs.append(f"{where}: train text names a held-out pair: {' / '.join(texts)}")

    def form(where: str, text: str, question: bool = False) -> None:
        if badly_formed(text, question):
            errs.append(f"{where}: badly formed text '{text}'")

    caps, foils = read_jsonl(root / "captions.jsonl"), read_jsonl(root / "foils.jsonl")
    for n, c in enumerate(caps, 1):
        form(where := f"captions.jsonl:{n}", c["text"])
        if c.get("kind") not in {"list", "relation", "count", None}:
            errs.append(f"{where}: bad kind {c['kind']}")
        if truth(where, c["image_id"], c["text"]) is False:
            errs.append(f"{where}: caption '{c['text']}' is false for image {c['image_id']}")
        held(where, c["text"])
    for n, f in enumerate(foils, 1):
        form(where := f"foils.jsonl:{n}", f["caption"]), form(where, f["foil"])
        if f.get("kind") not in {"color_swap", "relation_swap", "count_change"}:
            errs.append(f"{where}: bad kind {f.get('kind')}")
        if truth(where, f["image_id"], f["caption"]) is False:
            errs.append(f"{where}: caption '{f['caption']}' is false for image {f['image_id']}")
        if truth(where, f["image_id"], f["foil"]) is True:
            errs.append(f"{where}: foil '{f['foil']}' is true for image {f['image_id']}")
        held(where, f["caption"], f["foil"])
    qs = read_jsonl(root / "questions.jsonl")
    for n, q in enumerate(qs, 1):
        form(where := f"questions.jsonl:{n}", q["question"], question=True)
        if q["image_id"] not in scenes:
            errs.append(f"{where}: unknown image {q['image_id']}")
            continue
        qtype, ans, problem = answer_question(q["question"], scenes[q["image_id"]])
        if problem:
            errs.append(f"{where}: '{q['question']}' (image {q['image_id']}): {problem}")
        elif norm_answer(q["answer"]) != ans:
            errs.append(f"{where}: '{q['question']}' (image {q['image_id']}): answer '{q['answer']}' != '{ans}'")
        if q.get("type") is not None and qtype is not None and q["type"] != qtype:
            errs.append(f"{where}: type {q['type']} but the template is {qtype}")
        held(where, q["question"], q["answer"])
    queries = read_jsonl(root / "queries.jsonl")
    n_audio = 0
    for q in queries:
        form(where := f"query {q['id']}", q["text"])
        held(where, q["text"])
        if q.get("kind") == "held_out" and not names_held_out(q["text"]):
            errs.append(f"{where}: kind held_out but '{q['text']}' names no held-out pair")
        parts = parse_text(q["text"])
        if parts is None:
            errs.append(f"{where}: cannot parse '{q['text']}'")
        else:
            rel = {iid for iid, objs in scenes.items() if satisfied(parts, objs)}
            got = set(q.get("relevant", []))
            if got != rel:
                errs.append(
                    f"{where} '{q['text']}': relevant missing {sorted(rel - got)[:5]} "
                    f"({len(rel - got)}), extra {sorted(got - rel)[:5]} ({len(got - rel)})"
                )
        if q.get("audio"):
            n_audio += 1
            errs += check_audio(root, q["id"], q["audio"])
    if stats is not None:
        stats.update(
            {
                "images": len(images),
                "captions": len(caps),
                "foils": len(foils),
                "questions": len(qs),
                "queries": len(queries),
                "audio files": n_audio,
            }
        )
    return errs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir")
    ap.add_argument("--no-pixels", action="store_true", help="skip the image pixel checks")
    args = ap.parse_args(argv)
    stats: dict = {}
    errs = check_dataset(args.dir, check_pixels=not args.no_pixels, stats=stats)
    for line in errs[:50] + [f"... and {len(errs) - 50} more"] * (len(errs) > 50):
        print(line)
    print("checked " + ", ".join(f"{v} {k}" for k, v in stats.items()) + f": {len(errs)} problems")
    return 1 if errs else 0


if __name__ == "__main__":
    sys.exit(main())
