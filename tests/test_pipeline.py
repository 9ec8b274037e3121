"""The input pipeline both trainers share: augmentation, batch order, --gpus parsing."""

import numpy as np
import pytest

from mbemlib import pipeline


def test_augment_pads_crops_and_mirrors():
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (500, 3, 8, 8), dtype=np.uint8)
    out = pipeline.augment(images, rng, pad=2)
    assert out.shape == images.shape and out.dtype == np.uint8
    assert (out == 127).any()  # fill value from the padding shows up
    mirrored = [np.array_equal(o, i[:, :, ::-1]) for o, i in zip(out, images, strict=True)]
    plain = [np.array_equal(o, i) for o, i in zip(out, images, strict=True)]
    # centred crops (1/25 of offsets) come back as the image or its mirror, in about equal numbers
    assert 0 < sum(plain) < 60 and 0 < sum(mirrored) < 60
    assert np.array_equal(pipeline.augment(images, np.random.default_rng(5), 2),
                          pipeline.augment(images, np.random.default_rng(5), 2))


def test_shuffle_off_keeps_one_batch_order():
    images = np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1)
    fixed = [x.ravel().tolist() for x, _ in pipeline.batches(images, 4, np.random.default_rng(0),
                                                               drop_last=True)]
    assert fixed == [[0, 1, 2, 3], [4, 5, 6, 7]]
    rng = np.random.default_rng(0)
    first = [x.ravel().tolist() for x, _ in pipeline.batches(images, 4, rng, shuffle=True)]
    second = [x.ravel().tolist() for x, _ in pipeline.batches(images, 4, rng, shuffle=True)]
    assert first != second and sorted(sum(first, [])) == list(range(10))


def test_batches_keep_the_last_short_batch_unless_told():
    images = np.zeros((10, 1, 2, 2), dtype=np.uint8)
    assert [len(x) for x, _ in pipeline.batches(images, 4)] == [4, 4, 2]
    assert [len(x) for x, _ in pipeline.batches(images, 4, drop_last=True)] == [4, 4]


def test_gpu_ids():
    assert pipeline.gpu_ids(None) == [] and pipeline.gpu_ids(" ") == []
    assert pipeline.gpu_ids("0") == [0] and pipeline.gpu_ids("1,0") == [1, 0]
    for bad in ("a", "0,0", "-1", "0;1", "0,"):
        with pytest.raises(ValueError, match="--gpus"):
            pipeline.gpu_ids(bad)
