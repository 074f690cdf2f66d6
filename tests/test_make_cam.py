import numpy as np
import pytest
import torch

from misc import camio
from step.make_cam import postprocess


@pytest.mark.parametrize('name', ['make_cam_post_net', 'make_cam_post_synth'])
def test_postprocess_matches_authors(fixture, name):
    z = fixture(name)
    keys = camio.keys_from_label(z['label21'][1:])
    np.testing.assert_array_equal(keys, z['keys'])
    n = len(z['scales'])
    for src, out in (('proto_cam', 'IS_CAM'), ('pcm_cam', 'IS_CAM1')):
        maps = [torch.from_numpy(z[f'{src}_s{i}']) for i in range(n)]
        got = postprocess(maps, z['img_size'], keys).numpy()
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, z[out], rtol=0, atol=1e-5)


def test_bg_offset_and_fg_doubling_by_hand():
    m = torch.tensor([[[1.0, 3.0]], [[2.0, 0.0]], [[5.0, 5.0]]])  # (C=3, 1, 2), one scale, same size
    out = postprocess([m], (1, 2), np.array([0, 1])).numpy()
    np.testing.assert_allclose(out[0, 0], np.array([1, 3]) / (3 + 1e-5) + 0.4, rtol=1e-6)
    np.testing.assert_allclose(out[1, 0], 2 * np.array([2, 0]) / (2 + 1e-5), rtol=1e-6)


def test_scales_are_summed_before_normalisation():
    a = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])
    b = torch.tensor([[[3.0, 1.0]], [[1.0, 1.0]]])
    out = postprocess([a, b], (1, 2), np.array([0, 1]), bg_offset=0.0, fg_scale=1.0).numpy()
    np.testing.assert_allclose(out[0, 0], np.array([4, 1]) / (4 + 1e-5), rtol=1e-6)
    np.testing.assert_allclose(out[1, 0], np.array([1, 2]) / (2 + 1e-5), rtol=1e-6)
