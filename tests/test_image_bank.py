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


def test_update_matches_the_authors_loop_on_random_batches():
    """The authors' update, written as their loop (for every row in order, for every class it contains: that
    slot <- the row's crop, mask and full label), against ours on random batches with overlapping classes."""
    g = torch.Generator().manual_seed(0)
    n, crop = 6, 4
    bank = ImageBank(n, crop, 'cpu')
    slots = {'img': torch.zeros(n, 3, crop, crop), 'mask': torch.zeros(n, crop, crop, dtype=torch.uint8),
             'label': torch.zeros(n, n)}
    for _ in range(5):
        rows = 5
        img = torch.randn(rows, 3, crop, crop, generator=g)
        mask = (torch.rand(rows, crop, crop, generator=g) < 0.7).to(torch.uint8)
        label = (torch.rand(rows, n, generator=g) < 0.3).float()
        for i in range(rows):  # the authors' loop (SFC/train_resnet50_SFC.py:149-153)
            for k in range(n):
                if label[i, k] == 1:
                    slots['img'][k], slots['mask'][k], slots['label'][k] = img[i], mask[i], label[i]
        bank.update(img, mask, label)
        for key, want in slots.items():
            assert torch.equal(getattr(bank, key), want), key


def test_sampling_draws_every_slot_uniformly_with_replacement_from_the_seed():
    """bank.sample(k, generator) returns the rows of k slots drawn uniformly over all n slots with replacement
    (the authors: random.randint(0, 19) four times), the slots being the generator's draws: the same seed gives the
    same slots. Each slot holds a crop whose value is its own index, so the returned crops name the slots."""
    n, k = 20, 4
    bank = ImageBank(n, 2, 'cpu')
    ids = torch.arange(n, dtype=torch.float32)
    bank.update(ids.view(n, 1, 1, 1).expand(n, 3, 2, 2).clone(), torch.ones(n, 2, 2), torch.eye(n))

    def slots(img):
        return img[:, 0, 0, 0].long().tolist()
    g = torch.Generator().manual_seed(3)
    drawn = [s for _ in range(500) for s in slots(bank.sample(k, g)[0])]
    counts = torch.bincount(torch.tensor(drawn), minlength=n).double()
    assert (counts > 0).all(), 'some slots are never drawn'
    expected = len(drawn) / n
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 43.8, chi2  # 19 degrees of freedom, p = 0.001
    first = [slots(bank.sample(k, torch.Generator().manual_seed(s))[0]) for s in (3, 3, 4)]
    assert first[0] == first[1] != first[2]
    assert first[0] == torch.randint(0, n, (k,), generator=torch.Generator().manual_seed(3)).tolist()
    img, mask, label = bank.sample(k, torch.Generator().manual_seed(3))
    assert torch.equal(label, torch.eye(n)[first[0]]) and mask.shape == (k, 2, 2)
    assert len(set(drawn)) == n and any(len(set(drawn[i:i + k])) < k for i in range(0, len(drawn), k))  # repeats


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
    assert epoch_order(10, 2, 50) != epoch_order(11, 2, 50)  # --seed changes the data order
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
