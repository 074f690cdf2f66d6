"""The data checker finds planted faults, one actionable line each, and run_sample stops before any step."""
import os
import shutil

import numpy as np
import pytest

import run_sample
from misc import camio
from misc.check_data import check, main as check_main
from misc.errors import BadInput
from voc12 import dataloader as voc


@pytest.fixture
def faulty(tiny_voc, tmp_path):
    root = str(tmp_path / 'VOC')
    shutil.copytree(tiny_voc['root'], root)
    meta = tiny_voc['meta']
    train = voc.load_img_name_list(os.path.join(meta, 'train.txt'))
    jpg = os.path.join(root, 'JPEGImages', train[0] + '.jpg')
    data = open(jpg, 'rb').read()
    open(jpg, 'wb').write(data[:len(data) // 3])                                   # truncated JPEG
    os.remove(os.path.join(root, 'JPEGImages', train[1] + '.jpg'))                 # listed id without image
    gt2 = os.path.join(root, 'SegmentationClass', train[2] + '.png')
    camio.write_label(gt2, np.zeros((7, 9), np.uint8))                             # mask of the wrong size
    gt3 = os.path.join(root, 'SegmentationClass', train[3] + '.png')
    lab = camio.read_label(gt3).copy()
    lab[0, 0] = 42
    camio.write_label(gt3, lab)                                                   # class id out of range
    with np.load(os.path.join(meta, 'cls_labels.npz')) as z:
        keep = z['names'] != train[4]
        np.savez(str(tmp_path / 'labels.npz'), names=z['names'][keep], labels=z['labels'][keep])  # no label
    (tmp_path / 'empty.txt').write_text('\n')
    return {'root': root, 'train': train, 'list': os.path.join(meta, 'train.txt'),
            'labels': str(tmp_path / 'labels.npz'), 'empty': str(tmp_path / 'empty.txt')}


def test_every_planted_fault_is_reported(faulty):
    problems, summary = check(voc, faulty['root'], [faulty['list'], faulty['empty']], [faulty['list']],
                              faulty['labels'], decode=True)
    t = faulty['train']
    text = '\n'.join(problems)
    assert f'{t[0]}: image' in text and 'cannot be decoded' in text
    assert f'{t[1]}: image' in text and 'is missing' in text
    assert f'{t[2]}: GT mask is 7x9' in text
    assert f'{t[3]}: GT mask has values [42]' in text
    assert f'{t[4]}: no image-level label' in text
    assert 'empty.txt is empty' in text
    assert len(problems) == 6


def test_command_exit_status(faulty, tiny_voc, capsys):
    assert check_main(['--root', faulty['root'], '--lists', faulty['list'], '--cls_labels', faulty['labels']]) == 1
    assert 'PROBLEM' in capsys.readouterr().out
    meta = tiny_voc['meta']
    assert check_main(['--root', tiny_voc['root'], '--lists', os.path.join(meta, 'train_aug.txt'),
                       '--gt_lists', os.path.join(meta, 'val.txt'), '--cls_labels',
                       os.path.join(meta, 'cls_labels.npz')]) == 0


def test_run_sample_stops_before_the_steps(faulty, tmp_path, capsys):
    work = str(tmp_path / 'w')
    with pytest.raises(BadInput, match='data check failed'):
        run_sample.main(['--voc12_root', faulty['root'], '--work_dir', work, '--device', 'cpu', '--run_log', 'False',
                         '--backbone_weights', 'none', '--train_list', faulty['list'], '--eval_list', faulty['list'],
                         '--cls_labels', faulty['labels'], '--train_sfc_pass', 'True'])
    out = capsys.readouterr().out
    assert 'is missing' in out and 'GT mask is 7x9' in out
    assert not os.listdir(os.path.join(work, 'ckpt'))  # nothing ran
