import numpy as np

from misc import imutils


class FakeRng:
    """Returns queued values for integers(lo, hi), recording the calls."""

    def __init__(self, values):
        self.values, self.calls = list(values), []

    def integers(self, lo, hi):
        self.calls.append((lo, hi))
        return self.values.pop(0)


def test_crop_box_larger_image_width_drawn_first():
    rng = FakeRng([7, 3])
    box = imutils.random_crop_box(rng, h=40, w=50, crop=32)
    assert rng.calls == [(0, 19), (0, 9)]  # w_space + 1 = 19 first, then h_space + 1 = 9
    assert box == (0, 32, 0, 32, 3, 35, 7, 39)


def test_crop_box_smaller_image_is_placed_in_container():
    rng = FakeRng([5, 2])
    box = imutils.random_crop_box(rng, h=20, w=25, crop=32)
    assert rng.calls == [(0, 8), (0, 13)]
    assert box == (2, 22, 5, 30, 0, 20, 0, 25)
    mask = imutils.crop_valid_mask(box, 32)
    assert mask.sum() == 20 * 25 and mask[2, 5] == 1 and mask[1, 5] == 0 and mask[21, 29] == 1 and mask[22, 29] == 0


def test_normalize_is_float64_then_float32():
    img = np.array([[[0, 128, 255]]], np.uint8)
    out = imutils.normalize(img)
    exp = np.array([(0 / 255 - 0.485) / 0.229, (128 / 255 - 0.456) / 0.224, (255 / 255 - 0.406) / 0.225])
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out[0, 0], exp.astype(np.float32))


def test_scaled_size_rounds_half_to_even():
    assert imutils.scaled_size(5, 7, 0.5) == (2, 4)  # 2.5 -> 2, 3.5 -> 4


def test_voc_palette_first_colours():
    p = imutils.voc_palette()
    assert p[0].tolist() == [0, 0, 0] and p[1].tolist() == [128, 0, 0] and p[15].tolist() == [192, 128, 128]
