"""cam_to_ir_label (docs/faithfulness §6): IRN training labels from the CAMs by two dense-CRF passes ->
ir_label/<id>.png.

1. F = cam + 0.7 proto_cam over the stored channels [0, present classes].
2. Foreground pass: argmax F -> CRF -> fg_conf (class ids).
3. Background pass: F_0 x 0.5 -> argmax -> CRF -> bg_conf.
4. Label = fg_conf where it is a class; 0 where both passes say background; 255 (ignore) where only the
   background-suppressed pass finds foreground.
Runs on --ir_crf_workers CPU processes (each reads its CAMs and image, runs both CRFs and writes the PNG);
images whose PNG is complete are skipped.
"""
import numpy as np
from tqdm import tqdm

from misc import camio, distributed
from misc.dataset import get_dataset
from misc.errors import BadInput
from misc.imutils import crf_inference_label
from misc.torchutils import explain_oom
from misc.workpool import Background, counted


def ir_label(img, cams, fuse_weight=0.7, bg_factor=0.5, ignore=255, **crf_kw):
    """(H,W) uint8: 0 background, class ids, `ignore` where uncertain."""
    keys = cams['keys']
    f = cams['cam'] + fuse_weight * cams['proto_cam']
    fg_conf = keys[crf_inference_label(img, np.argmax(f, 0), len(keys), **crf_kw)]
    f[0] *= bg_factor
    bg_conf = keys[crf_inference_label(img, np.argmax(f, 0), len(keys), **crf_kw)]
    conf = fg_conf.copy()
    conf[fg_conf == 0] = ignore
    conf[(fg_conf == 0) & (bg_conf == 0)] = 0
    return conf.astype(np.uint8)


def crf_kwargs(args):
    return dict(t=args.ir_crf_iters, gt_prob=args.ir_crf_gt_prob, gauss_sxy=args.ir_crf_gauss_sxy,
                gauss_compat=args.ir_crf_gauss_compat, bi_sxy=args.ir_crf_bi_sxy, bi_srgb=args.ir_crf_bi_srgb,
                bi_compat=args.ir_crf_bi_compat)


def _one(job):
    name, img_path, args = job
    from voc12.dataloader import read_image
    cams = camio.load_cam(camio.cam_path(args.cam_dir, name))
    img = read_image(img_path)
    if cams['cam'].shape[1:] != img.shape[:2]:
        raise BadInput(f'{name}: CAM size {cams["cam"].shape[1:]} differs from the image {img.shape[:2]}; '
                       f're-run make_cam for it')
    with explain_oom(f'cam_to_ir_label, image {name} ({img.shape[0]}x{img.shape[1]}, {len(cams["keys"])} labels)',
                     f'The dense CRF holds a few copies of H x W x labels floats per process: lower --ir_crf_workers '
                     f'(now {args.ir_crf_workers}; the labels do not change). Labels finished so far are kept; '
                     f're-running cam_to_ir_label continues after them.'):
        lab = ir_label(img, cams, args.ir_proto_weight, args.ir_bg_factor, **crf_kwargs(args))
    camio.write_label(camio.label_path(args.ir_label_dir, name), lab)
    return name


def run(args):
    ds = get_dataset(args).ImageDataset(args.infer_list, args.dataset_root)
    names = [ds.names[i] for i in camio.unfinished(ds.names, lambda n: camio.label_path(args.ir_label_dir, n),
                                                    camio.is_complete_label, args.ir_skip_existing)]
    distributed.check_list(len(ds), args.infer_list, '--infer_list')
    names = distributed.broadcast(names)  # rank 0's view of the work left; each rank then takes its share
    print(f'  {len(ds)} images in {args.infer_list}; {len(ds) - len(names)} already done, {len(names)} to do; '
          f'F = cam + {args.ir_proto_weight} proto_cam, bg x{args.ir_bg_factor}, CRF t={args.ir_crf_iters}')
    jobs = [(n, ds.image_path(n), args) for n in distributed.shard(names)]
    # a pool pays its workers' start (a second or two each): worth it from a few images per worker on
    workers = args.ir_crf_workers if len(jobs) >= 4 * args.ir_crf_workers else 1
    with Background(workers, 'process', ahead=4) as pool:
        for job in tqdm(counted(jobs), total=len(jobs), desc='cam_to_ir_label', dynamic_ncols=True, mininterval=5):
            pool.submit(_one, job)
    return {'n_images': len(ds), 'computed': len(names)}
