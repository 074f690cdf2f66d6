"""make_sem_seg (docs/faithfulness §8): pseudo masks by random walk on IRN boundaries -> sem_seg/<id>.png.

Per image: edge map of the [image, flipped] pair from the IRN network; F = cam + 0.3 proto_cam; G =
bilinear(F -> stride-4 size)^1.3; walk 1 on the foreground channels of G, walk 2 on all channels of
G^1.3 (= F^1.69: the authors apply the power twice, --sem_seg_double_power); each walk upsampled x4,
cropped and divided by its global max; score = [0.25 plane; walk 1] + walk 2; label = keys[argmax].
Both walks share one sparse transition matrix and run together (misc/indexing.py). Palette-coloured
copies go to sem_seg_palette/. Any image size; images already done are skipped.
"""
import os

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from misc import camio, distributed
from misc.dataset import get_dataset
from misc.errors import BadInput, MissingInput
from misc.imutils import voc_palette
from misc.indexing import propagate, transition_matrix_sparse
from misc.torchutils import (autocast, elsewhere, explain_oom, fp32, prefetch_loader, prepare_for_inference,
                             run_sharded, setup_precision, to_memory_format, use_channels_last)
from misc.workpool import Background, counted
from net import resnet50_irn


@fp32
def pseudo_label(cams, edge, size, args):
    """cams: dict keys/cam/proto_cam (K,H,W); edge (1,h4,w4) tensor -> (H,W) uint8 class ids."""
    keys = cams['keys']
    dev = edge.device
    h4, w4 = edge.shape[-2:]
    f = torch.from_numpy(cams['cam'] + args.sem_seg_proto_weight * cams['proto_cam']).to(dev)
    g = F.interpolate(f[None], size=(h4, w4), mode='bilinear', align_corners=False)[0].pow(args.sem_seg_power)
    if len(keys) == 1:  # no foreground class in the labels: nothing to walk to
        return np.zeros(size, np.uint8)
    g2 = g.pow(args.sem_seg_power) if args.sem_seg_double_power else g
    tt = transition_matrix_sparse(edge, args.sem_seg_radius, args.beta)
    k = len(keys)
    x = torch.cat([g[1:], g2]) * (1 - edge)
    rw = propagate(tt, x, 2 ** args.exp_times)  # (2K-1, 1, h4, w4)
    up = F.interpolate(rw, scale_factor=4, mode='bilinear', align_corners=False)[:, 0, :size[0], :size[1]]

    def norm(t):
        m = t.max()
        return t / m if m > 0 else t
    walk1, walk2 = norm(up[:k - 1]), norm(up[k - 1:])
    bg = torch.full((1,) + tuple(size), args.sem_seg_bg_value, device=dev, dtype=walk1.dtype)
    score = torch.cat([bg, walk1]) + walk2
    return keys[torch.argmax(score, dim=0).cpu().numpy()].astype(np.uint8)


def oom_advice(device):
    return (f'Memory grows with the image area (edge network, then a sparse transition matrix of (H/4)(W/4) x the '
            f'directions of --sem_seg_radius): run on {elsewhere(device)} (same masks), or lower --sem_seg_radius (changes '
            f'the masks). Masks finished so far are kept; re-running make_sem_seg continues after them.')


def load_edge_model(args, device):
    model = resnet50_irn.EdgeDisplacement(crop_size=args.irn_crop_size_infer, stride=4,
                                          backbone_width=args.backbone_width, backbone_weights='none')
    resnet50_irn.load_irn_weights(model, camio.load_checkpoint(args.irn_weights), args.irn_weights)
    return prepare_for_inference(model, device, args.cam_fold_bn,
                                 use_channels_last(args.channels_last, device))


def _work(rank, indices, device, args):
    device = torch.device(device)
    ds = get_dataset(args).ClassificationDatasetMSF(args.infer_list, args.dataset_root, args.cls_labels, scales=(1.0,))
    model = load_edge_model(args, device)
    palette = voc_palette()
    channels_last = use_channels_last(args.channels_last, device)
    with Background(1, 'thread') as writer:  # the PNGs of image i are written while the network works on i+1
        for pack in tqdm(counted(prefetch_loader(WithCams(ds, args.cam_dir), indices, args.num_workers, device)),
                         total=len(indices), desc=f'make_sem_seg[{rank}]', position=rank, dynamic_ncols=True,
                         mininterval=5):
            name, size = pack['name'], tuple(int(v) for v in pack['size'])
            cams = {k: v.numpy() for k, v in pack['cams'].items()}
            with explain_oom(f'make_sem_seg, image {name} ({size[0]}x{size[1]}, {len(cams["keys"])} channels)',
                             oom_advice(device), device), torch.inference_mode():
                with autocast(args.amp, device):
                    edge, _ = model(to_memory_format(pack['img'][0].to(device, non_blocking=True), channels_last))
                lab = pseudo_label(cams, edge, size, args)
            writer.submit(write_masks, args, name, lab, palette)


class WithCams(torch.utils.data.Dataset):
    """The image dataset's items with their CAM arrays, read by the loader workers ahead of the network."""

    def __init__(self, ds, cam_dir):
        self.ds, self.cam_dir = ds, cam_dir

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        pack = self.ds[i]
        name, size = pack['name'], tuple(int(v) for v in pack['size'])
        pack['cams'] = camio.load_cam(camio.cam_path(self.cam_dir, name))
        if pack['cams']['cam'].shape[1:] != size:
            raise BadInput(f'{name}: CAM size {pack["cams"]["cam"].shape[1:]} differs from the image {size}')
        return pack


def write_masks(args, name, lab, palette):
    camio.write_label(camio.label_path(args.sem_seg_palette_dir, name), lab, palette)
    camio.write_label(camio.label_path(args.sem_seg_dir, name), lab)  # last: its presence marks completion


def run(args):
    ds = get_dataset(args).ImageDataset(args.infer_list, args.dataset_root)
    setup_precision(args.amp, args.device)
    distributed.check_list(len(ds), args.infer_list, '--infer_list')
    if not os.path.isfile(args.irn_weights):
        raise MissingInput(f'--irn_weights {args.irn_weights} does not exist: run train_irn first '
                           f'(--train_irn_pass True) or point --irn_weights at a checkpoint')
    todo = camio.unfinished(ds.names, lambda n: camio.label_path(args.sem_seg_dir, n), camio.is_complete_label,
                            args.sem_seg_skip_existing)
    print(f'  {len(ds)} images in {args.infer_list}; {len(ds) - len(todo)} already done, {len(todo)} to do; '
          f'F = cam + {args.sem_seg_proto_weight} proto_cam, power {args.sem_seg_power}, beta {args.beta}, '
          f'T^{2 ** args.exp_times}')
    if todo:
        run_sharded(_work, args, todo)
    return {'n_images': len(ds), 'computed': len(todo)}
