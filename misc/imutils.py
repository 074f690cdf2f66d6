"""NumPy/PIL image operations with the authors' exact conventions (docs/faithfulness §1.4, §1.5)."""
import numpy as np
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # SIPE/data/data_voc.py:60
IMAGENET_STD = (0.229, 0.224, 0.225)  # SIPE/data/data_voc.py:60


def pil_resize(img, size, order):
    """Resize an HxW[xC] uint8 array to size (h, w); order 3 = bicubic, 0 = nearest (SIPE imutils.pil_resize)."""
    h, w = int(size[0]), int(size[1])
    if img.shape[:2] == (h, w):
        return img
    resample = {3: Image.BICUBIC, 1: Image.BILINEAR, 0: Image.NEAREST}[order]
    return np.array(Image.fromarray(img).resize((w, h), resample))  # writable (torch.from_numpy needs it)


def scaled_size(h, w, scale):
    """(round(h*s), round(w*s)) with NumPy's round-half-to-even, as the reference computes it."""
    return int(np.round(h * scale)), int(np.round(w * scale))


def pil_rescale(img, scale, order):
    return pil_resize(img, scaled_size(img.shape[0], img.shape[1], scale), order)


def resize_long(img, target_long):
    """Scale so that the longer side equals target_long (SIPE imutils.random_resize_long, bicubic)."""
    h, w = img.shape[:2]
    s = target_long / h if w < h else target_long / w
    return pil_rescale(img, s, 3)


def normalize(img, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """(x/255 - mean)/std per RGB channel, computed in float64 and stored float32."""
    x = img.astype(np.float64) / 255.
    return ((x - np.asarray(mean)) / np.asarray(std)).astype(np.float32)


def random_crop_box(rng, h, w, crop):
    """The authors' random_crop box rule (SIPE imutils.py:55-101): width drawn first, then height.

    Returns (cont_top, cont_bottom, cont_left, cont_right, img_top, img_bottom, img_left, img_right):
    the image window [img_top:img_bottom, img_left:img_right] goes to the container window.
    """
    w_space, h_space = w - crop, h - crop
    if w_space > 0:
        cont_left, img_left = 0, int(rng.integers(0, w_space + 1))
    else:
        cont_left, img_left = int(rng.integers(0, -w_space + 1)), 0
    if h_space > 0:
        cont_top, img_top = 0, int(rng.integers(0, h_space + 1))
    else:
        cont_top, img_top = int(rng.integers(0, -h_space + 1)), 0
    ch, cw = min(crop, h), min(crop, w)
    return (cont_top, cont_top + ch, cont_left, cont_left + cw, img_top, img_top + ch, img_left, img_left + cw)


def top_left_box(h, w, crop):
    ch, cw = min(crop, h), min(crop, w)
    return (0, ch, 0, cw, 0, ch, 0, cw)


def apply_crop(arr, box, crop, fill):
    """Paste arr[box image window] into a crop x crop container filled with `fill`."""
    ct, cb, cl, cr, it, ib, il, ir = box
    out = np.full((crop, crop) + arr.shape[2:], fill, dtype=arr.dtype)
    out[ct:cb, cl:cr] = arr[it:ib, il:ir]
    return out


def crop_valid_mask(box, crop):
    """uint8 (crop, crop): 1 where real image pixels were pasted (the authors' 21 identical channels, once)."""
    ct, cb, cl, cr = box[:4]
    m = np.zeros((crop, crop), dtype=np.uint8)
    m[ct:cb, cl:cr] = 1
    return m


def voc_palette(n=256):
    """The standard PASCAL VOC colour map (index bits spread over R, G, B)."""
    pal = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    return pal


def colorize_label(label, palette=None):
    palette = voc_palette() if palette is None else palette
    return palette[np.asarray(label, dtype=np.uint8)]


def overlay_heatmap(rgb, heat, alpha=0.5):
    """Blend an HxW heat map in [0,1] (jet-like colours) onto an RGB image."""
    h = np.clip(np.asarray(heat, dtype=np.float32), 0, 1)
    r = np.clip(1.5 - np.abs(4 * h - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * h - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * h - 1), 0, 1)
    color = np.stack([r, g, b], -1) * 255
    return (alpha * color + (1 - alpha) * rgb.astype(np.float32)).astype(np.uint8)


def crf_inference_label(img, labels, n_labels, t=12, gt_prob=0.7, gauss_sxy=3, gauss_compat=3, bi_sxy=50,
                        bi_srgb=5, bi_compat=10):
    """Dense CRF on a label map (SIPE/IRN imutils.crf_inference_label; docs/faithfulness §6): unary from labels with
    gt_prob, Gaussian and bilateral pairwise terms, t mean-field iterations -> argmax (H,W) int64."""
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_labels
    h, w = img.shape[:2]
    d = dcrf.DenseCRF2D(w, h, n_labels)
    d.setUnaryEnergy(unary_from_labels(labels, n_labels, gt_prob=gt_prob, zero_unsure=False))
    d.addPairwiseGaussian(sxy=gauss_sxy, compat=gauss_compat)
    d.addPairwiseBilateral(sxy=bi_sxy, srgb=bi_srgb, rgbim=np.ascontiguousarray(np.copy(img)), compat=bi_compat)
    q = d.inference(t)
    return np.argmax(np.array(q).reshape((n_labels, h, w)), axis=0)


def random_scale_factor(rng, low, high):
    """s = low + U[0,1) (high - low) (SIPE imutils.random_scale reads only the first two values)."""
    return low + rng.random() * (high - low)


def crf_inference_softmax(img, prob, t=10, pos_w=3, pos_xy_std=1, bi_w=4, bi_xy_std=67, bi_rgb_std=3):
    """Dense CRF on class probabilities (deeplab-pytorch libs/utils/crf.py DenseCRF; docs/deeplab.md): unary -log(prob)
    (pydensecrf's unary_from_softmax), Gaussian (pos_xy_std, pos_w) and bilateral (bi_xy_std, bi_rgb_std,
    bi_w) terms on the uint8 image, t mean-field iterations -> Q (C,H,W) float32."""
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax
    c, h, w = prob.shape
    d = dcrf.DenseCRF2D(w, h, c)
    d.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(np.asarray(prob, np.float32))))
    d.addPairwiseGaussian(sxy=pos_xy_std, compat=pos_w)
    d.addPairwiseBilateral(sxy=bi_xy_std, srgb=bi_rgb_std, rgbim=np.ascontiguousarray(img, dtype=np.uint8),
                           compat=bi_w)
    return np.array(d.inference(t), dtype=np.float32).reshape((c, h, w))
