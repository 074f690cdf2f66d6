"""The shell recipes run as written (on tiny generated data, shrunk by overriding flags)."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_run_voc_sh_runs_all_seven_steps(tiny_voc, tmp_path):
    work = str(tmp_path / 'voc')
    os.makedirs(work)
    env = dict(os.environ, VOC12_ROOT=tiny_voc['root'], WORK_DIR=work, DEVICE='cpu', NUM_WORKERS='0',
               BACKBONE_WEIGHTS='none', PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ['PATH'])
    small = ['--backbone_width', '8', '--sfc_crop_size', '64', '--sfc_batch_size', '4', '--sfc_num_epoches', '1',
             '--sfc_dc_offset', 'auto', '--sfc_select_on_gt', 'False', '--sfc_bank_samples', '2',
             '--cam_scales', '1.0', '--irn_crop_size', '96', '--irn_batch_size', '4', '--irn_num_epoches', '1',
             '--irn_crop_size_infer', '96', '--exp_times', '3']
    out = subprocess.run(['bash', os.path.join(ROOT, 'run_voc.sh'), *small], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert os.path.isfile(os.path.join(work, 'meta', 'train_aug.txt'))
    for f in ('eval_cam.json', 'eval_sem_seg.json'):
        assert 0 <= json.load(open(os.path.join(work, 'metrics', f)))['miou'] <= 1
    assert 'pseudo-mask mIoU' in out.stdout
    vis = os.path.join(work, 'vis', 'train')
    assert 'contact_sheet.png' in os.listdir(vis) and os.listdir(os.path.join(vis, 'sem_seg'))
