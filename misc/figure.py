"""The pipeline figure of the README: the ten steps and what flows between them, above one val image of a finished
run as it goes through the stages (image | GT | CAM seeds | IR label | pseudo mask | DeepLab), each panel with its
mIoU on the whole val set.

    python -m misc.figure --work_dir work/demo --out docs/pipeline.png          # after bash run_demo.sh

The image is --name, or the first val image whose pseudo mask gains most over its CAM seeds (a typical image shows
the stages less clearly than one where refinement matters; the whole-set numbers are printed on the panels).
"""
import argparse
import os

import numpy as np

from misc import camio, stages
from misc.dataset import get_dataset
from misc.errors import MissingInput
from misc.imutils import voc_palette
from misc.visualize import image_panels, load_run, render

STEPS = [('train_sfc', 'SFC classifier\n(IBR, L_PDW, L_WDW)'), ('make_cam', 'CAMs\n4 scales x flip'),
         ('eval_cam', 'seed mIoU'), ('cam_to_ir_label', 'IR labels\n2 dense CRFs'),
         ('train_irn', 'IRN\nboundaries'), ('make_sem_seg', 'pseudo masks\nrandom walk'),
         ('eval_sem_seg', 'mask mIoU'), ('train_seg', 'DeepLab-v2\non the masks'), ('make_seg', 'predictions\n+ CRF'),
         ('eval_seg', 'val mIoU')]


def diagram(ax):
    """Ten boxes in pipeline order, the evaluation steps in grey beside the chain."""
    main = [s for s in STEPS if not s[0].startswith('eval')]
    evals = {'make_cam': 'eval_cam', 'make_sem_seg': 'eval_sem_seg', 'make_seg': 'eval_seg'}
    labels = dict(STEPS)
    n = len(main)
    for i, (step, text) in enumerate(main):
        x = i / (n - 1)
        num = [s for s, _ in STEPS].index(step) + 1
        ax.text(x, 0.62, f'{num}. {step}\n{text}', ha='center',
                va='center', fontsize=7, bbox=dict(boxstyle='round,pad=0.35', fc='#dbe9f6', ec='#3b6ea5'))
        if i < n - 1:
            ax.annotate('', xy=((i + 1) / (n - 1) - 0.055, 0.62), xytext=(x + 0.055, 0.62),
                        arrowprops=dict(arrowstyle='->', color='#3b6ea5'))
        if step in evals:
            e = evals[step]
            num = [s for s, _ in STEPS].index(e) + 1
            ax.text(x, 0.12, f'{num}. {e}\n{labels[e]}', ha='center', va='center', fontsize=7,
                    bbox=dict(boxstyle='round,pad=0.3', fc='#eeeeee', ec='#888888'))
            ax.annotate('', xy=(x, 0.27), xytext=(x, 0.45), arrowprops=dict(arrowstyle='->', color='#888888'))
    ax.set_xlim(-0.08, 1.08)
    ax.set_ylim(-0.05, 0.9)
    ax.axis('off')


def pick_image(work_dir, names, root, ds_mod, fuse_weight):
    """The val image whose pseudo mask gains most pixels of agreement with the GT over its CAM seeds."""
    layout = ds_mod.ImageDataset.layout
    best, gain = names[0], -1.0
    for n in names:
        cam_file = camio.cam_path(os.path.join(work_dir, 'cam'), n)
        sem_file = camio.label_path(os.path.join(work_dir, 'sem_seg'), n)
        if not (os.path.isfile(cam_file) and os.path.isfile(sem_file)):
            continue
        cams = camio.load_cam(cam_file)
        gt = ds_mod.load_gt(root, n, layout)
        seeds = camio.cam_labels(cams, 'proto_cam', fuse_weight)
        sem = camio.read_label(sem_file)
        valid = gt != 255
        g = float(((sem == gt) & valid).mean() - ((seeds == gt) & valid).mean())
        if g > gain:
            best, gain = n, g
    return best


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--work_dir', default='work/demo')
    p.add_argument('--out', default='docs/pipeline.png')
    p.add_argument('--name', default=None, help='the val image to show (default: see above)')
    p.add_argument('--height', default=150, type=int, help='panel height in pixels')
    a = p.parse_args(argv)
    from misc.plots import _pyplot, _save
    saved = load_run(a.work_dir)
    ds_mod = get_dataset(saved.get('dataset', 'voc12'))
    root, val = saved['dataset_root'], saved.get('seg_infer_list') or saved.get('eval_list')
    if not os.path.isfile(val):
        raise MissingInput(f'{val} is missing: run the demo (bash run_demo.sh) first')
    names = ds_mod.load_img_name_list(val)
    fuse = saved.get('cam_eval_fuse_weight', 0.3)  # the run's --cam_eval_fuse_weight (its default for older runs)
    name = a.name or pick_image(a.work_dir, names, root, ds_mod, fuse)
    layout = ds_mod.ImageDataset.layout
    img = ds_mod.read_image(layout.image_path(root, name))

    def label(sub):
        path = camio.label_path(os.path.join(a.work_dir, sub), name)
        return camio.read_label(path) if os.path.isfile(path) else None
    cam_file = camio.cam_path(os.path.join(a.work_dir, 'cam'), name)
    cams = camio.load_cam(cam_file) if os.path.isfile(cam_file) else None
    panels = image_panels(name, img, cams, ds_mod.load_gt(root, name, layout), label('ir_label'), label('sem_seg'),
                          layout.class_names(), 'proto_cam', fuse, label('seg'))[:6]
    v = stages.stage_values(a.work_dir)
    numbers = {'CAM seeds': v.get('cam_proto_cam'), 'IR label': v.get('crf_labels'), 'pseudo mask': v.get('irn_masks'),
               'DeepLab': v.get('deeplab_crf')}
    panels = [(f'{t} ({numbers[t]:.3f})' if numbers.get(t) is not None else t, rgb, lab) for t, rgb, lab in panels]
    strip = render(panels, a.height, voc_palette())
    plt = _pyplot()
    fig = plt.figure(figsize=(11, 3.9))
    top = fig.add_axes([0, 0.56, 1, 0.44])
    diagram(top)
    bottom = fig.add_axes([0.01, 0.0, 0.98, 0.55])
    bottom.imshow(strip)
    bottom.axis('off')
    bottom.set_title(f'one val image of {a.work_dir} through the stages (mIoU of each stage on the whole val set; '
                     f'seeds of the prototype CAM)', fontsize=8)
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    _save(fig, a.out)
    plt.close(fig)
    print(f'pipeline figure: {a.out} (image {name})')
    return a.out


if __name__ == '__main__':
    from misc.errors import cli
    cli(main)
