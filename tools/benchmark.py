"""Speed and memory of the heavy stages: prints numbers, asserts nothing.

    python tools/benchmark.py                                   # every stage on CPU, the authors' sizes
    python tools/benchmark.py --stages make_cam make_cam_unoptimised --threads 2
    python tools/benchmark.py --device cuda --amp none tf32 bf16 fp16   # images/s and peak GPU memory per precision

Each stage runs in a fresh subprocess, so that its peak memory is its own: the resident set (ru_maxrss) on CPU,
torch.cuda.max_memory_allocated on CUDA. Random weights are used (no download); the cost does not depend on the
weight values. Sizes are the authors': ResNet-50 at crop 512 with batch 16 + 4 bank images (SFC), batch 32
(IRN), 500x375 images with 4 scales x flip (make_cam), DeepLab-v2 ResNet-101 at crop 321 with batch 10.
`make_cam_unoptimised` computes what the authors' make_cam computes per image as they compute it (BatchNorm not
folded, NCHW, every channel upsampled, the prototype through an (n, 21, 768, h, w) tensor): the reference the
optimised `make_cam` is compared with.
"""
import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from misc import microbench  # noqa: E402
from misc.microbench import _timed, _timed_part, crf_available  # noqa: E402,F401  (the stages' timing, tested)


# --- the authors' make_cam, for comparison (not a stage the planner needs) -------------------------------------
def authors_prototype(norm_cam, feature, mask, bg_factor=None, cos_eps=None):
    """The prototype CAM as the authors compute it (docs/faithfulness §2.6): the masked features materialised as
    (n, C, D, h, w), pooled, and a broadcast cosine over (n, C, D, h, w). Tested against the authors' outputs (the
    prototype fixture), as net.resnet50_sfc.prototype_cam is; used to time the authors' make_cam and as
    tools/cam_fidelity.py's reference."""
    import torch.nn.functional as F
    from net.resnet50_sfc import COS_EPS, PROTO_BG_FACTOR, prototype_seeds
    bg_factor = PROTO_BG_FACTOR if bg_factor is None else bg_factor
    cos_eps = COS_EPS if cos_eps is None else cos_eps
    seeds = prototype_seeds(norm_cam, mask, bg_factor)
    proto = F.adaptive_avg_pool2d(seeds.unsqueeze(2) * feature.unsqueeze(1), 1)  # (n, C, D, 1, 1)
    return F.relu(F.cosine_similarity(feature.unsqueeze(1), proto, dim=2, eps=cos_eps))


def stage_make_cam_unoptimised(a):
    return microbench.make_cam_stage(a, False, authors_prototype)


STAGES = dict(microbench.STAGES, make_cam_unoptimised=stage_make_cam_unoptimised)
DEFAULT_STAGES = [s for s in STAGES if s not in ('make_cam_unoptimised', 'make_seg_crf')]
# seconds one run of a stage (a fresh process: start, model, warm-up and --repeats runs) may take on a GPU; on the
# CPU there is no limit unless --timeout is given
GPU_LIMITS = {'train_step': 90, 'make_cam': 60, 'make_cam_unoptimised': 90, 'cam_to_ir_label': 60,
              'train_irn_step': 90, 'make_sem_seg': 60, 'train_seg_step': 120, 'make_seg': 90, 'make_seg_crf': 60}
NO_NETWORK = microbench.CRF_STAGES  # CPU-only stages: measured once, not per precision


def get_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--stages', nargs='+', default=DEFAULT_STAGES, choices=list(STAGES))
    p.add_argument('--device', default='cpu', choices=('cpu', 'cuda'))
    p.add_argument('--amp', nargs='+', default=['none'], choices=('none', 'tf32', 'bf16', 'fp16'),
                   help='precisions to measure each stage in')
    p.add_argument('--channels_last', default='auto', choices=('auto', 'True', 'False'))
    p.add_argument('--fold_bn', default=False, type=lambda v: v == 'True',
                   help='make_cam: fold BatchNorm (True/False; default False as --cam_fold_bn)')
    p.add_argument('--threads', type=int, default=0, help='torch threads (0 = torch default)')
    p.add_argument('--nproc', type=int, nargs='+', default=[1],
                   help='processes for train_step (through torchrun, gradients summed as in training): e.g. 1 2')
    p.add_argument('--width', type=int, default=64, help='backbone width (64 = the real networks)')
    p.add_argument('--classes', type=int, default=20)
    p.add_argument('--crop', type=int, default=512)
    p.add_argument('--batch', type=int, default=16)
    p.add_argument('--bank', type=int, default=4)
    p.add_argument('--sfc_micro_batch', type=int, default=10)
    p.add_argument('--irn_batch', type=int, default=32)
    p.add_argument('--irn_micro_batch', type=int, default=8)
    p.add_argument('--seg_batch', type=int, default=10, help='train_seg images per update (the ImageNet recipe)')
    p.add_argument('--seg_crop', type=int, default=321)
    p.add_argument('--seg_micro_batch', type=int, default=5, help='0 = the whole batch in one pass')
    p.add_argument('--seg_depth', type=int, default=101)
    p.add_argument('--width_px', type=int, default=500)
    p.add_argument('--height', type=int, default=375)
    p.add_argument('--scales', type=float, nargs='+', default=[1.0, 0.5, 1.5, 2.0])
    p.add_argument('--repeats', type=int, default=1)
    p.add_argument('--crf_images', type=int, default=12, help='make_seg_crf: images per timed run')
    p.add_argument('--crf_sizes', type=int, nargs=2, default=[300, 500], help='make_seg_crf: image sides drawn from')
    p.add_argument('--crf_workers', type=int, nargs='+', default=[1, 2], help='make_seg_crf: CRF processes to compare')
    p.add_argument('--timeout', type=float, default=None,
                   help='seconds per run of a stage (default: GPU_LIMITS on CUDA, none on the CPU); a run past it is '
                        'reported as a timeout with what it printed')
    p.add_argument('--json', default=None, help='also write the results to this file')
    p.add_argument('--make_seg_crf', default=True, type=lambda v: v == 'True',
                   help="make_seg: also time its dense CRF on the CPU (False: the network alone; the CRF's rate "
                        'beside a GPU is the make_seg_crf stage)')
    p.add_argument('--one_process', default=False, type=lambda v: v == 'True',
                   help='True: the network stages of each precision in one process (one start-up; peak memory and '
                        'cuDNN autotuning reset between stages); False: each stage in its own process')
    p.add_argument('--_child', default=None, help=argparse.SUPPRESS)
    return p


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    a = get_parser().parse_args(argv)
    if a._child:
        return _child(a)
    import torch
    from misc.torchutils import environment_line
    print(environment_line(a.device))
    print(f'benchmark: threads {a.threads or torch.get_num_threads()}, channels_last {a.channels_last}, '
          f'width {a.width}, repeats {a.repeats}' + (', one process per precision' if a.one_process else ''))
    base = []
    for k, v in vars(a).items():  # every setting but the ones this loop varies
        if k not in ('stages', 'amp', 'json', '_child', 'nproc', 'crf_workers', 'timeout', 'one_process'):
            base += [f'--{k}', *(map(str, v) if isinstance(v, list) else [str(v)])]
    results = []
    runs = [((s,), amp, n, w) for s in a.stages for amp in (a.amp[:1] if s in NO_NETWORK else a.amp)
            for n in (a.nproc if s == 'train_step' else [1]) for w in (a.crf_workers if s == 'make_seg_crf' else [1])]
    if a.one_process:  # the network stages of one precision in one process (one start-up, one CUDA context)
        nets = tuple(s for s in a.stages if s not in NO_NETWORK)
        runs = [r for r in runs if r[0][0] in NO_NETWORK or (r[0][0] == 'train_step' and r[2] > 1)]
        runs = [(nets, amp, 1, 1) for amp in a.amp if nets] + runs
    for stages, amp, nproc, workers in runs:
        launch = [sys.executable] if nproc == 1 else [sys.executable, '-m', 'torch.distributed.run', '--standalone',
                                                      '--nproc_per_node', str(nproc)]
        limit = a.timeout or (sum(GPU_LIMITS[s] for s in stages) if a.device == 'cuda' else None)
        for r in run_stage([*launch, os.path.abspath(__file__), *base, '--_child', ','.join(stages), '--amp', amp,
                            '--crf_workers', str(workers)], limit, stages):
            r['amp'] = amp
            results.append(r)
            _report(r, amp, a.device)
            if a.json:  # after every stage, so that a run stopped by a time limit keeps what it measured
                with open(a.json, 'w') as f:
                    json.dump(results, f, indent=1)
    return results


def _child(a):
    """One process: the stages of a._child (comma-separated) in order, one JSON line each as it finishes (an error
    is reported for its stage and the next one runs). Peak memory and cuDNN autotuning are reset between stages."""
    import traceback

    import torch

    import run_sample
    from misc import distributed
    from misc.torchutils import setup_precision
    if a.threads:
        torch.set_num_threads(a.threads)
    a.device = distributed.init(a.device)
    a.amp, a.crf_workers = a.amp[0], a.crf_workers[0]
    a.run_args = run_sample.get_parser().parse_args([])  # the method's constants at their defaults
    setup_precision(a.amp, a.device)
    failed = False
    for s in a._child.split(','):
        microbench.reset_device_state(a.device)
        try:
            r = STAGES[s](a)
        except Exception as e:  # noqa: BLE001 - reported for this stage; the others still run
            traceback.print_exc()
            r, failed = {'stage': s, 'error': f'{type(e).__name__}: {str(e).splitlines()[0][:300]}'}, True
        r['key'] = s
        if distributed.is_main():
            print(json.dumps(r), flush=True)
    distributed.shutdown()
    if failed:
        sys.exit(1)


def _report(r, amp, device):
    if 'error' in r:
        print(f'{r["stage"]} ({amp}): {r["error"]}\n' + '\n'.join('    ' + line for line in r.get('stderr_tail', [])),
              flush=True)
        print(f'{r["stage"]} ({amp}): {r["error"]}', file=sys.stderr, flush=True)
        return
    extra = f', image bank {r["bank_mb"]:.0f} MB' if 'bank_mb' in r else ''
    extra += f' (random walks {r["walk_s"]:.2f} s)' if 'walk_s' in r else ''
    if r.get('crf_s') is not None:
        extra += f' (CRF {r["crf_s"]:.2f} s = {100 * r["crf_s"] / r["seconds"]:.0f}%)'
    mem = 'peak GPU memory (allocated)' if device == 'cuda' else 'peak RSS'
    print(f'{r["stage"]} [amp {amp}]: {r["seconds"]:.3f} s {r["unit"]}, {r["images_per_s"]:.2f} images/s, '
          f'{mem} {r["peak_mb"] / 1024:.2f} GB{extra}', flush=True)


def run_stage(cmd, limit, stages):
    """The stages run in one process: a result per stage, or {'stage', 'error': why, 'exit_status', 'stderr_tail'}
    for each stage that failed, was cut by the time limit or never started (the results of those that finished
    are kept)."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=limit)
        stdout, stderr, rc, why = out.stdout, out.stderr, out.returncode, None
    except subprocess.TimeoutExpired as e:
        text = [x.decode(errors='replace') if isinstance(x, bytes) else (x or '') for x in (e.stdout, e.stderr)]
        stdout, stderr, rc, why = text[0], text[1], None, f'stopped at its time limit of {limit:.0f} s'
    done = []
    for line in stdout.strip().splitlines():
        if line.startswith('{'):
            try:
                done.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    tail = stderr.strip().splitlines()[-15:]
    for r in done:
        if 'error' in r:  # raised inside the child, which went on with its next stage
            r.update(error=f'failed with exit status {rc}: {r["error"]}', exit_status=rc, stderr_tail=tail)
    seen = {r.get('key') for r in done}
    for s in stages:
        if s not in seen:
            done.append({'stage': s, 'key': s, 'error': why or f'failed with exit status {rc} before it finished',
                         'exit_status': rc, 'stderr_tail': tail})
    return done


if __name__ == '__main__':
    sys.exit(1 if any('error' in r for r in main() or []) else 0)  # a stage that failed or was cut: exit status 1
