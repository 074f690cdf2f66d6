"""Image Bank Re-sampling (docs/faithfulness §3.4, §3.5 steps 2-4): one slot per class, kept on the training device.

Each slot holds the latest training crop that contains its class (image, one-channel crop mask, full
multi-hot label); slots never filled hold zeros (all-zero image, mask and label), as in the authors' code.
The authors keep the bank on the host and copy all of it to the GPU every step (~500 MB for VOC); here
it lives on the device and only the sampled rows are gathered.
"""
import torch

from misc.errors import BadInput


class ImageBank:
    def __init__(self, n_classes, crop_size, device):
        self.n = n_classes
        self.img = torch.zeros(n_classes, 3, crop_size, crop_size, device=device)
        self.mask = torch.zeros(n_classes, crop_size, crop_size, dtype=torch.uint8, device=device)
        self.label = torch.zeros(n_classes, n_classes, device=device)

    def update(self, img, mask, label):
        """Rows in order; for every class a later row containing it overwrites an earlier one. Computed without a
        host sync (no data-dependent shapes): every slot gathers the row that fills it, and keeps its old contents
        where no row of the batch has its class."""
        present = label > 0  # (B, n)
        rows = torch.arange(1, label.shape[0] + 1, device=label.device)[:, None] * present  # 1-based, 0 = absent
        last = rows.max(dim=0).values  # (n,)
        filled = last > 0
        src = (last - 1).clamp_min(0)
        self.img.copy_(torch.where(filled.view(-1, 1, 1, 1), img[src].to(self.img.dtype), self.img))
        self.mask.copy_(torch.where(filled.view(-1, 1, 1), mask[src].to(torch.uint8), self.mask))
        self.label.copy_(torch.where(filled.view(-1, 1), label[src].to(self.label.dtype), self.label))

    def sample(self, k, generator):
        """k slot indices, uniform over classes with replacement (the authors' random.randint(0, 19) x 4)."""
        idx = torch.randint(0, self.n, (k,), generator=generator).to(self.img.device)
        return self.img[idx], self.mask[idx], self.label[idx]

    def state_dict(self):
        return {'img': self.img, 'mask': self.mask, 'label': self.label}

    def load_state_dict(self, sd):
        for k in ('img', 'mask', 'label'):
            if tuple(sd[k].shape) != tuple(getattr(self, k).shape):
                raise BadInput(f'image bank {k}: saved shape {tuple(sd[k].shape)} differs from '
                               f'{tuple(getattr(self, k).shape)} (crop size or class count changed)')
            getattr(self, k).copy_(sd[k])

    def nbytes(self):
        return sum(t.numel() * t.element_size() for t in (self.img, self.mask, self.label))
