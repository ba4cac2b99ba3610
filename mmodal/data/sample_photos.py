"""Real photos that ship inside PyPI packages (scikit-image's and scikit-learn's sample images), and one-object
queries for the photos that show one nameable object: a small offline check of a model for real photos.

Every sample image goes into the index, textures and microscopy too, as distractors; a query counts as found
when its photo ranks first.
"""

from __future__ import annotations

from pathlib import Path

# query → the file it describes. Chosen from what each photo shows, for every sample photo whose subject is one
# object (not a texture, a micrograph or a page).
SAMPLE_PHOTO_QUERIES = {
    "a cat": "chelsea.png",
    "a cup of coffee": "coffee.png",
    "a rocket": "rocket.jpg",
    "an astronaut": "astronaut.png",
    "a motorcycle": "motorcycle_left.png",
    "a photographer with a camera": "camera.png",
    "a horse": "horse.png",
    "coins": "coins.png",
    "a clock": "clock_motion.png",
    "a flower": "flower.jpg",
    "a temple": "china.jpg",
    "the surface of the moon": "moon.png",
}
# The same scene as motorcycle_left.png from a stereo pair's other camera: left out so the query has one answer.
LEFT_OUT = {"motorcycle_right.png"}
SUFFIXES = {".png", ".jpg", ".jpeg"}


def sample_photo_paths() -> list[Path]:
    """The sample photos of scikit-image and scikit-learn (both must be installed)."""
    try:
        import skimage
        import sklearn
    except ImportError as error:
        raise ModuleNotFoundError(
            "the sample photos come with scikit-image and scikit-learn: pip install 'mmodal[dev]'"
        ) from error
    folders = [Path(skimage.__file__).parent / "data", Path(sklearn.__file__).parent / "datasets" / "images"]
    return sorted(
        p for folder in folders for p in folder.iterdir() if p.suffix.lower() in SUFFIXES and p.name not in LEFT_OUT
    )
