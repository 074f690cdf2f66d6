import torch

from misc.image_bank import ImageBank
from misc.trainutils import epoch_order
from step.train_sfc import stride_masks


def test_later_rows_overwrite_and_empty_slots_stay_zero():
    bank = ImageBank(4, 8, 'cpu')
    img = torch.arange(3, dtype=torch.float32).view(3, 1, 1, 1).expand(3, 3, 8, 8).clone() + 1
    mask = torch.ones(3, 8, 8, dtype=torch.uint8)
    label = torch.tensor([[1., 1, 0, 0], [0, 1, 0, 0], [1, 0, 0, 0]])
    bank.update(img, mask, label)
    assert bank.img[0, 0, 0, 0] == 3  # class 0: rows 0 and 2 -> row 2 wins
    assert bank.img[1, 0, 0, 0] == 2  # class 1: rows 0 and 1 -> row 1
    assert torch.equal(bank.label[1], label[1])  # the full multi-hot label of that row
    assert bank.img[2].abs().sum() == 0 and bank.label[2].sum() == 0 and bank.mask[3].sum() == 0


def test_sampling_is_seeded_with_replacement_over_all_slots():
    bank = ImageBank(20, 4, 'cpu')
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    idx1 = torch.randint(0, 20, (400,), generator=g1)
    assert len(set(idx1.tolist())) == 20
    a = bank.sample(4, g2)
    assert a[0].shape == (4, 3, 4, 4) and a[1].shape == (4, 4, 4) and a[2].shape == (4, 20)


def test_bank_state_roundtrip():
    bank = ImageBank(3, 4, 'cpu')
    bank.update(torch.ones(1, 3, 4, 4), torch.ones(1, 4, 4), torch.tensor([[0., 1, 0]]))
    other = ImageBank(3, 4, 'cpu')
    other.load_state_dict(bank.state_dict())
    assert torch.equal(other.img, bank.img) and torch.equal(other.label, bank.label)


def test_stride_masks_equal_authors_21_channel_nearest():
    valid = torch.zeros(2, 64, 64, dtype=torch.uint8)
    valid[0, 5:40, 3:60] = 1
    valid[1] = 1
    label = torch.tensor([[1., 0, 1], [0, 1, 0]])
    ours = stride_masks(valid, label, 4)
    # the authors: 21 identical float channels, classes multiplied by the label, then nearest
    full = valid[:, None].float().expand(2, 4, 64, 64).clone()
    full[:, 1:] *= label[:, :, None, None]
    ref = torch.nn.functional.interpolate(full, size=(4, 4), mode='nearest')
    assert torch.equal(ours, ref)
    assert ours[0, 0].tolist()[0] == [0, 0, 0, 0] and ours[0, 0, 1, 1] == 1  # rows 16i: row 0 outside, 16 inside


def test_epoch_order_is_a_pure_function():
    assert epoch_order(10, 2, 50) == epoch_order(10, 2, 50)
    assert epoch_order(10, 2, 50) != epoch_order(10, 3, 50)
    assert sorted(epoch_order(10, 0, 50)) == list(range(50))


def test_sfc_micro_batches_give_the_full_batch_gradient():
    import argparse

    import numpy as np

    from misc.torchutils import PolyOptimizer
    from net import sfc_loss
    from net.resnet50_sfc import Net
    from step.train_sfc import sfc_step_gradients
    torch.manual_seed(0)
    net = Net(21, backbone_width=8).double()
    img = torch.randn(5, 3, 64, 64, dtype=torch.float64)
    valid = torch.ones(5, 64, 64, dtype=torch.uint8)
    valid[1, :, 40:] = 0
    label = (torch.rand(5, 20) < 0.2).double()
    label[0, 3] = 1
    w = sfc_loss.channel_weights(np.linspace(0.5, 1.5, 20)).double()
    bb, new = net.trainable_parameters()
    opt = PolyOptimizer([{'params': bb + new, 'lr': 0.1, 'weight_decay': 0}], 0.1, 0, 10)
    params = [p for p in bb + new if p.requires_grad]
    grads = []
    for mb in (0, 2):
        a = argparse.Namespace(sfc_micro_batch=mb, sfc_half_scale=0.5, sfc_pdw=True, sfc_wdw=True,
                               sfc_pdw_weight=1.6, sfc_wdw_weight=0.8)
        terms = sfc_step_gradients(net, img, valid, label, w, a, 4, 2, opt)
        grads.append(([p.grad.clone() for p in params], {k: v.item() for k, v in terms.items()}))
    for k in grads[0][1]:
        np.testing.assert_allclose(grads[1][1][k], grads[0][1][k], rtol=1e-10)
    for a, b in zip(grads[0][0], grads[1][0]):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-8, atol=1e-12)
