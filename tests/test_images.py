"""Images for embedding and fine-tuning: decoding (16-bit, float and turned pictures), seeded random transforms,
decoding failures as one line."""

import warnings

import numpy as np
import pytest
import torch

from conftest import write_image_folder
from tlcache.backbones import create_backbone
from tlcache.embed import embed_source
from tlcache.errors import UserError
from tlcache.images import ImageFiles, as_rgb, decoded_batches, image_batches, item_seed, training_transform
from tlcache.store import FeatureStore


@pytest.fixture
def backbone(resnet18_weights):
    return create_backbone("torchvision:resnet18", weights=str(resnet18_weights), image_size=32)


def test_a_seeded_transform_gives_each_item_the_same_pixels_in_any_order_and_thread(tmp_path, backbone):
    paths = sorted(write_image_folder(tmp_path / "imgs", per_class=4).rglob("*.png"))
    augment = training_transform(backbone, ["crop", "flip", "color", "erase"])
    seeds = [item_seed(0, 1, index) for index in range(len(paths))]
    dataset = ImageFiles(paths, augment, seeds)
    forward = torch.cat([pixels for pixels, _ in image_batches(dataset, range(len(paths)), 3, 0, False)])
    order = np.random.default_rng(0).permutation(len(paths))
    shuffled = torch.cat([pixels for pixels, _ in image_batches(dataset, order, 5, 0, False)])
    torch.testing.assert_close(shuffled, forward[order], rtol=0, atol=0)
    other = ImageFiles(paths, augment, [item_seed(0, 2, index) for index in range(len(paths))])
    assert not torch.equal(other[0][0], forward[0])  # another epoch's seed, another augmentation


def test_views_are_made_with_their_own_seeds(tmp_path, backbone):
    paths = sorted(write_image_folder(tmp_path / "imgs", per_class=2).rglob("*.png"))

    def views(seeds):
        dataset = ImageFiles(paths, backbone.transform(), view_transform=backbone.view_transform(), view_seeds=seeds)
        pixels, views, error = dataset[1]
        assert error is None and views.shape == (len(seeds[1]), *pixels.shape)
        return views

    two = views([[1, 2]] * 4)
    assert not torch.equal(two[0], two[1])
    torch.testing.assert_close(views([[1]] * 4)[0], two[0], rtol=0, atol=0)  # seed 1 makes the same view again


def test_a_file_that_cannot_be_decoded_stops_the_batches_with_its_name(tmp_path, backbone):
    paths = sorted(write_image_folder(tmp_path / "imgs", per_class=3).rglob("*.png"))
    paths[4].write_bytes(paths[4].read_bytes()[:-60])
    dataset = ImageFiles(paths, backbone.transform())
    assert dataset[4][2].startswith("could not be decoded") and dataset[4][0] is None
    with pytest.raises(UserError, match=paths[4].name):
        list(image_batches(dataset, range(len(paths)), 2, 0, False))


@pytest.mark.parametrize("workers", [0, 2])
def test_decoded_batches_go_on_past_bad_files_and_say_which(tmp_path, backbone, workers):
    paths = sorted(write_image_folder(tmp_path / "imgs", per_class=3).rglob("*.png"))
    for bad in (1, 4, 5):
        paths[bad].write_bytes(paths[bad].read_bytes()[:-60])
    batches = list(decoded_batches(ImageFiles(paths, backbone.transform()), 2, workers, False))
    assert [[position for position, _ in errors] for _, _, errors in batches] == [[1], [], [0, 1]]
    assert [0 if pixels is None else len(pixels) for pixels, _, _ in batches] == [1, 2, 0]
    clean = ImageFiles([paths[0]], backbone.transform())[0][0]
    torch.testing.assert_close(batches[0][0][0], clean)  # the good item of a batch with a bad one is intact


def _greys(seed: int) -> np.ndarray:
    """An 8-bit greyscale picture with structure (a gradient and noise), 24 x 40."""
    rng = np.random.default_rng(seed)
    return (np.linspace(0, 255, 40)[None, :] * 0.6 + rng.integers(0, 100, (24, 40))).astype(np.uint8)


def test_16_bit_and_float_images_are_scaled_to_8_bits_not_clipped():
    from PIL import Image

    eight = _greys(0)
    expected = np.asarray(as_rgb(Image.fromarray(eight)))
    sixteen = Image.fromarray(eight.astype(np.uint16) * 257)  # 0-255 -> 0-65535, mode I;16
    assert sixteen.mode == "I;16" and np.asarray(sixteen.convert("RGB")).mean() > 250  # Pillow's own: nearly white
    np.testing.assert_array_equal(np.asarray(as_rgb(sixteen)), expected)
    np.testing.assert_array_equal(np.asarray(as_rgb(sixteen.convert("I"))), expected)
    floats = Image.fromarray(eight.astype(np.float32) / 255.0)
    assert floats.mode == "F"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # values in range: no warning
        np.testing.assert_array_equal(np.asarray(as_rgb(floats)), expected)
        as_rgb(sixteen)


def test_transparent_pixels_are_decoded_as_shown_over_white():
    """Pillow's conversion keeps the colour a transparent pixel stores (black here): a new user's icons scored
    0.39-0.42 so, 0.61-0.71 composited over white. RGBA, greyscale with alpha, and a palette with a transparent
    entry are decoded over white; half-transparent pixels blend; an opaque image is unchanged."""
    from PIL import Image

    pixels = np.zeros((4, 4, 4), dtype=np.uint8)
    pixels[:2, :, :3] = (200, 40, 10)  # the top half an opaque red, the bottom half transparent black
    pixels[:2, :, 3] = 255
    pixels[3, 3] = (0, 0, 200, 128)  # half-transparent blue
    decoded = np.asarray(as_rgb(Image.fromarray(pixels, "RGBA")))
    assert np.asarray(Image.fromarray(pixels, "RGBA").convert("RGB"))[2, 0].tolist() == [0, 0, 0]  # Pillow's
    assert decoded[0, 0].tolist() == [200, 40, 10] and decoded[2, 0].tolist() == [255, 255, 255]
    assert decoded[3, 3].tolist() == [127, 127, 227]  # 128/255 of the blue over white
    grey = Image.fromarray(np.stack([np.full((2, 2), 30, np.uint8), np.array([[255, 0], [0, 255]], np.uint8)], -1))
    assert grey.mode == "LA" and np.asarray(as_rgb(grey))[:, :, 0].tolist() == [[30, 255], [255, 30]]
    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 0, 0, 9, 99, 199] + [0] * 762)
    palette.putdata([0, 1])
    palette.info["transparency"] = 0  # entry 0 transparent
    assert np.asarray(as_rgb(palette)).tolist() == [[[255, 255, 255], [9, 99, 199]]]
    opaque = Image.fromarray(pixels[:, :, :3])
    np.testing.assert_array_equal(np.asarray(as_rgb(opaque)), pixels[:, :, :3])


def test_values_outside_the_range_an_image_is_read_from_or_8_bit_data_in_a_wide_type_are_warned_of():
    from PIL import Image

    eight = _greys(2)
    for outside in (Image.fromarray(eight.astype(np.float32)), Image.fromarray(eight.astype(np.int32) * 1000)):
        with pytest.warns(UserWarning, match="outside the range they are read from"):
            assert np.asarray(as_rgb(outside)).max() == 255
    with pytest.warns(UserWarning, match="hold values up to 255 only"):
        assert np.asarray(as_rgb(Image.fromarray(eight.astype(np.int32)))).max() <= 1


def test_an_image_is_turned_upright_by_its_exif_orientation(tmp_path):
    from PIL import Image

    upright = Image.fromarray(_greys(1)).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # "turn 90 degrees clockwise to show": a phone held sideways stores the picture turned
    upright.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "sideways.png", exif=exif)
    with Image.open(tmp_path / "sideways.png") as image:
        assert image.size == (24, 40)
        np.testing.assert_array_equal(np.asarray(as_rgb(image)), np.asarray(upright))


def test_a_folder_of_16_bit_pngs_embeds_as_the_same_pictures_in_8_bits(tmp_path, backbone):
    from PIL import Image

    for bits, folder in ((8, tmp_path / "eight"), (16, tmp_path / "sixteen")):
        for index in range(4):
            (folder / f"class{index % 2}").mkdir(parents=True, exist_ok=True)
            pixels = _greys(index)
            image = Image.fromarray(pixels if bits == 8 else pixels.astype(np.uint16) * 257)
            image.save(folder / f"class{index % 2}" / f"{index}.png")
    stores = [
        embed_source(folder, backbone, out=tmp_path / "cache", progress=False, precision="fp32")
        for folder in (tmp_path / "eight", tmp_path / "sixteen")
    ]
    assert stores[0].key != stores[1].key  # other files, another store
    np.testing.assert_array_equal(FeatureStore(stores[0].path).features(), FeatureStore(stores[1].path).features())
