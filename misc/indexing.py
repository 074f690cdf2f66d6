"""PathIndex, IRN affinity labels and the random walk (docs/faithfulness §7.2, §7.3, §8.3).

The authors' random walk builds the dense n x n transition matrix T (n = pixels of the stride-4 map,
552 MB for a 500x375 image) and squares it 8 times (O(n^3)). Here x T^256 is applied as 256 sparse
propagation steps x <- x T (T has at most 69 non-zeros per column: the radius-5 neighbourhood and
the pixel itself), so memory is O(n) and time O(256 n). `random_walk_dense` keeps the authors'
formulation for the tests.
"""
import functools
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from misc.errors import BadInput


class PathIndex:
    """Search directions within `radius` (the forward half-plane), the pixels on the path to each, and
    flat indices of every (source, path point) on a (H, W) grid (SIPE/tool/indexing.py:6-88)."""

    def __init__(self, radius, default_size):
        self.radius = int(radius)
        self.radius_floor = int(np.ceil(radius) - 1)
        self.search_paths, self.search_dst = self._search_paths_dst(self.radius)
        self.path_indices, self.src_indices, self.dst_indices = self.indices(default_size)

    @staticmethod
    def _search_paths_dst(max_radius):
        dirs = [(0, x) for x in range(1, max_radius)]
        dirs += [(y, x) for y in range(1, max_radius) for x in range(-max_radius + 1, max_radius)
                 if x * x + y * y < max_radius ** 2]
        by_length = {}
        for dy, dx in dirs:
            length_sq = dy * dy + dx * dx
            coords = [[y, x] for y in range(min(0, dy), max(0, dy) + 1) for x in range(min(0, dx), max(0, dx) + 1)
                      if (dy * x - dx * y) ** 2 / length_sq < 1]
            coords.sort(key=lambda c: -abs(c[0]) - abs(c[1]))  # stable: d itself first, (0, 0) last
            by_length.setdefault(len(coords), []).append(coords)
        paths = [np.asarray(by_length[k], dtype=np.int64) for k in sorted(by_length)]
        dst = np.concatenate([p[:, 0] for p in paths], axis=0)
        return paths, dst

    def indices(self, size):
        h, w = int(size[0]), int(size[1])
        r = self.radius_floor
        full = np.arange(h * w, dtype=np.int64).reshape(h, w)
        ch, cw = h - r, w - 2 * r
        if ch <= 0 or cw <= 0:
            raise BadInput(f'a {h}x{w} map is too small for radius {self.radius} (needs width > {2 * r})')
        path_indices = []
        for paths in self.search_paths:
            path_indices.append(np.stack([np.stack([full[dy:dy + ch, r + dx:r + dx + cw].reshape(-1) for dy, dx in p])
                                          for p in paths]))
        src = full[:ch, r:r + cw].reshape(-1)
        dst = np.concatenate([p[:, 0] for p in path_indices], axis=0)
        return path_indices, src, dst


def affinity_labels(label, src_indices, dst_indices, n_classes):
    """bg_pos, fg_pos, neg (n_dirs, n_src) float32 from a reduced label map (255 or >= n_classes = ignore)."""
    flat = np.asarray(label).reshape(-1)
    a = flat[src_indices][None, :]
    b = flat[dst_indices]
    valid = (a < n_classes) & (b < n_classes)
    eq = a == b
    pos = eq & valid
    return (pos & (a == 0)).astype(np.float32), (pos & (a > 0)).astype(np.float32), \
        (~eq & valid).astype(np.float32)


class _PathMax(torch.autograd.Function):
    """max over path positions of edge[:, ind[d, l, s]] -> (n, dirs, src), keeping only a running maximum and a
    uint8 arg-position (not the (n, dirs, L, src) gather: 3.3 GB at IRN's batch 32, crop 512). The gradient goes
    to the first maximal path pixel, as max-pooling routes it."""

    @staticmethod
    def forward(ctx, edge, ind):
        best = arg = None
        for pos in range(ind.shape[1]):
            v = edge[:, ind[:, pos, :]]
            if best is None:
                best = v
                arg = torch.zeros(v.shape, dtype=torch.uint8, device=v.device)
            else:
                better = v > best
                best = torch.where(better, v, best)
                arg.masked_fill_(better, pos)
        ctx.save_for_backward(ind, arg)
        ctx.n_pix = edge.shape[1]
        return best

    @staticmethod
    def backward(ctx, grad):
        ind, arg = ctx.saved_tensors
        n = grad.shape[0]
        chosen = torch.gather(ind.unsqueeze(0).expand(n, -1, -1, -1), 2, arg.long().unsqueeze(2)).squeeze(2)
        out = torch.zeros(n, ctx.n_pix, dtype=grad.dtype, device=grad.device)
        out.scatter_add_(1, chosen.reshape(n, -1), grad.reshape(n, -1))
        return out, None


def path_affinity(edge, path_indices):
    """aff(d, s) = 1 - max of `edge` along the path of direction d from source s (docs/faithfulness §7.4, §8.3).
    edge (n, H*W) or (n, 1, H, W); path_indices: list of LongTensors (n_dirs_g, L_g, n_src) -> (n, n_dirs, n_src)."""
    edge = edge.reshape(edge.shape[0], -1)
    return torch.cat([1 - _PathMax.apply(edge, ind) for ind in path_indices], dim=1)


@functools.lru_cache(maxsize=8)
def _padded_grid(h, w, radius, device):
    """The PathIndex of the padded (h + r, w + 2r) grid of propagate_to_edge, its index arrays on the device, and
    the sources / destinations as real pixel indices (-1 on the padding). Cached for the 8 latest map sizes (most
    images of a dataset share a few sizes; a 500x375 image's arrays take ~13 MB): the arrays cross to the device
    once per size, not once per image."""
    path_index = PathIndex(radius, (h + radius, w + 2 * radius))
    dev = torch.device(device)
    inds = [torch.from_numpy(p).to(dev) for p in path_index.path_indices]
    hp, wp = h + radius, w + 2 * radius
    real = torch.full((hp * wp,), -1, dtype=torch.long, device=dev)  # padded flat index -> real pixel index
    real.view(hp, wp)[:h, radius:radius + w] = torch.arange(h * w, device=dev).view(h, w)
    src = real[torch.from_numpy(path_index.src_indices).to(dev)]
    dst = real[torch.from_numpy(path_index.dst_indices).to(dev)]
    return path_index, inds, src, dst


def _walk_setup(edge, radius):
    """The padded grid, its PathIndex and the per-(direction, source) affinities of propagate_to_edge."""
    h, w = edge.shape[-2:]
    path_index, inds, _, _ = _padded_grid(int(h), int(w), int(radius), str(edge.device))
    edge_padded = F.pad(edge.reshape(1, 1, h, w), (radius, radius, 0, radius), mode='constant', value=1.0)
    aff = path_affinity(edge_padded, inds)[0]  # (n_dirs, n_src)
    return path_index, aff


def transition_matrix_sparse(edge, radius=5, beta=10):
    """T^T as a sparse CSR tensor (n x n, n = h*w): row j holds T_ij = A_ij^beta / sum_i' A_i'j^beta, where
    A_ij = 1 - max edge on the path between pixels i and j within the radius, A_ii = 1 (docs/faithfulness §8.3)."""
    h, w = edge.shape[-2:]
    dev = edge.device
    _, aff = _walk_setup(edge, radius)
    _, _, src, dst = _padded_grid(int(h), int(w), int(radius), str(dev))
    src = src.expand(aff.shape[0], -1)
    keep = (src >= 0) & (dst >= 0)
    s, d, a = src[keep], dst[keep], aff[keep].pow(beta)
    n = h * w
    eye = torch.arange(n, device=dev)
    rows = torch.cat([d, s, eye])  # row j of T^T = column j of T
    cols = torch.cat([s, d, eye])
    vals = torch.cat([a, a, torch.ones(n, device=dev, dtype=a.dtype)])  # A_ii = 1, 1^beta = 1
    colsum = torch.zeros(n, device=dev, dtype=a.dtype).index_add_(0, rows, vals)
    vals = vals / colsum[rows]
    order = torch.argsort(rows * n + cols)  # pairs are unique: no duplicates to merge
    crow = torch.zeros(n + 1, dtype=torch.long, device=dev)
    crow[1:] = torch.cumsum(torch.bincount(rows, minlength=n), 0)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # "sparse CSR support is in beta"
        return torch.sparse_csr_tensor(crow, cols[order], vals[order], (n, n), check_invariants=False)


def propagate(tt, x, steps):
    """x (C,h,w) -> x T^steps, with tt = T^T from transition_matrix_sparse."""
    c, h, w = x.shape
    y = x.reshape(c, h * w).t().contiguous()  # (n, C)
    for _ in range(steps):
        y = torch.sparse.mm(tt, y)
    return y.t().reshape(c, 1, h, w)


def random_walk(x, edge, radius=5, beta=10, exp_times=8):
    """propagate_to_edge: x (C,h,w) >= 0, edge (1,h,w) in [0,1] -> (C,1,h,w) = (x (1 - edge)) T^(2^exp_times)."""
    return propagate(transition_matrix_sparse(edge, radius, beta), x * (1 - edge), 2 ** int(exp_times))


def random_walk_dense(x, edge, radius=5, beta=10, exp_times=8):
    """The authors' dense formulation (n x n matrix squared exp_times times); small maps only (tests)."""
    c, h, w = x.shape
    path_index, aff = _walk_setup(edge, radius)
    hp, wp = h + radius, w + 2 * radius
    n_pad = hp * wp
    src = torch.from_numpy(path_index.src_indices).repeat(aff.shape[0])
    dst = torch.from_numpy(path_index.dst_indices).reshape(-1)
    a = aff.reshape(-1).cpu()
    eye = torch.arange(n_pad)
    idx = torch.cat([torch.stack([src, dst]), torch.stack([eye, eye]), torch.stack([dst, src])], dim=1)
    dense = torch.sparse_coo_tensor(idx, torch.cat([a, torch.ones(n_pad), a]), (n_pad, n_pad),
                                    check_invariants=False).to_dense()
    dense = dense.view(hp, wp, hp, wp)[:-radius, radius:-radius, :-radius, radius:-radius].reshape(h * w, h * w)
    t = dense.pow(beta)
    t = t / t.sum(dim=0, keepdim=True)
    for _ in range(int(exp_times)):
        t = t @ t
    xs = (x * (1 - edge)).reshape(c, h * w)
    return (xs @ t.to(xs.device)).reshape(c, 1, h, w), dense
