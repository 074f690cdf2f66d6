"""make_seg (docs/deeplab.md): the segmentation model's predictions on --seg_infer_list -> seg/<id>.png.

Per image (full size, batch 1): MSC max logits (plus, optionally, the average over --seg_test_scales and the
flipped image), bilinear (align_corners=False) to the image size, softmax, argmax -> seg_nocrf/<id>.png; then
the dense CRF on the RGB image (10 iterations, Gaussian 1/3, bilateral 67/3/4) -> seg/<id>.png, with a palette
copy in seg_palette/. With --seg_crf False, seg/ holds the argmax. With only scale 1 and no flip this is
deeplab-pytorch's test + crf (which feeds the CRF the mean-subtracted image cast to uint8; we feed the image).
--seg_export_voc_test writes the VOC evaluation server's layout and its tar.gz. Finished images are skipped.
The CRF of an image runs in one of --seg_crf_workers processes while the network works on the next images (beside
a GPU the network takes a fraction of the CRF's time); the outputs do not depend on the number of workers.
"""
import os
import tarfile

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from misc import camio, distributed
from misc.dataset import get_dataset, num_classes
from misc.errors import BadInput, MissingInput
from misc.imutils import crf_inference_softmax, voc_palette
from misc.torchutils import (autocast, configure_cudnn, elsewhere, explain_oom, prefetch_loader, run_sharded,
                             setup_precision, to_memory_format, use_channels_last)
from misc.workpool import Background, counted
from net import deeplab
from net.checkpoint import unwrap_state_dict

VOC_TEST_DIR = ('results', 'VOC2012', 'Segmentation', 'comp6_test_cls')  # comp6: outside data (SBD masks) allowed


def load_seg_model(args, n_classes, device=None):
    """(model in eval mode, input normalisation). Architecture and normalisation come from the checkpoint's
    meta (our train_seg), else from the flags (a deeplab-pytorch checkpoint: Caffe layout, BGR mean)."""
    obj = camio.load_checkpoint(args.seg_weights)
    meta = obj.get('meta') if isinstance(obj, dict) and isinstance(obj.get('meta'), dict) else None
    sd, layout = deeplab.to_model_keys(unwrap_state_dict(obj), f'--seg_weights {args.seg_weights}')
    if meta:
        depth, width, stride_in, norm = meta['depth'], meta['width'], meta['stride_in'], meta['input_norm']
        msc, rates = meta['msc_scales'], meta['aspp_rates']
    else:
        depth, width, msc, rates = args.seg_depth, args.backbone_width, args.seg_msc_scales, args.seg_aspp_rates
        stride_in, norm = deeplab.resolve_stride_and_norm(layout, args.seg_stride_in, args.seg_input_norm)
    model = deeplab.build(n_classes, depth, width, stride_in, rates, msc)
    deeplab.load_weights(model, sd, f'--seg_weights {args.seg_weights}', allow_fresh_head=False)
    model.eval()
    if device is None:
        return model, norm
    configure_cudnn(device, fixed_size=False)
    return to_memory_format(model.to(device), use_channels_last(args.channels_last, device)), norm


def predict_logits(model, img, size, scales=(1.0,), flip=False, amp='none', channels_last=False):
    """img (1,3,h,w) normalised -> (C,H,W) float32 logits at the image size, averaged over scales (and the flip);
    the network runs under --amp autocast."""
    acc, n = None, 0
    for s in scales:
        x = img if s == 1.0 else F.interpolate(img, scale_factor=s, mode='bilinear', align_corners=False)
        with autocast(amp, img.device):
            out = model(to_memory_format(torch.cat([x, x.flip(-1)]) if flip else x, channels_last)).float()
        parts = [out[0:1], out[1:2].flip(-1)] if flip else [out]
        for p in parts:
            up = F.interpolate(p, size=size, mode='bilinear', align_corners=False)
            acc = up if acc is None else acc + up
            n += 1
    return (acc if n == 1 else acc / n)[0]


def crf_params(args):
    return dict(t=args.seg_crf_iters, pos_w=args.seg_crf_pos_w, pos_xy_std=args.seg_crf_pos_xy_std,
                bi_w=args.seg_crf_bi_w, bi_xy_std=args.seg_crf_bi_xy_std, bi_rgb_std=args.seg_crf_bi_rgb_std)


def oom_advice(args, device):
    return (f'Memory grows with the image area and the test scales ({tuple(args.seg_test_scales)}): run on '
            f'{elsewhere(device)} (same predictions), or drop the largest --seg_test_scales (changes them). '
            f'Predictions finished so far are kept; re-running make_seg continues after them.')


def _crf_and_write(raw, prob, params, palette_path, seg_path):
    """The dense CRF of one image and its two PNGs (run beside the network by a worker process, or inline)."""
    pred = np.argmax(crf_inference_softmax(raw, prob, **params), axis=0).astype(np.uint8)
    camio.write_label(palette_path, pred, voc_palette())
    camio.write_label(seg_path, pred)  # last: its presence marks completion


def _work(rank, indices, device, args):
    device = torch.device(device)
    n_cls = num_classes(args)
    model, norm = load_seg_model(args, n_cls, device)
    ds = get_dataset(args).SegInferDataset(args.seg_infer_list, args.seg_infer_root, norm)
    palette = voc_palette()
    channels_last = use_channels_last(args.channels_last, device)
    params = crf_params(args)
    # the CRF of image i runs in a worker while the network works on image i+1 (inline with one worker)
    with Background(args.seg_crf_workers if args.seg_crf else 0, 'process') as crf:
        for pack in tqdm(counted(prefetch_loader(ds, indices, args.num_workers, device)), total=len(indices),
                         desc=f'make_seg[{rank}]', position=rank, dynamic_ncols=True, mininterval=5):
            name, raw = pack['name'], pack['raw'].numpy()
            size = raw.shape[:2]
            with explain_oom(f'make_seg, image {name} ({size[0]}x{size[1]})', oom_advice(args, device), device), \
                    torch.inference_mode():
                logits = predict_logits(model, pack['img'][None].to(device, non_blocking=True), size,
                                        args.seg_test_scales, args.seg_test_flip, args.amp, channels_last)
                prob = F.softmax(logits, dim=0)
                pred = torch.argmax(prob, dim=0).cpu().numpy().astype(np.uint8)
            paths = camio.label_path(args.seg_palette_dir, name), camio.label_path(args.seg_dir, name)
            if args.seg_crf:
                camio.write_label(camio.label_path(args.seg_nocrf_dir, name), pred)
                crf.submit(_crf_and_write, raw, prob.cpu().numpy(), params, *paths)
            else:
                camio.write_label(paths[0], pred, palette)
                camio.write_label(paths[1], pred)  # last: its presence marks completion


def export_voc_test(names, seg_dir, out_dir, n_classes):
    """results/VOC2012/Segmentation/comp6_test_cls/<id>.png (palette PNGs of the class ids, image size) and
    results.tar.gz under out_dir, as the VOC evaluation server takes them (docs/deeplab.md)."""
    folder = os.path.join(out_dir, *VOC_TEST_DIR)
    palette = voc_palette()
    for name in names:
        pred = camio.read_label(camio.label_path(seg_dir, name))
        if pred.max(initial=0) >= n_classes:
            raise BadInput(f'{name}: prediction holds class {int(pred.max())}, the server takes 0..{n_classes - 1}')
        camio.write_label(os.path.join(folder, name + '.png'), pred, palette)
    tar_path = os.path.join(out_dir, 'results.tar.gz')

    def write(tmp):
        with tarfile.open(tmp, 'w:gz') as tar:
            tar.add(os.path.join(out_dir, VOC_TEST_DIR[0]), arcname=VOC_TEST_DIR[0])
    camio.atomic_write(tar_path, write)
    return folder, tar_path


def run(args):
    ds_mod = get_dataset(args)
    ds = ds_mod.ImageDataset(args.seg_infer_list, args.seg_infer_root)
    setup_precision(args.amp, args.device)
    distributed.check_list(len(ds), args.seg_infer_list, '--seg_infer_list')
    if not os.path.isfile(args.seg_weights):
        raise MissingInput(f'--seg_weights {args.seg_weights} does not exist: run train_seg first '
                           f'(--train_seg_pass True) or point --seg_weights at a checkpoint')
    if args.seg_export_voc_test and args.dataset != 'voc12':
        raise BadInput('--seg_export_voc_test writes the PASCAL VOC server layout: it needs --dataset voc12')
    todo = camio.unfinished(ds.names, lambda n: camio.label_path(args.seg_dir, n), camio.is_complete_label,
                            args.seg_skip_existing)
    print(f'  {len(ds)} images in {args.seg_infer_list}; {len(ds) - len(todo)} already done, {len(todo)} to do; '
          f'weights {args.seg_weights}; test scales {tuple(args.seg_test_scales)}'
          f'{" + flip" if args.seg_test_flip else ""}; CRF '
          + (f'on, in {args.seg_crf_workers} processes beside the network' if args.seg_crf and args.seg_crf_workers > 1
             else 'on, inline' if args.seg_crf else 'off'))
    if todo:
        run_sharded(_work, args, todo)
    out = {'n_images': len(ds), 'computed': len(todo)}
    if args.seg_export_voc_test:
        distributed.barrier()  # every rank's predictions are written (a no-op for one process)
    if args.seg_export_voc_test and distributed.is_main():
        folder, tar_path = export_voc_test(ds.names, args.seg_dir, os.path.join(args.work_dir, camio.VOC_TEST_EXPORT),
                                           num_classes(args))
        print(f'  VOC test-server layout: {folder} ({len(ds)} PNGs); upload {tar_path}')
        out['export'] = tar_path
    return out
