"""Picture panels: CAM overlays per class, label maps in the VOC palette."""
import numpy as np

from misc.imutils import colorize_label, overlay_heatmap


def cam_panels(img, cam, keys, gt=None, pred=None):
    """One RGB strip: image | GT | prediction | one overlay per foreground key (CAM scaled to [0, 1])."""
    panels = [img]
    if gt is not None:
        panels.append(colorize_label(gt))
    if pred is not None:
        panels.append(colorize_label(pred))
    for k in range(1, len(keys)):
        c = cam[k] / max(float(cam[k].max()), 1e-5)
        panels.append(overlay_heatmap(img, c))
    sep = np.full((img.shape[0], 2, 3), 255, np.uint8)
    out = []
    for p in panels:
        out += [p, sep]
    return np.concatenate(out[:-1], axis=1)
