"""make_cam (docs/faithfulness §4): multi-scale + flip CAMs of every image of --infer_list -> cam/<id>.npz
(docs/pipeline.md).

Per image and scale the CAM network returns the PCM CAM and the prototype CAM (C,h_s,w_s); each kept
channel is upsampled bilinearly (align_corners=False) to the image size, summed over scales, divided by
its max + 1e-5; then background + 0.4 and every foreground channel x 2 (what the authors' "pad 0.4" line
computes). Only the channels in keys = [0, present classes] are computed and stored.
Runs one process per visible GPU, or in-process on CPU; images whose CAM file is complete are skipped.
"""
import os

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from misc import camio, distributed
from misc.dataset import get_dataset, num_classes
from misc.errors import MissingInput
from misc.torchutils import (autocast, elsewhere, explain_oom, prefetch_loader, prepare_for_inference, run_sharded,
                             setup_precision, to_memory_format, use_channels_last)
from misc.workpool import Background, counted
from net import resnet50_sfc


def postprocess(maps, size, keys, eps=1e-5, bg_offset=0.4, fg_scale=2.0):
    """maps: per-scale (C,h_s,w_s) tensors in summation order -> (K,H,W) float32 for the channels `keys`."""
    keys_t = torch.as_tensor(np.asarray(keys), dtype=torch.long, device=maps[0].device)
    acc = None
    for m in maps:
        up = F.interpolate(m[keys_t][None].float(), size=tuple(int(v) for v in size), mode='bilinear',
                           align_corners=False)[0]
        acc = up if acc is None else acc + up
    acc = acc / (acc.amax(dim=(1, 2), keepdim=True) + eps)
    acc[0] += bg_offset
    acc[1:] *= fg_scale
    return acc


def load_cam_model(args, device, weights=True):
    """The CAM network of the run, with --sfc_weights (weights=False: at random initialisation, for the run
    planner, whose timing does not depend on the weights), ready for inference on the device."""
    model = resnet50_sfc.CAM(num_classes(args), backbone_width=args.backbone_width, backbone_weights='none',
                             bg_factor=args.sfc_proto_bg_factor)
    if weights:
        resnet50_sfc.load_sfc_weights(model, camio.load_checkpoint(args.sfc_weights), args.sfc_weights)
    return prepare_for_inference(model, device, args.cam_fold_bn,
                                 use_channels_last(args.channels_last, device))


def cams_of(model, pack, n_cls, size, args, device):
    """(cam, proto_cam) (K,H,W) float32 arrays and keys of one multi-scale pack."""
    keys = camio.keys_from_label(pack['label'].numpy())
    label = torch.zeros(n_cls, device=device)
    label[torch.as_tensor(keys, device=device)] = 1
    cams, protos = [], []
    channels_last = use_channels_last(args.channels_last, device)
    with torch.inference_mode():
        for img in pack['img']:
            with autocast(args.amp, device):
                cam, proto, _ = model(to_memory_format(img.to(device, non_blocking=True), channels_last), label)
            cams.append(cam)
            protos.append(proto)
        kw = dict(eps=args.cam_norm_eps, bg_offset=args.cam_bg_offset, fg_scale=args.cam_fg_scale)
        cam = postprocess(cams, size, keys, **kw)
        proto = postprocess(protos, size, keys, **kw)
    return cam.cpu().numpy(), proto.cpu().numpy(), keys


def oom_advice(args, device):
    return (f'The largest scale ({max(args.cam_scales)}) needs the most memory: run on {elsewhere(device)} (same CAMs), '
            f'or leave that scale out of --cam_scales (changes the CAMs). '
            f'CAMs finished so far are kept; re-running make_cam continues after them.')


def cam_loop(model, ds, indices, device, args, cam_dir, rank=0, progress=True, on_item=None):
    """The step's loop over ds[indices]: loader workers ahead of the network, the CAM file of image i written by a
    thread while the network works on i+1; on_item() after each image's network pass (the run planner times the
    loop through it on a sample of the list)."""
    n_cls = num_classes(args)
    with Background(1, 'thread') as writer:
        for pack in tqdm(counted(prefetch_loader(ds, indices, args.num_workers, device)), total=len(indices),
                         desc=f'make_cam[{rank}]', position=rank, dynamic_ncols=True, mininterval=5,
                         disable=not progress):
            size = tuple(int(v) for v in pack['size'])
            with explain_oom(f'make_cam, image {pack["name"]} ({size[0]}x{size[1]}) at scales {tuple(args.cam_scales)}',
                             oom_advice(args, device), device):
                cam, proto, keys = cams_of(model, pack, n_cls, size, args, device)
            writer.submit(camio.save_cam, camio.cam_path(cam_dir, pack['name']), keys, cam, proto)
            if on_item is not None:
                on_item()


def _work(rank, indices, device, args):
    device = torch.device(device)
    ds = get_dataset(args).ClassificationDatasetMSF(args.infer_list, args.dataset_root, args.cls_labels,
                                                    scales=args.cam_scales)
    cam_loop(load_cam_model(args, device), ds, indices, device, args, args.cam_dir, rank)


def run(args):
    ds = get_dataset(args).ClassificationDatasetMSF(args.infer_list, args.dataset_root, args.cls_labels,
                                                    scales=args.cam_scales)
    setup_precision(args.amp, args.device)
    distributed.check_list(len(ds), args.infer_list, '--infer_list')
    if not os.path.isfile(args.sfc_weights):
        raise MissingInput(f'--sfc_weights {args.sfc_weights} does not exist: run train_sfc first '
                           f'(--train_sfc_pass True) or point --sfc_weights at a checkpoint')
    todo = camio.unfinished(ds.names, lambda n: camio.cam_path(args.cam_dir, n), camio.is_complete_cam,
                            args.cam_skip_existing)
    print(f'  {len(ds)} images in {args.infer_list}; {len(ds) - len(todo)} already done, {len(todo)} to do; '
          f'scales {tuple(args.cam_scales)}; weights {args.sfc_weights}')
    if todo:
        run_sharded(_work, args, todo)
    return {'n_images': len(ds), 'computed': len(todo)}
