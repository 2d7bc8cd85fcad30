"""Images for embedding and fine-tuning: seeded random transforms, decoding failures as one line."""

import numpy as np
import pytest
import torch

from conftest import write_image_folder
from tlcache.backbones import create_backbone
from tlcache.errors import UserError
from tlcache.images import ImageFiles, decoded_batches, image_batches, item_seed, training_transform


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
