import os

import numpy as np
import pytest

from misc import camio
from voc12 import dataloader as voc
from voc12.make_cls_labels import build, labels_from_png, labels_from_xml


def test_list_parsing_both_formats(tmp_path):
    p = tmp_path / 'a.txt'
    p.write_text('2007_000032\n\n/JPEGImages/2007_000039.jpg /SegmentationClassAug/2007_000039.png\n'
                 'COCO_train2014_000000000009\n')
    assert voc.load_img_name_list(str(p)) == ['2007_000032', '2007_000039', 'COCO_train2014_000000000009']
    e = tmp_path / 'empty.txt'
    e.write_text('\n')
    with pytest.raises(ValueError, match='empty'):
        voc.load_img_name_list(str(e))
    with pytest.raises(FileNotFoundError, match='nope.txt'):
        voc.load_img_name_list(str(tmp_path / 'nope.txt'))


def test_ids_stay_strings(tmp_path):
    p = tmp_path / 'a.txt'
    p.write_text('000123\n')
    assert voc.load_img_name_list(str(p)) == ['000123']


def test_lists_and_labels_built_from_dataset(tiny_voc):
    meta, root = tiny_voc['meta'], tiny_voc['root']
    train = voc.load_img_name_list(os.path.join(meta, 'train.txt'))
    val = voc.load_img_name_list(os.path.join(meta, 'val.txt'))
    aug = voc.load_img_name_list(os.path.join(meta, 'train_aug.txt'))
    assert len(train) == 12 and len(val) == 6 and len(aug) == 22
    assert set(train) <= set(aug) and not set(val) & set(aug)
    assert voc.load_img_name_list(os.path.join(meta, 'train_aug_val.txt')) == sorted(aug + val)
    assert voc.load_img_name_list(os.path.join(meta, 'trainval.txt')) == sorted(train + val)
    labels = voc.load_cls_labels(os.path.join(meta, 'cls_labels.npz'))
    assert set(labels) == set(train) | set(val) | set(aug)
    for name in train[:5]:
        gt = camio.read_label(os.path.join(root, 'SegmentationClass', name + '.png'))
        ids = sorted(set(np.unique(gt)) - {0, 255})
        assert (np.nonzero(labels[name])[0] + 1).tolist() == ids


def test_xml_labels_ignore_part_names_and_png_fallback(tmp_path):
    x = tmp_path / 'a.xml'
    x.write_text('<annotation><object><name>person</name><part><name>head</name></part></object>'
                 '<object><name>dog</name></object></annotation>')
    y = labels_from_xml(str(x))
    assert np.nonzero(y)[0].tolist() == [voc.CAT_LIST.index('dog'), voc.CAT_LIST.index('person')]
    png = tmp_path / 'b.png'
    lab = np.zeros((4, 4), np.uint8)
    lab[0, 0], lab[1, 1], lab[2, 2] = 3, 255, 20
    camio.write_label(str(png), lab)
    assert np.nonzero(labels_from_png(str(png)))[0].tolist() == [2, 19]


def test_no_train_aug_without_aug_folder(tiny_voc, tmp_path):
    import shutil
    root = tmp_path / 'VOC'
    shutil.copytree(tiny_voc['root'], root, ignore=shutil.ignore_patterns('SegmentationClassAug'))
    os.remove(root / 'Annotations' / (voc.load_img_name_list(str(root / 'ImageSets/Segmentation/train.txt'))[0] + '.xml'))
    lists, labels, _ = build(str(root), str(tmp_path / 'meta'))
    assert set(lists) == {'train', 'val'}  # labels of the XML-less image came from its PNG
    assert not os.path.exists(tmp_path / 'meta' / 'train_aug_val.txt')
    assert labels.sum(1).min() >= 1


def test_classification_dataset_crop_and_compact_mask(tiny_voc):
    meta = tiny_voc['meta']
    ds = voc.ClassificationDataset(os.path.join(meta, 'train.txt'), tiny_voc['root'],
                                   os.path.join(meta, 'cls_labels.npz'), crop_size=64, seed=1)
    s = ds[0]
    assert s['img'].shape == (3, 64, 64) and s['img'].dtype == np.float32
    assert s['valid_mask'].shape == (64, 64) and s['valid_mask'].dtype == np.uint8
    # outside the valid area the container is 0 (the mean colour after normalisation)
    assert np.all(s['img'][:, s['valid_mask'] == 0] == 0)
    assert s['label'].shape == (20,)
    again = ds[0]
    np.testing.assert_array_equal(s['img'], again['img'])  # deterministic per (seed, epoch, index)
    ds.set_epoch(1)
    assert not np.array_equal(ds[0]['valid_mask'], s['valid_mask']) or not np.array_equal(ds[0]['img'], s['img'])


def test_msf_dataset_scales_and_flip(tiny_voc):
    meta = tiny_voc['meta']
    ds = voc.ClassificationDatasetMSF(os.path.join(meta, 'val.txt'), tiny_voc['root'],
                                      os.path.join(meta, 'cls_labels.npz'), scales=(1.0, 0.5))
    s = ds[0]
    h, w = s['size']
    assert s['img'][0].shape == (2, 3, h, w)
    assert s['img'][1].shape == (2, 3, int(np.round(h * 0.5)), int(np.round(w * 0.5)))
    np.testing.assert_array_equal(s['img'][0][1], s['img'][0][0][:, :, ::-1])


def test_missing_label_and_bad_root_errors(tiny_voc, tmp_path):
    meta = tiny_voc['meta']
    with np.load(os.path.join(meta, 'cls_labels.npz')) as z:
        names, labels = z['names'], z['labels']
    np.savez(tmp_path / 'partial.npz', names=names[1:], labels=labels[1:])
    lst = tmp_path / 'one.txt'
    lst.write_text(str(names[0]) + '\n')
    with pytest.raises(KeyError, match=str(names[0])):
        voc.ClassificationDataset(str(lst), tiny_voc['root'], str(tmp_path / 'partial.npz'))
    p = tmp_path / 'l.txt'
    p.write_text('2099_999999\n')
    with pytest.raises(FileNotFoundError, match='--voc12_root'):
        voc.ImageDataset(str(p), str(tmp_path / 'nowhere'))
    with pytest.raises(FileNotFoundError, match='2099_999999.jpg'):
        voc.ImageDataset(str(p), tiny_voc['root'])


def test_unreadable_image_names_the_file(tmp_path):
    bad = tmp_path / 'x.jpg'
    bad.write_bytes(b'\xff\xd8\xff\xe0 not really a jpeg')
    with pytest.raises(ValueError, match='x.jpg'):
        voc.read_image(str(bad))


def test_synthetic_data_is_deterministic_and_not_multiple_of_16(tmp_path):
    from voc12.synthetic import make_synthetic_voc
    a = make_synthetic_voc(str(tmp_path / 'a'), 3, 2, 1, seed=5, min_size=40, max_size=80)
    make_synthetic_voc(str(tmp_path / 'b'), 3, 2, 1, seed=5, min_size=40, max_size=80)
    for n in a['train']:
        fa = (tmp_path / 'a' / 'SegmentationClass' / (n + '.png')).read_bytes()
        fb = (tmp_path / 'b' / 'SegmentationClass' / (n + '.png')).read_bytes()
        assert fa == fb
        img = voc.read_image(str(tmp_path / 'a' / 'JPEGImages' / (n + '.jpg')))
        assert img.shape[0] % 16 and img.shape[1] % 16
        gt = camio.read_label(str(tmp_path / 'a' / 'SegmentationClass' / (n + '.png')))
        assert 255 in gt and gt.shape == img.shape[:2]
