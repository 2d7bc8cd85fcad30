"""Images, for embedding and fine-tuning alike: decoding, checks, transforms, and a dataset whose random
transforms are seeded per item, so that views and training augmentations are reproducible.

On a CPU each batch is decoded on all cores (in threads: PIL releases the GIL) just before the model needs it; on
a GPU in DataLoader worker processes, with pinned memory.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tlcache.errors import UserError, first_few
from tlcache.hashing import hash_bytes

# Training augmentations of `tlcache finetune --augment` (see training_transform).
AUGMENTATIONS = ("crop", "shift", "flip", "color", "rotate", "erase")
DEFAULT_AUGMENT = ("crop", "flip")
VIEWS_SEED = 0
# How images become 8-bit RGB (as_rgb): in the cache key of every image backbone, so a store decoded otherwise is
# never served.
DECODING = "RGB, upright by EXIF, 16-bit and float scaled, transparency over white"
EXIF_ORIENTATION = 0x0112
OUT_OF_RANGE = (
    "some images hold values outside the range they are read from (float images 0-1, 32-bit integer images "
    "0-65535); those values are clipped: save such images rescaled to it"
)
EIGHT_BITS_WIDE = (
    "some 16-bit or 32-bit images hold values up to 255 only; they are read from 0-65535, so nearly black: save "
    "8-bit data as 8-bit images"
)

# Seeded transforms draw from torch's global generator, which decoding threads share.
_GLOBAL_RNG = threading.Lock()


def read_rgb(path: str | Path):
    """An image file decoded to an RGB PIL image; a damaged file is a UserError naming it."""
    rgb, why = _decoded(path)
    if why:
        raise UserError(f"{path} {why}; fix or remove it")
    return rgb


def _decoded(path: str | Path) -> tuple[Any, str | None]:
    """(the image as RGB, None), or (None, why it could not be decoded)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return as_rgb(image), None
    except Exception as exc:  # PIL raises many types for damaged files
        return None, f"could not be decoded ({exc})"


def as_rgb(image):
    """A PIL image as 8-bit RGB the way it is shown: turned upright by its EXIF orientation (a phone photo taken
    sideways is stored sideways), transparent pixels over white, and with more than 8 bits per pixel scaled from
    its type's full range (16-bit greyscale PNGs and TIFFs of medical, microscopy or depth images, and Pillow's
    32-bit integer mode, from 0-65535; 32-bit floats from 0-1, as torchvision's ``to_dtype(..., scale=True)``
    reads them). Pillow's own conversion clips those at 255: a 16-bit image turned white, a float one black. Every
    image path (embedding, fine-tuning, the Embedder, exported models) decodes through here; the recipe is in the
    image cache key."""
    from PIL import Image, ImageOps

    if image.getexif().get(EXIF_ORIENTATION, 1) != 1:
        image = ImageOps.exif_transpose(image)
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        scale = 255.0 if image.mode == "F" else 255.0 / 65535.0
        values = np.nan_to_num(np.asarray(image, dtype=np.float64) * scale)
        # One message each, so each is shown once, not once an image.
        if values.min() < -0.5 or values.max() > 255.5:
            warnings.warn(OUT_OF_RANGE, UserWarning, stacklevel=2)
        elif image.mode != "F" and 0 < values.max() <= 255.0 / 257.0:
            warnings.warn(EIGHT_BITS_WIDE, UserWarning, stacklevel=2)
        image = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        # Transparent pixels as a viewer shows them, over white (as transformers' convert_to_rgb does): Pillow's
        # conversion keeps whatever colour they store, often black. Icons with alpha: 0.39-0.42 test accuracy so,
        # 0.61-0.71 over white (a new user's pass: efficientnet-lite0, every head).
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return image.convert("RGB")


def unreadable_headers(paths: Sequence[str | Path]) -> dict[int, str]:
    """{position: why} for every file of ``paths`` whose header cannot be read: all of them in one pass, before
    the long run. A file whose header passes can still fail to decode later (a truncated JPEG). Images larger than
    Pillow's decompression-bomb limit (Image.MAX_IMAGE_PIXELS) are read all the same, and named in one warning; twice
    the limit, Pillow refuses them, and they are unreadable here too."""
    from PIL import Image

    bad, huge = {}, []
    for position, path in enumerate(paths):
        try:
            with warnings.catch_warnings():  # Pillow's warning of an image past its limit names no file
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(path):
                    pass
        except Image.DecompressionBombWarning:
            huge.append(str(path))
        except Exception as exc:  # PIL raises many types for damaged files
            bad[position] = f"is not a readable image ({exc})"
    if huge:
        named = first_few(huge, 3)
        warnings.warn(
            f"{len(huge)} {'image is' if len(huge) == 1 else 'images are'} larger than Pillow's limit of "
            f"{Image.MAX_IMAGE_PIXELS} pixels, which guards against decompression bombs: {named}; decoded all the same "
            "(slowly, with much memory): shrink them, or remove them if you do not trust where they came from",
            UserWarning,
            stacklevel=2,
        )
    return bad


def check_images(paths: Sequence[str | Path]) -> None:
    """Read every header before the long run, so a bad file stops it at once rather than at 90%; the message
    names every bad file (up to a few) and how many there are."""
    bad = unreadable_headers(paths)
    if bad:
        raise UserError(f"{describe_unreadable([(paths[i], why) for i, why in bad.items()])}; fix or remove them")


def describe_unreadable(items: Sequence[tuple[Any, str]], shown: int = 3) -> str:
    """One line for (name, why) of unreadable items: how many, and the first few."""
    named = "; ".join(f"{name} {why}" for name, why in items[:shown])
    more = f"; and {len(items) - shown} more" if len(items) > shown else ""
    return f"{len(items)} unreadable {'item' if len(items) == 1 else 'items'}: {named}{more}"


def view_seed(fingerprint: str, view: int, seed: int = VIEWS_SEED) -> int:
    """The random seed of one augmented view of one item: fixed by its content, so views are reproducible and
    identical items share them."""
    return int(hash_bytes(f"{fingerprint}:{view}:{seed}".encode())[:15], 16)


def item_seed(*parts: int) -> int:
    """A seed for one item's random transform, fixed by integers such as (run seed, epoch, position)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


def eval_transform(preprocessing: dict[str, Any]) -> Callable:
    """PIL image -> normalised CHW float tensor, as a backbone's ``preprocessing`` says (resize the shorter side,
    crop the centre); picklable, so DataLoader workers can run it."""
    from torchvision import transforms

    return transforms.Compose(
        [
            transforms.Resize(preprocessing["resize_shorter"], interpolation=transforms.InterpolationMode.BILINEAR),
            transforms.CenterCrop(preprocessing["center_crop"]),
            transforms.ToTensor(),
            transforms.Normalize(preprocessing["mean"], preprocessing["std"]),
        ]
    )


def view_transform(image_size: int, mean: Sequence[float], std: Sequence[float], augmentation: dict) -> Callable:
    """PIL image -> one randomly augmented, normalised view, as ``augmentation`` (recorded in the cache key of
    stores with views) says; seed the torch generator first for a fixed view."""
    from torchvision import transforms

    crop = augmentation["random_resized_crop"]
    return transforms.Compose(
        [
            transforms.RandomResizedCrop(
                image_size,
                scale=tuple(crop["scale"]),
                ratio=tuple(crop["ratio"]),
                interpolation=transforms.InterpolationMode.BILINEAR,
            ),
            transforms.RandomHorizontalFlip(augmentation["horizontal_flip"]),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )


def training_transform(bb, augment: Sequence[str]) -> Callable:
    """An image backbone's preprocessing with fine-tuning augmentations: ``crop`` (random resized crop, 60-100% of
    the area), ``shift`` (a translation of up to 10% of the side, the border filled black: for centred items that
    a crop would cut into), ``flip`` (horizontal), ``color`` (brightness, contrast, saturation 0.2), ``rotate`` (up
    to 10 degrees), ``erase`` (random erasing of a patch, p 0.25)."""
    from torchvision import transforms

    size = bb.image_size
    steps = []
    if "crop" in augment:
        steps.append(transforms.RandomResizedCrop(size, scale=(0.6, 1.0), antialias=True))
    else:
        steps += [transforms.Resize(round(size / bb.crop_ratio)), transforms.CenterCrop(size)]
    if "shift" in augment:
        steps.append(transforms.RandomAffine(degrees=0, translate=(0.1, 0.1)))
    if "flip" in augment:
        steps.append(transforms.RandomHorizontalFlip())
    if "color" in augment:
        steps.append(transforms.ColorJitter(0.2, 0.2, 0.2))
    if "rotate" in augment:
        steps.append(transforms.RandomRotation(10))
    steps += [transforms.ToTensor(), transforms.Normalize(bb.mean, bb.std)]
    if "erase" in augment:
        steps.append(transforms.RandomErasing(p=0.25))
    return transforms.Compose(steps)


class ImageFiles:
    """Image files as tensors, for threads or DataLoader workers: item i is ``(pixels, views, error)``.

    ``seeds[i]`` (when given) seeds item i's transform, for random augmentations that are the same in every run;
    ``view_seeds[i]`` lists the seeds of item i's augmented views, each made by ``view_transform`` (views is None
    without them). A file that cannot be decoded gives its message as ``error``: a message crosses from a worker
    process as one line, an exception would not.
    """

    def __init__(
        self,
        paths: Sequence[str | Path],
        transform: Callable,
        seeds: Sequence[int] | None = None,
        view_transform: Callable | None = None,
        view_seeds: Sequence[Sequence[int]] | None = None,
    ):
        self.paths = list(paths)
        self.transform = transform
        self.seeds = seeds
        self.view_transform = view_transform
        self.view_seeds = view_seeds

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        import torch

        rgb, why = _decoded(self.paths[index])
        if why:
            return None, None, why
        pixels = self.transform(rgb) if self.seeds is None else _seeded(self.transform, rgb, self.seeds[index])
        views = None
        if self.view_seeds is not None:
            views = torch.stack([_seeded(self.view_transform, rgb, seed) for seed in self.view_seeds[index]])
        return pixels, views, None


def _seeded(transform: Callable, rgb, seed: int):
    import torch

    with _GLOBAL_RNG, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return transform(rgb)


def image_batches(
    dataset: ImageFiles, order: Sequence[int], batch_size: int, workers: int, pin_memory: bool
) -> Iterator[tuple[Any, Any]]:
    """(pixels, views) per batch of ``order``'s items, in that order: from DataLoader worker processes, or with no
    workers decoded on all cores just before the model needs it, so decoding never competes with the model. A file
    that cannot be decoded stops the run with its name."""
    for start, (pixels, views, errors) in zip(
        range(0, len(order), batch_size), _batches(dataset, order, batch_size, workers, pin_memory)
    ):
        if errors:
            position, why = errors[0]
            raise UserError(f"{dataset.paths[order[start + position]]} {why}; fix or remove it")
        yield pixels, views


def decoded_batches(
    dataset: ImageFiles, batch_size: int, workers: int, pin_memory: bool
) -> Iterator[tuple[Any, Any, list[tuple[int, str]]]]:
    """(pixels, views, errors) per batch of ``batch_size`` items in the dataset's order, as image_batches but
    going on past files that cannot be decoded: ``errors`` lists (position in the batch, why) for those, and
    pixels and views hold the others in order (None when none of the batch decoded)."""
    yield from _batches(dataset, range(len(dataset)), batch_size, workers, pin_memory)


def _batches(dataset: ImageFiles, order: Sequence[int], batch_size: int, workers: int, pin_memory: bool):
    import torch

    if workers:
        return torch.utils.data.DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=list(order),
            num_workers=workers,
            collate_fn=_collate,
            pin_memory=pin_memory,
        )
    return _decode_in_threads(dataset, order, batch_size)


def _decode_in_threads(dataset: ImageFiles, order: Sequence[int], batch_size: int) -> Iterator:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for start in range(0, len(order), batch_size):
            yield _collate(list(pool.map(dataset.__getitem__, order[start : start + batch_size])))


def _collate(batch):
    """(pixels, views, errors) of a batch of ImageFiles items: the decoded ones stacked, (position, why) for the
    others."""
    import torch

    errors = [(position, error) for position, (_, _, error) in enumerate(batch) if error]
    good = [item for item in batch if not item[2]]
    if not good:
        return None, None, errors
    pixels = torch.stack([tensor for tensor, _, _ in good])
    views = torch.stack([v for _, v, _ in good]) if good[0][1] is not None else None
    return pixels, views, errors


def default_workers(n_items: int, device) -> int:
    """Decoding processes that run beside the model: on a GPU, up to 4 once there is enough to decode. On a CPU
    none: the model already keeps every core busy, and a decoder beside it makes it wait (ResNet-50 on 2 cores:
    57-62 images/s with one worker process, 65-74 decoding each batch on all cores before its forward pass)."""
    cores = os.cpu_count() or 1
    if device.type != "cuda" or n_items < 256 or cores < 2:
        return 0
    return min(4, cores - 1)
