import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
FIXTURES = os.path.join(os.path.dirname(ROOT), 'shared', 'fixtures')


@pytest.fixture
def fixture():
    """fixture('pcm') -> dict of arrays from ../shared/fixtures/pcm.npz; skips when shared/ is absent."""
    def load(name):
        path = os.path.join(FIXTURES, name + '.npz')
        if not os.path.isfile(path):
            pytest.skip(f'golden fixture {path} not available')
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    return load


@pytest.fixture(scope='session')
def tiny_voc(tmp_path_factory):
    """A small synthetic VOC root plus its lists/labels (built by our own commands)."""
    from voc12.make_cls_labels import build
    from voc12.synthetic import make_synthetic_voc
    base = tmp_path_factory.mktemp('tiny_voc')
    root = str(base / 'VOC2012')
    make_synthetic_voc(root, n_train=12, n_val=6, n_aug=10, seed=3, min_size=50, max_size=90)
    meta = str(base / 'meta')
    build(root, meta)
    return {'root': root, 'meta': meta, 'base': str(base)}
