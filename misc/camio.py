"""The only reader and writer of artefacts under the work directory (docs/pipeline.md).

Layout (everything below --work_dir):
    meta/               image lists and cls_labels.npz built from the dataset (voc12.make_cls_labels)
    ckpt/               res50_sfc.pth (what make_cam loads), res50_sfc_final.pth, res50_sfc_best_gt.pth,
                        sfc_resume.pth (training state for resume); res50_irn.pth, irn_resume.pth
    cam/<id>.npz        keys int64 (K,), cam float32 (K,H,W), proto_cam float32 (K,H,W)
    ir_label/<id>.png   uint8 0 bg, 1..C classes, 255 ignore
    sem_seg/<id>.png    uint8 class ids; sem_seg_palette/<id>.png colour copies
    ckpt/deeplab.pth    the segmentation model {'net': state dict, 'meta': architecture and input normalisation};
                        seg_resume.pth its training state
    seg/<id>.png        the segmentation model's prediction (after the CRF when --seg_crf), uint8 class ids;
                        seg_nocrf/<id>.png the same before the CRF; seg_palette/<id>.png colour copies of seg/
    voc_test_export/    results/VOC2012/Segmentation/comp6_test_cls/<id>.png and results.tar.gz (VOC server)
    metrics/<step>.json {"miou", "iou": {class: value}, "n_images", ...}
    metrics/<step>_scalars.jsonl  training curves, one {"step", name: value} line per step (train_sfc, train_irn,
                        train_seg)
    tb/<step>/          the same curves as TensorBoard events (--tensorboard True)
    vis/                overlays and contact sheets
Every file is written to a temporary name in the same folder and renamed into place, so a killed run
never leaves a truncated artefact that a later step reads.
"""
import json
import os
import tempfile

import numpy as np
import torch
from PIL import Image

from misc.errors import BadInput, MissingInput

CAM_KEYS = ('keys', 'cam', 'proto_cam')
SUBDIRS = {'meta_dir': 'meta', 'ckpt_dir': 'ckpt', 'cam_dir': 'cam', 'ir_label_dir': 'ir_label',
           'sem_seg_dir': 'sem_seg', 'sem_seg_palette_dir': 'sem_seg_palette', 'metrics_dir': 'metrics',
           'vis_dir': 'vis', 'seg_dir': 'seg', 'seg_nocrf_dir': 'seg_nocrf', 'seg_palette_dir': 'seg_palette'}
SFC_WEIGHTS = 'res50_sfc.pth'
SFC_FINAL = 'res50_sfc_final.pth'
SFC_BEST_GT = 'res50_sfc_best_gt.pth'
SFC_RESUME = 'sfc_resume.pth'
IRN_WEIGHTS = 'res50_irn.pth'
IRN_RESUME = 'irn_resume.pth'
SEG_WEIGHTS = 'deeplab.pth'
SEG_RESUME = 'seg_resume.pth'
VOC_TEST_EXPORT = 'voc_test_export'


def scalars_path(metrics_dir, step):
    return os.path.join(metrics_dir, f'{step}_scalars.jsonl')


def tensorboard_dir(work_dir, step):
    return os.path.join(work_dir, 'tb', step)


def work_layout(work_dir):
    return {k: os.path.join(work_dir, v) for k, v in SUBDIRS.items()}


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path, write):
    """write(tmp_path) then rename onto path."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='.' + os.path.basename(path) + '.', suffix='.tmp', dir=d)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would hide artefacts from the rest of a group
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


# --- CAM arrays -------------------------------------------------------------------------------------------
def cam_path(cam_dir, name):
    return os.path.join(cam_dir, name + '.npz')


def save_cam(path, keys, cam, proto_cam):
    keys = np.asarray(keys, dtype=np.int64)
    cam = np.ascontiguousarray(cam, dtype=np.float32)
    proto_cam = np.ascontiguousarray(proto_cam, dtype=np.float32)
    if keys.ndim != 1 or keys.size == 0 or keys[0] != 0:
        raise ValueError(f'{path}: keys must be [0, class ids...], got {keys}')
    if cam.shape != proto_cam.shape or cam.ndim != 3 or cam.shape[0] != keys.size:
        raise ValueError(f'{path}: cam {cam.shape} / proto_cam {proto_cam.shape} do not match keys {keys.shape}')

    def write(tmp):
        with open(tmp, 'wb') as f:
            np.savez(f, keys=keys, cam=cam, proto_cam=proto_cam)
    atomic_write(path, write)


def keys_from_label(label):
    """keys = [0, present class ids...] from a (N_CAT,) multi-hot image label (docs/faithfulness §4 step 5)."""
    return np.concatenate([[0], np.nonzero(np.asarray(label) > 0)[0] + 1]).astype(np.int64)


def unfinished(names, path_of, is_complete, skip=True):
    """Indices of `names` whose artefact path_of(name) is not complete yet (all of them when skip is False)."""
    return [i for i, n in enumerate(names) if not (skip and is_complete(path_of(n)))]


def load_cam(path):
    """Read a cam/<id>.npz; checks the schema and says which file is wrong."""
    if not os.path.isfile(path):
        raise MissingInput(f'CAM file {path} is missing: run the make_cam step (--make_cam_pass True) '
                           f'on a list that contains this image')
    try:
        with np.load(path, allow_pickle=False) as z:
            out = {k: z[k] for k in CAM_KEYS}
    except KeyError as e:
        raise BadInput(f'CAM file {path} lacks array {e}; expected {CAM_KEYS}; re-run make_cam for it') from None
    except Exception as e:
        raise BadInput(f'CAM file {path} cannot be read ({e}); delete it and re-run make_cam') from None
    k = out['keys']
    if k.ndim != 1 or out['cam'].shape != out['proto_cam'].shape or out['cam'].shape[0] != k.size:
        raise BadInput(f'CAM file {path}: keys {k.shape}, cam {out["cam"].shape}, proto_cam '
                       f'{out["proto_cam"].shape} are inconsistent; re-run make_cam')
    return out


CAM_SOURCES = ('proto_cam', 'cam', 'fused')


def cam_score(cams, source, fuse_weight=0.3):
    """The (K,H,W) score a CAM source stands for: proto_cam (the authors' IS_CAM), cam (PCM classifier CAM,
    IS_CAM1) or fused = cam + fuse_weight * proto_cam (the commented final_cam, SFC/make_cam.py:81)."""
    if source == 'proto_cam':
        return cams['proto_cam']
    if source == 'cam':
        return cams['cam']
    if source == 'fused':
        return cams['cam'] + fuse_weight * cams['proto_cam']
    raise BadInput(f'CAM source {source!r}: choose from {CAM_SOURCES}')


def cam_labels(cams, source, fuse_weight=0.3):
    """(H,W) uint8 class ids of a CAM source: keys[argmax] (ties -> the first stored channel, background)."""
    return cams['keys'][np.argmax(cam_score(cams, source, fuse_weight), axis=0)].astype(np.uint8)


def is_complete_cam(path):
    """True when path holds a readable CAM file (used to skip finished work on re-runs)."""
    try:
        load_cam(path)
        return True
    except (OSError, ValueError):
        return False


# --- label PNGs -------------------------------------------------------------------------------------------
def label_path(label_dir, name):
    return os.path.join(label_dir, name + '.png')


def is_complete_label(path):
    """True when path holds a decodable label PNG (used to skip finished work on re-runs)."""
    try:
        read_label(path)
        return True
    except (OSError, ValueError):
        return False


def write_label(path, label, palette=None):
    """uint8 single-channel PNG; with palette (N,3 uint8) a P-mode image whose indices are the labels."""
    arr = np.asarray(label)
    if arr.ndim != 2:
        raise ValueError(f'{path}: a label map must be 2-D, got {arr.shape}')
    if arr.min(initial=0) < 0 or arr.max(initial=0) > 255:
        raise ValueError(f'{path}: label values must lie in 0..255')
    img = Image.fromarray(arr.astype(np.uint8), mode='L' if palette is None else 'P')
    if palette is not None:
        img.putpalette(np.asarray(palette, dtype=np.uint8).reshape(-1).tolist())
    atomic_write(path, lambda tmp: img.save(tmp, format='PNG'))


def read_label(path):
    """uint8 (H,W) label map; palette PNGs give their indices (PIL keeps them, imageio may expand to RGB)."""
    try:
        with Image.open(path) as img:
            if img.mode not in ('P', 'L', 'I', 'I;16'):
                raise BadInput(f'{path}: expected a single-channel or palette PNG, got mode {img.mode}')
            return np.array(img).astype(np.uint8)
    except FileNotFoundError:
        raise MissingInput(f'label file {path} is missing') from None
    except (OSError, SyntaxError) as e:
        raise BadInput(f'label file {path} cannot be decoded ({e})') from None


def write_image(path, rgb):
    atomic_write(path, lambda tmp: Image.fromarray(np.asarray(rgb, dtype=np.uint8)).save(tmp, format='PNG'))


# --- json and checkpoints -----------------------------------------------------------------------------------
def _jsonable(o):
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, np.ndarray):
        return _jsonable(o.tolist())
    if isinstance(o, (np.floating, float)):
        o = float(o)
        return None if o != o else o
    if isinstance(o, np.integer):
        return int(o)
    return o


def save_json(path, obj):
    text = json.dumps(_jsonable(obj), indent=2, sort_keys=False)

    def write(tmp):
        with open(tmp, 'w', encoding='utf-8') as f:
            f.write(text + '\n')
    atomic_write(path, write)


def load_json(path):
    with open(path, encoding='utf-8') as f:
        return json.load(f)


def save_checkpoint(obj, path):
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def load_checkpoint(path):
    """torch.load with weights_only=True (no pickled code runs) onto the CPU."""
    if not os.path.isfile(path):
        raise MissingInput(f'checkpoint {path} does not exist')
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        raise BadInput(f'checkpoint {path} cannot be read with weights_only=True ({e})') from None
