"""Post-processing of the nuclei network's maps into nuclei (:mod:`pathasst.tools.backends.nuclei_net` describes the
maps): HoVer-Net's marker watershed on the Sobel gradients of the HV maps (:func:`hover_instances`), the members'
vote of an ensemble (:func:`vote_instances`) and each nucleus's type (:func:`instance_types`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pathasst.core.imaging import fill_holes, open_disk

__all__ = [
    "EDGE_MODES",
    "PostParams",
    "hover_instances",
    "instance_types",
    "instances_from_maps",
    "vote_instances",
]


# ---- configuration -------------------------------------------------------------------------------------------------
EDGE_MODES = ("minmax", "absolute")


@dataclass
class PostParams:
    """HoVer post-processing: foreground threshold, HV smoothing (sigma, px), gradient threshold for markers,
    smallest marker and smallest nucleus (px at the model mpp), and how the gradient is scaled (``edge_mode``):

    * ``"minmax"`` (HoVer-Net's): ``1 - `` the Sobel gradient min-max normalised over the image; the threshold's
      meaning then depends on the image's extremes (a sparse tile and a dense one split differently);
    * ``"absolute"``: the negative Sobel gradient of the smoothed HV maps as it is (the maps have a fixed -1..1 scale
      per nucleus, so one threshold means the same on every image): positive and large only where the maps fall
      from +1 to -1, i.e. between two touching nuclei.

    ``unmarked_min_px``: a foreground component in which no marker survives (a small, pale or cut-off nucleus whose
    HV maps are flat) is dropped by the marker watershed; with ``unmarked_min_px`` > 0 such a component of at least
    that many pixels is kept as one nucleus instead (0 = drop them, HoVer-Net's behaviour).

    ``member_vote`` (ensembles only): 0 = the nuclei of the members' averaged maps; k >= 1 = each member's own maps
    are segmented as well (same parameters) and the nuclei kept are those that at least k of these n + 1
    predictions agree on (:func:`vote_instances`). Averaging the maps alone flattens the HV gradients between
    touching nuclei (a boundary one member sees sharply is half as sharp in the average); the vote keeps it.
    """

    np_threshold: float = 0.5
    hv_sigma: float = 2.0
    grad_threshold: float = 0.4
    min_marker_px: int = 10
    min_area_px: int = 20
    edge_mode: str = "minmax"
    unmarked_min_px: int = 0
    member_vote: int = 0


# ---- post-processing -----------------------------------------------------------------------------------------------
def _drop_small(labels: np.ndarray, min_px: int) -> np.ndarray:
    """``labels`` with objects of fewer than ``min_px`` pixels set to 0."""
    counts = np.bincount(labels.ravel())
    small = counts < min_px
    small[0] = False
    return np.where(small[labels], 0, labels)


def hover_instances(fg_prob: np.ndarray, hv: np.ndarray, post: PostParams | None = None) -> np.ndarray:
    """Instance labels (int32, 0 = background) from P(nucleus) ``(H, W)`` and HV maps ``(2, H, W)``."""
    from scipy import ndimage as ndi
    from skimage.segmentation import watershed

    p = post or PostParams()
    mask = fg_prob > p.np_threshold
    mask = fill_holes(mask)
    lab, n = ndi.label(mask)
    if n == 0:
        return np.zeros(fg_prob.shape, np.int32)
    mask = _drop_small(lab, p.min_area_px) > 0
    grads = []
    for c in range(2):
        m = hv[c].astype(np.float32)
        if p.hv_sigma > 0:
            m = ndi.gaussian_filter(m, p.hv_sigma)
        g = ndi.sobel(m, axis=1 - c)  # d(h)/dx, d(v)/dy: positive inside a nucleus, strongly negative between two
        if p.edge_mode == "absolute":
            grads.append(-g)
        else:
            grads.append(1.0 - (g - g.min()) / max(g.max() - g.min(), 1e-6))
    edge = np.maximum(grads[0], grads[1])
    edge = np.where(mask, edge, 0.0)
    markers = mask & (edge < p.grad_threshold)
    markers = open_disk(fill_holes(markers), 2)
    mlab, _ = ndi.label(markers)
    mlab = _drop_small(mlab, p.min_marker_px)
    if p.edge_mode == "absolute":
        surface = ndi.gaussian_filter(np.clip(edge, 0.0, None) * mask, 1.0)
    else:
        surface = -ndi.gaussian_filter((1.0 - edge) * mask, 1.0)
    labels = watershed(surface, mlab, mask=mask)
    labels = _drop_small(labels, p.min_area_px)
    if p.unmarked_min_px > 0:
        comp = np.where(mask, lab, 0)
        marked = np.zeros(n + 1, bool)
        marked[np.unique(comp[mlab > 0])] = True
        sizes = np.bincount(comp.ravel(), minlength=n + 1)
        keep = ~marked & (sizes >= p.unmarked_min_px)
        keep[0] = False
        ids = np.cumsum(keep) + labels.max()  # renumber the kept components after the watershed's labels
        labels = np.where(keep[comp], ids[comp], labels)
    return labels.astype(np.int32)


def vote_instances(label_maps: list[np.ndarray], min_support: int, min_area_px: int = 0,
                   iou: float = 0.5) -> np.ndarray:
    """Instance-level majority vote of several instance label maps of one image (e.g. an ensemble's members and
    their average): nuclei of different maps overlapping at IoU > ``iou`` are the same nucleus (connected
    components of that relation); a nucleus found by at least ``min_support`` of the maps is kept, and made of the
    pixels that at least half of the maps that found it cover. A pixel claimed by two kept nuclei goes to the one
    more of its maps cover there (as a share of its support; ties to the earlier map). Nuclei under ``min_area_px``
    pixels are dropped. The maps' ids need not be contiguous. Returns int32 labels 1..N (0 = background)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if not label_maps:
        raise ValueError("vote_instances needs at least one label map")
    shape = label_maps[0].shape
    if any(m.shape != shape for m in label_maps):
        raise ValueError(f"label maps differ in shape: {[m.shape for m in label_maps]}")
    n = len(label_maps)
    g = np.zeros((n, *shape), np.int32)  # ids made global: map i's nucleus j -> offset_i + j
    owner = [0]
    offset = 0
    for i, m in enumerate(label_maps):
        m = np.asarray(m)
        top = int(m.max(initial=0))
        if top > np.count_nonzero(m):  # ids with gaps (any label map): 1..N, so that global ids stay small
            from skimage.segmentation import relabel_sequential

            m = relabel_sequential(m)[0]
            top = int(m.max(initial=0))
        g[i] = np.where(m > 0, m.astype(np.int64) + offset, 0)
        owner += [i] * top
        offset += top
    if offset == 0:
        return np.zeros(shape, np.int32)
    owner_of = np.array(owner, np.int64)
    area = np.bincount(g.ravel(), minlength=offset + 1)
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    # overlapping pairs only (metrics.pairwise_overlap's dense N x M table would be ~200 MB per pair of maps on a
    # large region with thousands of nuclei)
    for i in range(n):
        for j in range(i + 1, n):
            both = (g[i] > 0) & (g[j] > 0)
            pair, inter = np.unique(g[i][both].astype(np.int64) * (offset + 1) + g[j][both], return_counts=True)
            a, b = pair // (offset + 1), pair % (offset + 1)
            same = inter / (area[a] + area[b] - inter) > iou
            rows.append(a[same])
            cols.append(b[same])
    r, c = np.concatenate(rows or [np.zeros(0, np.int64)]), np.concatenate(cols or [np.zeros(0, np.int64)])
    graph = coo_matrix((np.ones(len(r)), (r, c)), shape=(offset + 1, offset + 1))
    _, comp = connected_components(graph, directed=False)
    present = area > 0
    present[0] = False
    ids = np.flatnonzero(present)
    clusters, cluster_of_present = np.unique(comp[ids], return_inverse=True)
    cluster = np.full(offset + 1, -1, np.int32)
    cluster[ids] = cluster_of_present
    support = np.bincount(np.unique(cluster[ids].astype(np.int64) * n + owner_of[ids]) // n, minlength=len(clusters))
    cl = cluster[g]  # (n, H, W): the cluster each map's nucleus belongs to (-1: background)
    del g
    best = np.zeros(shape, np.float32)  # the winning share of votes so far, per pixel
    out = np.zeros(shape, np.int32)
    for i in range(n):  # map by map, so that memory stays at the n cluster maps plus a few images
        ci = cl[i]
        votes = np.zeros(shape, np.int16)
        for j in range(n):
            votes += cl[j] == ci
        sup = support[np.maximum(ci, 0)]
        share = np.where((ci >= 0) & (sup >= min_support) & (2 * votes >= sup), votes / np.maximum(sup, 1), 0.0)
        win = share > best  # ties stay with the earlier map
        out[win] = ci[win] + 1
        best[win] = share[win]
    if min_area_px > 0:
        out = _drop_small(out, min_area_px)
    kept = np.unique(out[out > 0])
    return np.where(out > 0, np.searchsorted(kept, out) + 1, 0).astype(np.int32)


def instances_from_maps(maps: np.ndarray, post: PostParams, n_type_channels: int) -> np.ndarray:
    """Instance labels of stitched maps: ``(3 + n_type_channels [+ 3 per member], H, W)`` = P(nucleus), H, V, the
    type probabilities, then (an ensemble loaded with ``post.member_vote``) each member's own P(nucleus), H, V."""
    base = 3 + n_type_channels
    averaged = hover_instances(maps[0], maps[1:3], post)
    if not post.member_vote:
        return averaged
    extra = maps.shape[0] - base
    if extra <= 0 or extra % 3:
        raise ValueError(f"post.member_vote = {post.member_vote} needs the members' own maps (an ensemble loaded "
                         f"with member_vote set); these maps have {maps.shape[0]} channels, {base} without members")
    own = [hover_instances(maps[base + k], maps[base + k + 1 : base + k + 3], post) for k in range(0, extra, 3)]
    return vote_instances([averaged, *own], post.member_vote, post.min_area_px)


def instance_types(labels: np.ndarray, tp_logits: np.ndarray) -> dict[int, int]:
    """Majority type (1..T, the type head's argmax over non-background channels) of every instance."""
    if labels.max() == 0:
        return {}
    cls = np.argmax(tp_logits[1:], axis=0) + 1
    n_types = tp_logits.shape[0] - 1
    fg = labels > 0
    counts = np.zeros((int(labels.max()) + 1, n_types + 1), np.int64)
    np.add.at(counts, (labels[fg], cls[fg]), 1)
    present = np.flatnonzero(counts.sum(1))
    return {int(i): int(np.argmax(counts[i])) for i in present if i > 0}
