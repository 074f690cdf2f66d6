"""Which dataset package a run uses: voc12 or coco14 expose the same names (overrides, not forks)."""
import importlib

from misc.errors import BadInput

DATASETS = ('voc12', 'coco14')


def get_dataset(args_or_name):
    name = getattr(args_or_name, 'dataset', args_or_name)
    if name not in DATASETS:
        raise BadInput(f'--dataset must be one of {DATASETS}, got {name!r}')
    return importlib.import_module(f'{name}.dataloader')


def num_classes(args_or_name):
    """Classes including background (21 for VOC, 81 for COCO)."""
    return get_dataset(args_or_name).N_CAT + 1
