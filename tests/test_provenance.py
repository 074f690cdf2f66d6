"""A re-run never hands back what other settings or inputs produced: every step that keeps artefacts records what
made them, a re-run with other settings stops before it changes anything and names what changed, and --redo
removes the step's outputs and everything made from them."""
import os

import pytest

import run_sample
from misc import camio, provenance
from misc.errors import InputError
from tests.test_e2e import base_args


def flags_of_run_sample():
    return {a.dest for a in run_sample.get_parser()._actions if a.option_strings and a.dest != 'help'}


def test_every_flag_is_either_recorded_or_listed_with_its_reason():
    recorded = {f for flags in provenance.STEP_FLAGS.values() for f in flags}
    passes = {f'{s}_pass' for s in run_sample.STEPS} | {f'{a}_pass' for a in run_sample.PASS_ALIASES}
    flags = flags_of_run_sample() - passes
    unknown = flags - recorded - set(provenance.NOT_RECORDED)
    assert not unknown, f'flags neither recorded nor listed as not changing any output: {sorted(unknown)}'
    assert not recorded & set(provenance.NOT_RECORDED), recorded & set(provenance.NOT_RECORDED)
    assert not (recorded | set(provenance.NOT_RECORDED)) - flags - {'dataset_root'}, 'a table names a flag that is gone'


def make_cam_args(tiny_voc, work, *extra):
    return base_args(tiny_voc, work, '--make_cam_pass', 'True', '--sfc_weights', os.path.join(work, 'given.pth'),
                     *extra)


@pytest.fixture
def checkpoint(tmp_path):
    import torch

    from net import resnet50_sfc
    torch.manual_seed(0)
    work = tmp_path / 'w'
    os.makedirs(work)
    net = resnet50_sfc.Net(21, backbone_width=8, backbone_weights='none')
    camio.save_checkpoint({'net': net.state_dict()}, str(work / 'given.pth'))
    return str(work)


def cams(work):
    return sorted(os.listdir(os.path.join(work, 'cam')))


def test_a_changed_flag_stops_the_step_and_names_it(tiny_voc, checkpoint):
    work = checkpoint
    run_sample.main(make_cam_args(tiny_voc, work, '--cam_scales', '1.0', '0.5'))
    before = {f: os.path.getmtime(os.path.join(work, 'cam', f)) for f in cams(work)}
    rec = provenance.load(work, 'make_cam')
    assert rec['flags']['cam_scales'] == [1.0, 0.5] and rec['inputs']['sfc_weights'].startswith('sha256 ')
    run_sample.main(make_cam_args(tiny_voc, work, '--cam_scales', '1.0', '0.5'))  # the same settings: reused
    with pytest.raises(provenance.StaleOutput) as e:
        run_sample.main(make_cam_args(tiny_voc, work, '--cam_scales', '1.0'))
    msg = str(e.value)
    assert msg.startswith('make_cam: ') and '--cam_scales 1.0 0.5 -> 1.0' in msg
    assert '--work_dir' in msg and '--redo make_cam' in msg
    assert isinstance(e.value, InputError)  # one line and exit status 2 on the command line
    assert {f: os.path.getmtime(os.path.join(work, 'cam', f)) for f in cams(work)} == before  # nothing touched


def test_a_changed_input_is_named_and_downstream_steps_see_it(tiny_voc, checkpoint):
    """Another checkpoint under the same path changes make_cam's input; the IR labels made from the old CAMs are
    stale once the CAMs are remade: cam_to_ir_label names its changed input."""
    import torch

    from net import resnet50_sfc
    work = checkpoint
    run_sample.main(make_cam_args(tiny_voc, work, '--cam_scales', '1.0', '--cam_to_ir_label_pass', 'True'))
    torch.manual_seed(1)
    camio.save_checkpoint({'net': resnet50_sfc.Net(21, backbone_width=8).state_dict()},
                          os.path.join(work, 'given.pth'))
    with pytest.raises(provenance.StaleOutput, match=r'make_cam: .*input --sfc_weights changed \(sha256 '):
        run_sample.main(make_cam_args(tiny_voc, work, '--cam_scales', '1.0'))
    # redo make_cam alone: the IR labels made from the old CAMs go too (found through their record)
    run_sample.main(make_cam_args(tiny_voc, work, '--cam_scales', '1.0', '--redo', 'make_cam'))
    assert provenance.load(work, 'cam_to_ir_label') is None and not os.listdir(os.path.join(work, 'ir_label'))
    assert len(cams(work)) == 6 and provenance.load(work, 'make_cam')['inputs']['sfc_weights'].startswith('sha256')


def test_redo_removes_the_step_and_what_was_made_from_it_then_runs(tiny_voc, checkpoint):
    work = checkpoint
    run_sample.main(make_cam_args(tiny_voc, work, '--cam_scales', '1.0', '--cam_to_ir_label_pass', 'True'))
    ir_rec = provenance.load(work, 'cam_to_ir_label')
    assert ir_rec['inputs']['cam_dir'] == f'make_cam record {provenance.load(work, "make_cam")["digest"]}'
    with pytest.raises(provenance.StaleOutput, match='--cam_scales 1.0 -> 1.0 0.5'):
        run_sample.main(make_cam_args(tiny_voc, work, '--cam_scales', '1.0', '0.5', '--cam_to_ir_label_pass', 'True'))
    run_sample.main(make_cam_args(tiny_voc, work, '--cam_scales', '1.0', '0.5', '--cam_to_ir_label_pass', 'True',
                                  '--redo', 'make_cam'))
    assert provenance.load(work, 'make_cam')['flags']['cam_scales'] == [1.0, 0.5]
    new_ir = provenance.load(work, 'cam_to_ir_label')
    assert new_ir['inputs']['cam_dir'] != ir_rec['inputs']['cam_dir'] and len(os.listdir(os.path.join(work, 'ir_label'))) == 6


def test_outputs_without_a_record_are_unknown(tiny_voc, checkpoint):
    work = checkpoint
    run_sample.main(make_cam_args(tiny_voc, work, '--cam_scales', '1.0'))
    os.remove(provenance.record_path(work, 'make_cam'))  # as a work dir from before records were kept
    with pytest.raises(provenance.StaleOutput, match='have no record of what made them.*--redo make_cam'):
        run_sample.main(make_cam_args(tiny_voc, work, '--cam_scales', '1.0'))


def test_a_training_resume_with_another_learning_rate_stops(tiny_voc, tmp_path):
    work = str(tmp_path / 'w')
    train = ['--train_sfc_pass', 'True', '--sfc_batch_size', '4', '--sfc_num_epoches', '1', '--sfc_crop_size', '64',
             '--sfc_select_on_gt', 'False', '--sfc_bank_samples', '2']
    run_sample.main(base_args(tiny_voc, work, *train))
    with pytest.raises(provenance.StaleOutput, match=r'train_sfc: .*--sfc_lr 0.01 -> 0.05'):
        run_sample.main(base_args(tiny_voc, work, *train, '--sfc_lr', '0.05'))
    assert os.path.isfile(os.path.join(work, 'ckpt', camio.SFC_RESUME))  # the old run's resume file is untouched


def test_redo_of_a_step_that_keeps_no_outputs_is_refused(tiny_voc, tmp_path):
    with pytest.raises(InputError, match='--redo eval_cam: only steps that keep outputs'):
        run_sample.main(base_args(tiny_voc, str(tmp_path / 'w'), '--eval_cam_pass', 'True', '--redo', 'eval_cam'))


def test_the_voc_test_export_runs_after_the_val_predictions_in_the_same_work_dir(tiny_voc, tmp_path):
    """run_voc.sh with VOC12_TEST_ROOT: make_seg on val, then make_seg on the test devkit with the export, in one work
    directory (each prediction depends on its image and the model only, so the second run is no other setting)."""
    import shutil

    from tests.test_deeplab import seg_args, write_masks
    work = str(tmp_path / 'w')
    names = open(os.path.join(tiny_voc['meta'], 'train_aug.txt')).read().split()
    write_masks(tiny_voc, work, names)
    run_sample.main(seg_args(tiny_voc, work, '--train_seg_pass', 'True', '--make_seg_pass', 'True'))
    test_root = tmp_path / 'VOC2012_test'
    (test_root / 'ImageSets' / 'Segmentation').mkdir(parents=True)
    shutil.copytree(os.path.join(tiny_voc['root'], 'JPEGImages'), test_root / 'JPEGImages')
    val = open(os.path.join(tiny_voc['meta'], 'val.txt')).read().split()
    (test_root / 'ImageSets' / 'Segmentation' / 'test.txt').write_text('\n'.join(val[:2]) + '\n')
    run_sample.main(seg_args(tiny_voc, work, '--make_seg_pass', 'True', '--seg_infer_root', str(test_root),
                             '--seg_infer_list', str(test_root / 'ImageSets' / 'Segmentation' / 'test.txt'),
                             '--seg_export_voc_test', 'True'))
    assert os.path.isfile(os.path.join(work, camio.VOC_TEST_EXPORT, 'results.tar.gz'))
