import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
FIXTURES = os.path.join(ROOT, 'tests', 'fixtures')  # carried by the repository (README.md there says where from)
# which reference produced each golden file (the rest: the SFC authors' code)
DEEPLAB_PYTORCH = ('deeplab_v2', 'deeplab_crf')
_GOLDEN = {'passed': {}, 'failed': {}}  # reference -> {test id: fixture names}


def golden_source(name):
    return 'deeplab-pytorch' if name in DEEPLAB_PYTORCH else "the SFC authors' code"


@pytest.fixture
def fixture(request):
    """fixture('pcm') -> dict of arrays of tests/fixtures/pcm.npz. A missing file is a failure, never a skip; the
    test is counted as a golden comparison in the summary line at the end of the run."""
    def load(name):
        path = os.path.join(FIXTURES, name + '.npz')
        if not os.path.isfile(path):
            pytest.fail(f'golden fixture {path} is missing from the repository (tests/fixtures/README.md)')
        props = request.node.user_properties  # carried by every report of the test, to the xdist controller too
        names = set(dict(props).get('golden', ())) | {name}
        props[:] = [p for p in props if p[0] != 'golden'] + [('golden', sorted(names))]
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    return load


def pytest_runtest_logreport(report):
    """Counts golden comparisons where the summary is written: in the one process, or in xdist's controller (its
    workers send each report with its user_properties)."""
    names = dict(report.user_properties).get('golden')
    if names and (report.when == 'call' or report.failed):
        kind = 'passed' if report.passed else 'failed' if report.failed else None
        if kind:
            for src in {golden_source(n) for n in names}:
                _GOLDEN[kind].setdefault(src, {})[report.nodeid] = set(names)


def pytest_terminal_summary(terminalreporter):
    passed, failed = _GOLDEN['passed'], _GOLDEN['failed']
    if not passed and not failed:
        return
    for src in failed:  # a test that passed its call but failed in teardown counts as failed
        for nodeid in failed[src]:
            passed.get(src, {}).pop(nodeid, None)

    def part(src):
        tests = passed.get(src, {})
        files = set().union(*tests.values()) if tests else set()
        return f'{len(tests)} against {src} ({len(files)} fixture files)'
    sources = ["the SFC authors' code", 'deeplab-pytorch']
    n_failed = sum(len(v) for v in failed.values())
    terminalreporter.write_line(f'golden comparisons: {" and ".join(part(s) for s in sources)} ran and passed'
                                + (f'; {n_failed} FAILED' if n_failed else ''))


def _global_state():
    import torch
    return {'torch threads': torch.get_num_threads(), 'default dtype': torch.get_default_dtype(),
            'grad enabled': torch.is_grad_enabled(), 'cwd': os.getcwd(),
            'deterministic algorithms': torch.are_deterministic_algorithms_enabled(),
            'cudnn.benchmark': torch.backends.cudnn.benchmark, 'cudnn.deterministic': torch.backends.cudnn.deterministic,
            'cudnn conv precision': torch.backends.cudnn.conv.fp32_precision,
            'environment': {k: v for k, v in os.environ.items() if k.startswith(('SFC_', 'OMP_', 'TQDM_'))}}


@pytest.fixture(autouse=True)
def no_global_state_left_behind():
    """A test that changes process-wide state (threads, dtype, cwd, cuDNN flags, SFC_* variables) and does not put
    it back fails, and the state is restored, so that no test runs under what an earlier one left."""
    import torch
    before = _global_state()
    yield
    after = _global_state()
    if after != before:
        changed = {k: (before[k], after[k]) for k in before if before[k] != after[k]}
        torch.set_num_threads(before['torch threads'])
        torch.set_default_dtype(before['default dtype'])
        torch.set_grad_enabled(before['grad enabled'])
        os.chdir(before['cwd'])
        torch.use_deterministic_algorithms(before['deterministic algorithms'])
        torch.backends.cudnn.benchmark = before['cudnn.benchmark']
        torch.backends.cudnn.deterministic = before['cudnn.deterministic']
        torch.backends.cudnn.conv.fp32_precision = before['cudnn conv precision']
        for k in set(before['environment']) | set(after['environment']):
            if k in before['environment']:
                os.environ[k] = before['environment'][k]
            else:
                os.environ.pop(k, None)
        pytest.fail(f'the test changed global state and left it so: {changed}')


@pytest.fixture(scope='session')
def tiny_voc(tmp_path_factory):
    """A small synthetic VOC root plus its lists/labels (built by our own commands)."""
    from voc12.make_cls_labels import build
    from voc12.synthetic import make_synthetic_voc
    base = tmp_path_factory.mktemp('tiny_voc')
    root = str(base / 'VOC2012')
    make_synthetic_voc(root, n_train=12, n_val=6, n_aug=10, seed=3, min_size=50, max_size=90)
    meta = str(base / 'meta')
    build(root, meta)
    return {'root': root, 'meta': meta, 'base': str(base)}
