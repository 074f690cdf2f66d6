"""The paper's stage table of a work directory: each stage's mIoU and its gain over the best CAM and over the stage
before it (the paper on VOC: CAM 64.7 -> CRF labels 69.4 -> IRN pseudo masks 73.7 -> DeepLab 71.2 on val).

    python -m misc.stages work/demo

Reads metrics/eval_cam.json, eval_sem_seg.json and eval_seg.json (whichever exist); prints one table; returns
{stage: mIoU}. The CRF labels are the IR labels scored as masks (their void pixels counted as background).
"""
import argparse
import os
import sys

from misc import camio
from misc.pyutils import format_table

STAGES = ('CAM (best of cam / proto_cam / fused)', 'CRF labels as masks', 'IRN pseudo masks',
          'DeepLab on val, CRF', 'DeepLab on val, no CRF')
SHORT = dict(zip(STAGES, ('cam', 'crf_labels', 'irn_masks', 'deeplab_crf', 'deeplab_nocrf')))


def stage_values(work_dir):
    """{short stage name: mIoU} of what the work directory has evaluated, plus 'cam_source'."""
    m = os.path.join(work_dir, 'metrics')
    out = {}
    cam = os.path.join(m, 'eval_cam.json')
    if os.path.isfile(cam):
        srcs = camio.load_json(cam).get('sources', {})
        if srcs:
            best = max(srcs, key=lambda k: srcs[k]['miou'])
            out['cam'], out['cam_source'] = srcs[best]['miou'], best
            out.update({f'cam_{k}': v['miou'] for k, v in srcs.items()})
    sem = os.path.join(m, 'eval_sem_seg.json')
    if os.path.isfile(sem):
        s = camio.load_json(sem)
        if 'ir_label' in s:
            out['crf_labels'] = s['ir_label']['miou_as_mask']
        if s.get('masks', 'sem_seg') == 'sem_seg':
            out['irn_masks'] = s['miou']
    seg = os.path.join(m, 'eval_seg.json')
    if os.path.isfile(seg):
        s = camio.load_json(seg)
        out['deeplab_crf' if s.get('crf') else 'deeplab_nocrf'] = s['miou']
        if 'miou_no_crf' in s:
            out['deeplab_nocrf'] = s['miou_no_crf']
    return out


def table(values):
    rows, prev = [], None
    cam = values.get('cam')
    for name in STAGES:
        v = values.get(SHORT[name])
        if v is None:
            continue
        label = f'{name} ({values["cam_source"]})' if SHORT[name] == 'cam' and 'cam_source' in values else name
        rows.append([label, f'{v:.4f}', f'{100 * (v - cam):+.1f}' if cam is not None and SHORT[name] != 'cam' else '',
                     f'{100 * (v - prev):+.1f}' if prev is not None else ''])
        if SHORT[name] != 'deeplab_nocrf':
            prev = v
    return format_table(['stage', 'mIoU', 'points over the CAM', 'over the stage before'], rows)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('work_dir')
    a = p.parse_args(argv)
    values = stage_values(a.work_dir)
    print(f'stages ({os.path.join(a.work_dir, "metrics")}):')
    print(table(values))
    return values


if __name__ == '__main__':
    from misc.errors import cli
    sys.exit(0 if cli(main) is not None else 1)
