"""Pictures of a run: CAM overlays per class, GT / CAM seeds / IR labels / pseudo masks in the VOC palette,
and one contact sheet for a chosen list of images.

    python -m misc.visualize --work_dir work/voc --list work/voc/meta/val.txt --max_images 8

Reads what the steps wrote under --work_dir (cam/, ir_label/, sem_seg/; dataset and root from args.json)
and writes below work_dir/vis/<tag>/ (tag: the list's name, or --tag):
    <id>.png              full-size strip: image | GT | CAM seeds (argmax of the --cam_source CAM) |
                          IR label | pseudo mask | DeepLab prediction (seg/) | one overlay per class of the
                          image (that CAM divided by its max per class)
    ir_label/<id>.png     IR labels, sem_seg/<id>.png pseudo masks, seg/<id>.png DeepLab predictions: palette
                          PNGs (pixel values = class ids)
    contact_sheet.png     one row of thumbnails per image, a colour legend of the classes shown
Artefacts a run has not produced yet are drawn as grey 'missing' panels, so the command works after any step.
"""
import argparse
import os
import sys

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from misc import camio
from misc.dataset import get_dataset
from misc.errors import BadInput, MissingInput
from misc.imutils import colorize_label, overlay_heatmap, voc_palette

MISSING_GREY = 200
IGNORE = 255


def cam_panels(img, cam, keys, gt=None, pred=None):
    """One RGB strip: image | GT | prediction | one overlay per foreground key (CAM scaled to [0, 1])."""
    panels = [img]
    if gt is not None:
        panels.append(colorize_label(gt))
    if pred is not None:
        panels.append(colorize_label(pred))
    panels += [overlay_heatmap(img, c) for c in class_heatmaps(cam)]
    return hstack(panels, sep=2)


def class_heatmaps(cam):
    """Foreground channels (K-1,H,W) each divided by its own max (>= 1e-5) -> values in [0, 1]."""
    return [c / max(float(c.max()), 1e-5) for c in cam[1:]]


def hstack(panels, sep=2, fill=255):
    h = max(p.shape[0] for p in panels)
    out = []
    for p in panels:
        if p.shape[0] < h:
            p = np.concatenate([p, np.full((h - p.shape[0],) + p.shape[1:], fill, np.uint8)])
        out += [p, np.full((h, sep, 3), fill, np.uint8)]
    return np.concatenate(out[:-1], axis=1)


def vstack(rows, sep=2, fill=255):
    w = max(r.shape[1] for r in rows)
    out = []
    for r in rows:
        if r.shape[1] < w:
            r = np.concatenate([r, np.full((r.shape[0], w - r.shape[1], 3), fill, np.uint8)], axis=1)
        out += [r, np.full((sep, w, 3), fill, np.uint8)]
    return np.concatenate(out[:-1], axis=0)


def font(size):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def titled(panel, title, size=12):
    """Panel with a white band above it holding `title` (cut to the panel's width)."""
    band = size + 6
    im = Image.new('RGB', (panel.shape[1], panel.shape[0] + band), (255, 255, 255))
    im.paste(Image.fromarray(panel), (0, band))
    draw, f = ImageDraw.Draw(im), font(size)
    text = title
    while text and draw.textlength(text, font=f) > panel.shape[1] - 4:
        text = text[:-1]
    draw.text((2, 2), text, fill=(0, 0, 0), font=f)
    return np.asarray(im)


def missing_panel(h, w, size=12):
    im = Image.new('RGB', (w, h), (MISSING_GREY,) * 3)
    ImageDraw.Draw(im).text((4, h // 2 - size // 2), 'missing', fill=(90, 90, 90), font=font(size))
    return np.asarray(im)


def resize_to_height(arr, height, resample=Image.BILINEAR):
    h, w = arr.shape[:2]
    if h == height:
        return arr
    width = max(1, int(round(w * height / h)))
    return np.asarray(Image.fromarray(arr).resize((width, height), resample))


def legend(class_ids, class_names, palette, width, size=12):
    """Rows of colour swatches with class names, wrapped to `width` pixels."""
    f = font(size)
    items = [(int(c), class_names[c] if c < len(class_names) else 'ignore') for c in class_ids]
    measure = ImageDraw.Draw(Image.new('RGB', (1, 1)))
    cells = [size + 8 + int(measure.textlength(name, font=f)) + 14 for _, name in items]
    rows, x = 1, 0
    for c in cells:
        if x and x + c > width:
            rows, x = rows + 1, 0
        x += c
    im = Image.new('RGB', (max(width, max(cells, default=1)), rows * (size + 8) + 4), (255, 255, 255))
    draw = ImageDraw.Draw(im)
    x, y = 4, 4
    for (cid, name), c in zip(items, cells):
        if x > 4 and x + c > width:
            x, y = 4, y + size + 8
        draw.rectangle([x, y, x + size, y + size], fill=tuple(int(v) for v in palette[cid]), outline=(0, 0, 0))
        draw.text((x + size + 4, y), name, fill=(0, 0, 0), font=f)
        x += c
    return np.asarray(im)


def image_panels(name, img, cams, gt, ir, sem, class_names, source, fuse_weight, seg=None):
    """[(title, rgb or None, label or None)] for one image; None = the artefact does not exist yet."""
    panels = [(name, img, None), ('GT', None, gt)]
    if cams is not None:
        score = camio.cam_score(cams, source, fuse_weight)
        panels.append(('CAM seeds', None, cams['keys'][np.argmax(score, 0)].astype(np.uint8)))
    else:
        panels.append(('CAM seeds', None, None))
    panels += [('IR label', None, ir), ('pseudo mask', None, sem), ('DeepLab', None, seg)]
    if cams is not None:
        for k, heat in zip(cams['keys'][1:], class_heatmaps(score)):
            panels.append((class_names[k], overlay_heatmap(img, heat), None))
    return panels


def render(panels, height, palette):
    """Titled panels of one image, scaled to `height` (None = full size), as one RGB row."""
    h0, w0 = panels[0][1].shape[:2]
    out = []
    for title, rgb, label in panels:
        if rgb is None and label is None:
            rgb = missing_panel(h0, w0)
        elif rgb is None:
            rgb = palette[label if height is None else resize_to_height(label, height, Image.NEAREST)]
        if height is not None:
            rgb = resize_to_height(rgb, height)
        out.append(titled(np.ascontiguousarray(rgb, dtype=np.uint8), title))
    return hstack(out, sep=4)


def read_optional_label(path):
    """The label map, or None where the step has not written it (yet) or left it unreadable."""
    try:
        return camio.read_label(path)
    except (OSError, ValueError):
        return None


def load_run(work_dir):
    path = os.path.join(work_dir, 'args.json')
    if not os.path.isfile(path):
        raise MissingInput(f'{path} is missing: --work_dir must be a folder run_sample.py wrote, or pass '
                           f'--dataset, --root and --list or --names')
    return camio.load_json(path)


def run(work_dir, names, root, dataset='voc12', tag='vis', source='proto_cam', fuse_weight=0.3, thumb_height=128,
        write_full=True, max_classes=6):
    """Write the pictures of `names`; returns the contact sheet's path."""
    layout_dirs = camio.work_layout(work_dir)
    ds_mod = get_dataset(dataset)
    layout = ds_mod.ImageDataset.layout
    layout.check_root(root)
    class_names = layout.class_names()
    palette = voc_palette()
    out_dir = os.path.join(layout_dirs['vis_dir'], tag)
    rows, shown = [], set()
    for name in names:
        img = ds_mod.read_image(layout.image_path(root, name))
        cam_file = camio.cam_path(layout_dirs['cam_dir'], name)
        cams = camio.load_cam(cam_file) if os.path.isfile(cam_file) else None
        gt_file = layout.gt_path(root, name)
        gt = camio.read_label(gt_file) if os.path.isfile(gt_file) else None
        ir = read_optional_label(camio.label_path(layout_dirs['ir_label_dir'], name))
        sem = read_optional_label(camio.label_path(layout_dirs['sem_seg_dir'], name))
        seg = read_optional_label(camio.label_path(layout_dirs['seg_dir'], name))
        for lab, what in ((gt, 'GT'), (ir, 'IR label'), (sem, 'pseudo mask'), (seg, 'DeepLab prediction')):
            if lab is not None and lab.shape != img.shape[:2]:
                raise BadInput(f'{name}: {what} size {lab.shape} differs from the image {img.shape[:2]}')
        if cams is not None and cams['cam'].shape[1:] != img.shape[:2]:
            raise BadInput(f'{name}: CAM size {cams["cam"].shape[1:]} differs from the image {img.shape[:2]}; '
                           f're-run make_cam for it')
        panels = image_panels(name, img, cams, gt, ir, sem, class_names, source, fuse_weight, seg)
        for _, _, lab in panels:
            if lab is not None:
                shown.update(np.unique(lab).tolist())
        if write_full:
            camio.write_image(os.path.join(out_dir, name + '.png'), render(panels, None, palette))
            for lab, sub in ((ir, 'ir_label'), (sem, 'sem_seg'), (seg, 'seg')):
                if lab is not None:
                    camio.write_label(camio.label_path(os.path.join(out_dir, sub), name), lab, palette)
        rows.append(render(panels[:6 + max_classes], thumb_height, palette))
    if not rows:
        raise BadInput('no images to draw: the list is empty')
    sheet = vstack(rows, sep=6)
    head = f'{work_dir}   CAM: {source}' + (f' (cam + {fuse_weight} proto_cam)' if source == 'fused' else '')
    sheet = titled(sheet, head + f'   {len(rows)} images', size=14)
    ids = sorted(shown - {IGNORE}) + ([IGNORE] if IGNORE in shown else [])
    sheet = vstack([sheet, legend(ids, class_names, palette, sheet.shape[1])], sep=6)
    path = os.path.join(out_dir, 'contact_sheet.png')
    camio.write_image(path, sheet)
    return path


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--work_dir', required=True, type=str, help='the run to draw (the folder run_sample.py wrote)')
    p.add_argument('--list', default=None, type=str,
                   help="images to draw (default: the run's --eval_list from args.json)")
    p.add_argument('--names', default=None, nargs='+', type=str, help='image ids to draw instead of --list')
    p.add_argument('--max_images', default=8, type=int, help='first N images of the list (0 = all)')
    p.add_argument('--tag', default=None, type=str, help="subfolder of vis/ (default: the list's name)")
    p.add_argument('--cam_source', default='proto_cam', choices=camio.CAM_SOURCES,
                   help="CAM drawn: the authors' proto_cam, the PCM cam, or fused")
    p.add_argument('--fuse_weight', default=None, type=float,
                   help="fused = cam + w proto_cam (default: the run's --cam_eval_fuse_weight, 0.3)")
    p.add_argument('--thumb_height', default=128, type=int, help='row height of the contact sheet in pixels')
    p.add_argument('--max_classes', default=6, type=int, help='class overlays per row of the contact sheet')
    p.add_argument('--contact_sheet_only', default=False, action='store_true', help='skip the full-size files')
    p.add_argument('--dataset', default=None, choices=('voc12', 'coco14'), help="default: the run's")
    p.add_argument('--root', default=None, type=str, help="dataset root (default: the run's)")
    return p


def main(argv=None):
    args = get_parser().parse_args(argv)
    work_dir = os.path.abspath(args.work_dir)
    saved = {} if (args.dataset and args.root and (args.list or args.names)) else load_run(work_dir)
    dataset = args.dataset or saved.get('dataset', 'voc12')
    root = args.root or saved.get('dataset_root')
    if not root:
        raise BadInput('no dataset root: pass --root (args.json of the run has none)')
    if args.names:
        names, tag = list(args.names), args.tag or 'names'
    else:
        lst = args.list or saved.get('eval_list')
        if not lst:
            raise BadInput('pass --list or --names')
        names = get_dataset(dataset).load_img_name_list(lst)
        tag = args.tag or os.path.splitext(os.path.basename(lst))[0]
    if args.max_images > 0:
        names = names[:args.max_images]
    fuse = args.fuse_weight if args.fuse_weight is not None else saved.get('cam_eval_fuse_weight', 0.3)
    path = run(work_dir, names, root, dataset, tag, args.cam_source, fuse, args.thumb_height,
               not args.contact_sheet_only, args.max_classes)
    print(f'{len(names)} images drawn; contact sheet {path}')
    return path


if __name__ == '__main__':
    from misc.errors import cli
    cli(main, sys.argv[1:])
