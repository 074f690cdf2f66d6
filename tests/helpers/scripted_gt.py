"""Test helper: train_sfc's validation on GT gives scripted scores by training step, so that a test knows which
step --sfc_select_on_gt must select. The real validation still runs (its per-class table is printed as usual); only
the two mIoUs are replaced, each by half the scripted score of the step just taken. In-process: install(scores);
under torchrun: run this file in place of run_sample.py with SFC_TEST_GT_SCORES='1:0.9,5:0.5' (step:score)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def install(scores, patch=setattr):
    """scores: {step: cam mIoU + proto_cam mIoU}; patch: setattr, or a test's monkeypatch.setattr (which undoes
    it)."""
    from misc.torchutils import PolyOptimizer
    from step import train_sfc
    real_validate, real_step = train_sfc.validate, PolyOptimizer.step
    taken = {'step': None}

    def step(self, closure=None):
        out = real_step(self, closure)
        taken['step'] = self.global_step  # the step the training loop validates after
        return out

    def validate(model, dataset, device, eps=1e-5, amp='none'):
        s = real_validate(model, dataset, device, eps, amp)
        half = scores[taken['step']] / 2
        return {k: dict(v, miou=half) for k, v in s.items()}

    patch(PolyOptimizer, 'step', step)
    patch(train_sfc, 'validate', validate)


def from_env():
    return {int(k): float(v) for k, v in (p.split(':') for p in os.environ['SFC_TEST_GT_SCORES'].split(','))}


if __name__ == '__main__':  # as run_sample.py's own entry point
    if int(os.environ.get('RANK', 0)) > 0:
        os.environ.setdefault('TQDM_DISABLE', '1')
    install(from_env())
    import run_sample
    from misc.errors import cli
    cli(run_sample.main, sys.argv[1:])
