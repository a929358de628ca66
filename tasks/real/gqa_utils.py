"""GQA hooks that read the testdev images from the local datasets cache (no hub access).

The built-in ``gqa_process_docs`` loads ``lmms-lab-encoder/GQA`` / ``testdev_balanced_images`` from the hub and maps
an image into each of the 12,578 questions. Here the 398 images are loaded once from the same datasets cache
lmms-eval reads the questions from (``LMMS_EVAL_DATASETS_CACHE``) and looked up by ``imageId`` when a question is asked.
"""

from __future__ import annotations

import functools

import datasets
from lmms_eval.api.task import _resolve_hf_datasets_cache_dir  # the cache dir lmms-eval itself loads datasets from

IMAGES_REPO = "lmms-lab-encoder/GQA"
IMAGES_CONFIG = "testdev_balanced_images"
IMAGES_SPLIT = "testdev"


@functools.lru_cache(maxsize=4)
def image_table(cache_dir: str) -> tuple[datasets.Dataset, dict[str, int]]:
    """The GQA testdev images and an ``imageId -> row`` index (loaded once per cache dir)."""
    try:
        images = datasets.load_dataset(IMAGES_REPO, IMAGES_CONFIG, split=IMAGES_SPLIT, cache_dir=cache_dir)
    except Exception as exc:
        raise RuntimeError(
            f"paper_gqa: the GQA images ({IMAGES_REPO}, config {IMAGES_CONFIG}) are not in the local datasets cache "
            f"{cache_dir}; fetch them once with network: python -m mmmamba_bench.data.real --data-dir {cache_dir} "
            f"paper_gqa ({type(exc).__name__}: {exc})") from exc
    return images, {image_id: i for i, image_id in enumerate(images["id"])}


def gqa_process_docs(dataset: datasets.Dataset) -> datasets.Dataset:
    """Check that every question's image is available; the rows are returned unchanged."""
    _, index = image_table(_resolve_hf_datasets_cache_dir())
    missing = sorted(set(dataset.unique("imageId")) - set(index))
    if missing:
        raise RuntimeError(f"paper_gqa: {len(missing)} image ids of the questions are not in {IMAGES_REPO}/"
                           f"{IMAGES_CONFIG}, e.g. {missing[:5]}")
    return dataset


def gqa_doc_to_visual(doc: dict) -> list:
    images, index = image_table(_resolve_hf_datasets_cache_dir())
    return [images[index[doc["imageId"]]]["image"]]  # the adapter normalises mode and bit depth (images.to_rgb)
