"""The synthetic shapes as a dataset: items are the pure function of their index that ``make_sample`` is,
whether they were just made or read back from the in-memory sample cache."""
import numpy as np
import pytest

from mscsa_lab.data.shapes_dataset import HELD_OUT_OFFSET, SampleCache, SyntheticShapes
from mscsa_lab.data.synthetic import make_sample
from mscsa_lab.data import shapes_dataset


def test_items_equal_make_sample_when_made_and_when_read_back(monkeypatch):
    cache = SampleCache(budget_bytes=10 * 32 * 32 * 3)  # room for ten 32x32 samples
    monkeypatch.setattr(shapes_dataset, "SAMPLES", cache)
    held_out = SyntheticShapes(12, size=32, seed=3, offset=HELD_OUT_OFFSET)
    first = [(np.asarray(image).copy(), label) for image, label in held_out]
    assert len(cache) == 10  # the oldest two went out: the budget holds
    again = [(np.asarray(image), label) for image, label in held_out]  # 2..11 from the cache, 0 and 1 made again
    for index, ((pixels, label), (read, read_label)) in enumerate(zip(first, again)):
        expected = make_sample(HELD_OUT_OFFSET + index, 3, 32)
        assert np.array_equal(pixels, expected.image) and np.array_equal(read, expected.image)
        assert label == read_label == expected.label
    pixels, _ = cache.sample(HELD_OUT_OFFSET + 11, 3, 32, 0.12, 0.8)
    with pytest.raises(ValueError):  # a cached sample cannot be changed by whoever reads it
        pixels[0, 0, 0] = 1
    other_seed = SyntheticShapes(1, size=32, seed=4, offset=HELD_OUT_OFFSET)[0]
    assert not np.array_equal(np.asarray(other_seed[0]), first[0][0])  # the seed is part of the key
