import pytest
import torch

from misc.torchutils import PolyOptimizer, resolve_device


def test_poly_lr_curve():
    p = torch.nn.Parameter(torch.zeros(1))
    q = torch.nn.Parameter(torch.zeros(1))
    opt = PolyOptimizer([{'params': [p], 'lr': 0.1, 'weight_decay': 1e-4},
                         {'params': [q], 'lr': 1.0, 'weight_decay': 1e-4}], lr=0.1, weight_decay=1e-4, max_step=3966)
    assert opt.lr_at(0) == [0.1, 1.0]
    assert opt.lr_at(10)[0] == pytest.approx(0.1 * (1 - 10 / 3966) ** 0.9)
    assert round(opt.lr_at(10)[0], 4) == 0.0998  # the authors: lr printed at step 10 = 0.0998
    assert opt.param_groups[0]['momentum'] == 1e-4 and opt.param_groups[1]['momentum'] == 1e-4


def test_poly_update_uses_momentum_1e4_and_weight_decay():
    w = torch.nn.Parameter(torch.tensor([2.0]))
    opt = PolyOptimizer([{'params': [w], 'lr': 0.5, 'weight_decay': 0.1}], lr=0.5, weight_decay=0.1, max_step=4)
    grads = [1.0, 3.0]
    buf, x = None, 2.0
    for g, step in zip(grads, range(2)):
        w.grad = torch.tensor([g])
        opt.step()
        lr = 0.5 * (1 - step / 4) ** 0.9
        d = g + 0.1 * x
        buf = d if buf is None else 1e-4 * buf + d
        x = x - lr * buf
        assert w.item() == pytest.approx(x, rel=1e-6)
    assert opt.global_step == 2


def test_poly_state_roundtrip():
    w = torch.nn.Parameter(torch.tensor([1.0]))
    opt = PolyOptimizer([{'params': [w], 'lr': 0.1, 'weight_decay': 0}], lr=0.1, weight_decay=0, max_step=10)
    w.grad = torch.tensor([1.0])
    opt.step()
    sd = opt.state_dict()
    opt2 = PolyOptimizer([{'params': [w], 'lr': 0.1, 'weight_decay': 0}], lr=0.1, weight_decay=0, max_step=10)
    opt2.load_state_dict(sd)
    assert opt2.global_step == 1 and opt2.lr_at(1) == opt.lr_at(1)


def test_resolve_device():
    assert resolve_device('cpu') == 'cpu'
    assert resolve_device('auto') in ('cpu', 'cuda')
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match='--device cuda'):
            resolve_device('cuda')
