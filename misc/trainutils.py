"""Pieces both training steps share: a data order that is a pure function of (seed, epoch), so that a
resumed run sees exactly the batches of an uninterrupted one, and the loader that serves it."""
import torch


class _ListSampler(torch.utils.data.Sampler):
    def __init__(self, indices):
        self.indices = indices

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


def schedule(n_images, batch_size, epochs, list_path, batch_flag):
    """(steps per epoch, total steps) with drop_last batches; an error naming the flags when the list is
    shorter than one batch."""
    steps_per_epoch = n_images // batch_size
    if steps_per_epoch == 0:
        raise ValueError(f'--train_list {list_path} has {n_images} images, fewer than one batch '
                         f'({batch_flag} {batch_size})')
    return steps_per_epoch, steps_per_epoch * epochs


def epoch_order(seed, epoch, n):
    """The shuffled order of epoch `epoch`."""
    g = torch.Generator().manual_seed(int(seed) * 100003 + int(epoch))
    return torch.randperm(n, generator=g).tolist()


def epoch_batches(dataset, step, steps_per_epoch, batch_size, seed, num_workers, device):
    """Loader over the rest of the epoch that contains global step `step` (drop_last batches)."""
    epoch, within = divmod(step, steps_per_epoch)
    dataset.set_epoch(epoch)
    order = epoch_order(seed, epoch, len(dataset))[within * batch_size: steps_per_epoch * batch_size]
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=_ListSampler(order),
                                       num_workers=num_workers, pin_memory=device.type == 'cuda', drop_last=True)


def load_resume_state(path, max_step):
    """The saved training state, after checking it belongs to a run of the same length."""
    from misc.camio import load_checkpoint
    state = load_checkpoint(path)
    if int(state['max_step']) != max_step:
        raise ValueError(f'{path} was written for {state["max_step"]} steps, this run has {max_step}: '
                         f'delete it (or the work dir) to start afresh')
    return state
