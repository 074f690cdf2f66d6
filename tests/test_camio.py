import os

import numpy as np
import pytest

from misc import camio


def test_cam_roundtrip_and_schema(tmp_path):
    p = str(tmp_path / 'cam' / 'x.npz')
    keys = np.array([0, 3, 7])
    cam = np.random.rand(3, 5, 6).astype(np.float32)
    camio.save_cam(p, keys, cam, cam * 2)
    out = camio.load_cam(p)
    assert out['keys'].dtype == np.int64 and out['keys'].tolist() == [0, 3, 7]
    np.testing.assert_array_equal(out['cam'], cam)
    np.testing.assert_array_equal(out['proto_cam'], cam * 2)
    with np.load(p, allow_pickle=False) as z:
        assert sorted(z.files) == ['cam', 'keys', 'proto_cam']
    assert not [f for f in os.listdir(tmp_path / 'cam') if f.endswith('.tmp')]
    with pytest.raises(ValueError, match='keys'):
        camio.save_cam(p, np.array([3, 7]), cam[:2], cam[:2])


def test_truncated_cam_is_not_complete(tmp_path):
    p = str(tmp_path / 'x.npz')
    camio.save_cam(p, np.array([0, 1]), np.zeros((2, 4, 4), np.float32), np.zeros((2, 4, 4), np.float32))
    data = open(p, 'rb').read()
    open(p, 'wb').write(data[:len(data) // 2])
    assert not camio.is_complete_cam(p)
    with pytest.raises(ValueError, match='x.npz'):
        camio.load_cam(p)


def test_label_png_keeps_palette_indices(tmp_path):
    from misc.imutils import voc_palette
    lab = np.array([[0, 1, 255], [20, 5, 0]], np.uint8)
    p = str(tmp_path / 'l.png')
    camio.write_label(p, lab, voc_palette())
    np.testing.assert_array_equal(camio.read_label(p), lab)
    camio.write_label(p, lab)
    np.testing.assert_array_equal(camio.read_label(p), lab)


def test_keys_from_label():
    y = np.zeros(20, np.float32)
    y[[2, 14]] = 1
    assert camio.keys_from_label(y).tolist() == [0, 3, 15]
