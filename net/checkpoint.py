"""Strict state-dict loading with errors that name the offending tensors (docs/faithfulness §2.8)."""
import re

import torch

from misc.errors import BadInput


def unwrap_state_dict(obj):
    """Accepts {'net': sd}, {'state_dict': sd}, {'model': sd} or a plain sd; strips DataParallel's 'module.'."""
    sd = obj
    for key in ('net', 'state_dict', 'model'):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
            break
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise BadInput('checkpoint does not hold a state dict of tensors')
    return {(k[7:] if k.startswith('module.') else k): v for k, v in sd.items()}


def load_strict(model, sd, source='checkpoint', ignored=(), fresh=()):
    """Load sd into model; every model tensor must be present with its shape, and every sd key used
    (apart from those in `ignored`). Raises ValueError naming missing, unexpected and mis-shaped keys.
    Model tensors whose key starts with a prefix in `fresh` may be absent (they keep their initialisation,
    e.g. a new head), as may BatchNorm's `num_batches_tracked` counters, which files saved before
    PyTorch 0.4.1 lack (torchvision's resnet50-19c8e357.pth) and which no forward pass reads."""
    own = model.state_dict()
    optional = [k for k in own if k not in sd and (k.startswith(tuple(fresh)) or k.endswith('.num_batches_tracked'))]
    missing = [k for k in own if k not in sd and k not in optional]
    unexpected = [k for k in sd if k not in own and k not in ignored]
    shaped = [f'{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}'
              for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shaped:
        msg = [f'{source} does not match the network:']
        if missing:
            msg.append(f'  missing tensors ({len(missing)}): {", ".join(missing[:8])}' + (' ...' if len(missing) > 8 else ''))
        if unexpected:
            msg.append(f'  unexpected tensors ({len(unexpected)}): {", ".join(unexpected[:8])}' + (' ...' if len(unexpected) > 8 else ''))
        if shaped:
            msg.append(f'  mis-shaped tensors ({len(shaped)}): ' + '; '.join(shaped[:8]))
        raise BadInput('\n'.join(msg))
    model.load_state_dict({k: sd[k] if k in sd else own[k] for k in own}, strict=True)


def strip_aliases(sd, canonical_key, source='checkpoint', ignored=None):
    """Drop alias keys (canonical_key(k) != k) after checking that each aliases a real tensor of the same
    shape; drop keys matching `ignored` (a compiled regex). Returns the real tensors only."""
    out = {k: v for k, v in sd.items() if canonical_key(k) == k and not (ignored and ignored.match(k))}
    bad = []
    for k, v in sd.items():
        c = canonical_key(k)
        if c != k and (c not in out or tuple(out[c].shape) != tuple(v.shape)):
            bad.append(f'{k} (aliases {c}: ' + ('missing' if c not in out else
                                                 f'shape {tuple(out[c].shape)} vs {tuple(v.shape)}') + ')')
    if bad:
        raise BadInput(f'{source}: alias tensors without a matching real tensor: {"; ".join(bad[:6])}')
    return out


def alias_mapper(stem_stage, module_lists, singles=None):
    """canonical_key(key) for the authors' alias prefixes: `backbone.i` = stage{i + stem_stage},
    stage{stem}.0/.1 = resnet50.conv1/bn1, stage{stem + L}.0 = resnet50.layer{L}; `module_lists` maps a
    ModuleList name to the attributes it aliases in order; `singles` maps whole keys."""
    stem = re.compile(rf'stage{stem_stage}\.([01])\.(.*)')
    lists = {name: (re.compile(rf'{name}\.(\d+)\.(.*)'), targets) for name, targets in module_lists.items()}

    def canonical_key(key):
        m = re.match(r'backbone\.(\d+)\.(.*)', key)
        if m:
            key = f'stage{int(m.group(1)) + stem_stage}.{m.group(2)}'
        m = stem.match(key)
        if m:
            return ('resnet50.conv1.' if m.group(1) == '0' else 'resnet50.bn1.') + m.group(2)
        m = re.match(r'stage(\d+)\.0\.(.*)', key)
        if m and int(m.group(1)) > stem_stage:
            return f'resnet50.layer{int(m.group(1)) - stem_stage}.{m.group(2)}'
        for pattern, targets in lists.values():
            m = pattern.match(key)
            if m:
                return f'{targets[int(m.group(1))]}.{m.group(2)}'
        return (singles or {}).get(key, key)
    return canonical_key
