"""The ground floor: every pure loss of the library (tensors in, scalar out), like torch.nn.functional.

Nothing here knows about modules, hooks or Lightning; methods and callbacks import from this file.
Every loss computes in float32 whatever the autocast dtype.
"""
from __future__ import annotations

import functools
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def in_float32(fn):
    """Run ``fn`` on float32 tensor arguments with autocast off (other arguments pass as they are).
    Autocast would run its matrix products in bfloat16 (8-bit mantissa), and Gram matrices, distances
    and cosines built from them lose too much there: a distance from the Gram matrix is a difference
    of nearly equal numbers."""
    @functools.wraps(fn)
    def run(*args, **kwargs) -> Tensor:
        with torch.autocast(args[0].device.type, enabled=False):
            return fn(*(a.float() if isinstance(a, Tensor) else a for a in args), **kwargs)
    return run


# ----------------------------------------------------------------------------- logits
def check_temperature(temperature: float) -> float:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}; the KD recipe uses 4.0.")
    return float(temperature)


def check_term_weights(method: str, authors: str, **weights: float) -> tuple[float, ...]:
    """The weights of a loss's inner terms (DKD's alpha/beta, DIST's beta/gamma) as floats, refused when one
    is negative or all are 0; ``authors`` names their published values for the message."""
    if any(w < 0 for w in weights.values()) or not any(weights.values()):
        raise ValueError(f"{method}'s {' and '.join(weights)} must be >= 0 and not all 0, got "
                         f"{', '.join(f'{k}={v}' for k, v in weights.items())}: the authors' values are {authors}.")
    return tuple(float(w) for w in weights.values())


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 4.0) -> Tensor:
    """``KL(softmax(t/T) || softmax(s/T)) * T^2``, averaged over the batch (Hinton et al., 2015).

    The ``T^2`` factor keeps the gradient scale independent of ``T`` (Hinton et al., sec. 2).
    """
    T = check_temperature(temperature)
    log_p_student = F.log_softmax(student_logits.float() / T, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / T, dim=1)
    return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True) * (T * T)


def dml_loss(logits: Tensor, peer_logits: Tensor) -> Tensor:
    """``KL(softmax(peer) || softmax(logits))``, averaged over the batch; the peer is detached.

    The mimicry term of Deep Mutual Learning (Zhang et al., CVPR 2018, eq. 2).
    """
    log_p = F.log_softmax(logits.float(), dim=1)
    log_p_peer = F.log_softmax(peer_logits.detach().float(), dim=1)
    return F.kl_div(log_p, log_p_peer, reduction="batchmean", log_target=True)


def standardize_logits(logits: Tensor, unbiased: bool = True, eps: float = 1e-7) -> Tensor:
    """Z-score each sample's logits: ``(z - mean(z)) / (std(z) + eps)`` over the classes.

    Logit standardization (Sun et al., "Logit Standardization in Knowledge Distillation", CVPR 2024,
    https://arxiv.org/abs/2403.01427): applied to the student's and the teacher's logits before the
    temperature of KD or DKD, so the student matches the teacher's logit relations, not their scale.

    Args:
        logits: ``(N, C)`` logits, ``C >= 2``.
        unbiased: ``True`` (default, the authors' code: ``torch.std``) divides the squared deviations
            by ``C - 1``; ``False`` by ``C`` (the population std, after which the std is exactly 1).
        eps: added to the std (not the variance), as the authors do (1e-7); 0 divides by the bare std.
    """
    logits = logits.float()
    centered = logits - logits.mean(dim=1, keepdim=True)
    return centered / (logits.std(dim=1, keepdim=True, correction=1 if unbiased else 0) + eps)


def standardized_if(standardize: bool, student_logits: Tensor, teacher_logits: Tensor) -> tuple[Tensor, Tensor]:
    """Both logits z-scored per sample by :func:`standardize_logits` when ``standardize`` (the methods'
    ``logit_standardization`` option), else as given."""
    if not standardize:
        return student_logits, teacher_logits
    return standardize_logits(student_logits), standardize_logits(teacher_logits)


def check_targets(logits: Tensor, target: Tensor, what: str) -> None:
    if target.shape != logits.shape[:1]:
        raise ValueError(f"{what} needs one class index per sample, got targets {tuple(target.shape)} "
                         f"for logits {tuple(logits.shape)}.")
    if logits.shape[1] < 2:
        raise ValueError(f"{what} needs at least 2 classes (a target and a non-target class), "
                         f"got logits {tuple(logits.shape)}.")


def dkd_terms(student_logits: Tensor, teacher_logits: Tensor, target: Tensor,
              temperature: float = 4.0) -> tuple[Tensor, Tensor]:
    """The two terms of Decoupled KD (Zhao et al., CVPR 2022, https://arxiv.org/abs/2203.08679):
    ``(TCKD, NCKD)``, each a KL divergence times ``T^2`` averaged over the batch.

    TCKD compares the binary distributions ``(p_target, 1 - p_target)`` of the teacher and the
    student; NCKD compares their distributions over the non-target classes alone (the softmax of the
    non-target logits). Per sample, classical KD = TCKD + (1 - p_target of the teacher) * NCKD.

    Args:
        student_logits: ``(N, C)``.
        teacher_logits: ``(N, C)``, used as given (detach them to keep gradients away).
        target: ``(N,)`` class indices.
        temperature: the softmax temperature ``T`` (the authors' CIFAR-100 value 4).
    """
    T = check_temperature(temperature)
    check_targets(student_logits, target, "dkd_loss")
    n, c = student_logits.shape
    is_target = F.one_hot(target, c).bool()

    def binary_log_probs(logits: Tensor) -> Tensor:  # (N, 2): log p_target, log (1 - p_target)
        log_p = F.log_softmax(logits.float() / T, dim=1)
        log_target = log_p.masked_fill(~is_target, float("-inf")).logsumexp(dim=1)
        log_rest = log_p.masked_fill(is_target, float("-inf")).logsumexp(dim=1)
        return torch.stack([log_target, log_rest], dim=1)

    tckd = F.kl_div(binary_log_probs(student_logits), binary_log_probs(teacher_logits),
                    reduction="batchmean", log_target=True) * (T * T)
    non_target = ~is_target
    nckd = kd_loss(student_logits[non_target].view(n, c - 1), teacher_logits[non_target].view(n, c - 1), T)
    return tckd, nckd


def dkd_loss(student_logits: Tensor, teacher_logits: Tensor, target: Tensor, alpha: float = 1.0,
             beta: float = 8.0, temperature: float = 4.0) -> Tensor:
    """``alpha * TCKD + beta * NCKD`` (see :func:`dkd_terms`); the defaults are the authors'
    CIFAR-100 ones (beta 8 for resnet32x4 -> resnet8x4). The authors' linear warm-up of this term
    over the first 20 of 240 epochs is a weight schedule of the method, not part of the loss."""
    tckd, nckd = dkd_terms(student_logits, teacher_logits, target, temperature)
    return alpha * tckd + beta * nckd


def pearson_rows(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """``(N,)`` Pearson correlation of each row of ``a`` with the same row of ``b``: the cosine of the
    centered rows, with ``eps`` added to the product of their norms (DIST's convention)."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def dist_loss(student_logits: Tensor, teacher_logits: Tensor, beta: float = 1.0, gamma: float = 1.0,
              temperature: float = 1.0) -> Tensor:
    """DIST (Huang et al., "Knowledge Distillation from A Stronger Teacher", NeurIPS 2022,
    https://arxiv.org/abs/2205.10536): ``T^2 * (beta * inter + gamma * intra)``, where on the
    softened predictions ``p = softmax(z / T)``, ``inter = 1 - mean over samples of the Pearson
    correlation of a sample's student and teacher predictions`` and ``intra`` the same over classes
    (columns of the ``(N, C)`` predictions). 0 when the predictions are equal (up to ``eps``).

    Args:
        student_logits: ``(N, C)``, ``N >= 2`` (a class's correlation runs over the batch).
        teacher_logits: ``(N, C)``, used as given (detach them to keep gradients away).
        beta, gamma: the weights of the inter- and intra-class terms (the authors' 1 and 1).
        temperature: ``T`` (tau); the authors' default 1, their CIFAR-100 recipe 4 (``dist_t4``).
    """
    T = check_temperature(temperature)
    if student_logits.ndim != 2 or student_logits.shape != teacher_logits.shape or len(student_logits) < 2:
        raise ValueError(f"dist_loss needs (N, C) student and teacher logits of equal shape with N >= 2, got "
                         f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}.")
    p_s = F.softmax(student_logits.float() / T, dim=1)
    p_t = F.softmax(teacher_logits.float() / T, dim=1)
    inter = 1 - pearson_rows(p_s, p_t).mean()
    intra = 1 - pearson_rows(p_s.t(), p_t.t()).mean()
    return (T * T) * (beta * inter + gamma * intra)


# ----------------------------------------------------------------------------- feature maps
def pool_to_common_size(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Average-pool the larger of two ``(N, C, H, W)`` maps to the smaller one's ``(H, W)``."""
    size = (min(a.shape[-2], b.shape[-2]), min(a.shape[-1], b.shape[-1]))
    a, b = (t if tuple(t.shape[-2:]) == size else F.adaptive_avg_pool2d(t, size) for t in (a, b))
    return a, b


def attention_map(feat: Tensor, p: float = 2) -> Tensor:
    """``normalize(f^p averaged over channels)``: an ``(N, H*W)`` map of unit L2 norm per sample."""
    return F.normalize(feat.float().pow(p).mean(dim=1).flatten(1), dim=1)


def at_loss(student_feat: Tensor, teacher_feat: Tensor, p: float = 2) -> Tensor:
    """Mean squared difference of the normalized attention maps of two ``(N, C, H, W)`` features
    (Zagoruyko & Komodakis, ICLR 2017).

    The channel counts may differ; when the spatial sizes differ, the larger map is
    average-pooled to the smaller size first. Scaling a feature map by ``c > 0`` leaves the loss
    unchanged (the map is normalized).
    """
    student_feat, teacher_feat = pool_to_common_size(student_feat, teacher_feat)
    return (attention_map(student_feat, p) - attention_map(teacher_feat, p)).pow(2).mean()


def fitnet_loss(regressed_student: Tensor, teacher: Tensor) -> Tensor:
    """Mean squared error between the regressed student feature and the teacher's (same shape)
    (Romero et al., ICLR 2015)."""
    if regressed_student.shape != teacher.shape:
        raise ValueError(f"fitnet_loss needs equal shapes, got student {tuple(regressed_student.shape)} "
                         f"and teacher {tuple(teacher.shape)}; regress the student feature first.")
    return F.mse_loss(regressed_student.float(), teacher.float())


@in_float32
def fsp_matrix(first: Tensor, second: Tensor) -> Tensor:
    """``(N, C1, C2)`` Gram matrix between two maps, averaged over the ``H*W`` positions (Yim et al., 2017).

    ``first.flatten(2) @ second.flatten(2).transpose(1, 2) / (H*W)``, after the larger map is
    average-pooled to the smaller one's spatial size.
    """
    first, second = pool_to_common_size(first, second)
    positions = first.shape[-2] * first.shape[-1]
    return first.flatten(2) @ second.flatten(2).transpose(1, 2) / positions


def fsp_loss(student_matrices: Sequence[Tensor], teacher_matrices: Sequence[Tensor]) -> Tensor:
    """Sum over the pairs of the mean squared difference of student and teacher FSP matrices."""
    if len(student_matrices) != len(teacher_matrices):
        raise ValueError(f"fsp_loss got {len(student_matrices)} student and {len(teacher_matrices)} "
                         f"teacher matrices; they must pair up one to one.")
    return sum((s - t).pow(2).mean() for s, t in zip(student_matrices, teacher_matrices))


def hcl_loss(student_feats: Sequence[Tensor], teacher_feats: Sequence[Tensor],
             levels: Sequence[int] = (4, 2, 1)) -> Tensor:
    """ReviewKD's hierarchical context loss (Chen et al., "Distilling Knowledge via Knowledge Review",
    CVPR 2021, https://arxiv.org/abs/2104.09044), summed over the pairs of maps.

    For each pair of ``(N, C, H, W)`` maps of equal shape: the mean squared error of the maps and of
    their average-pooled ``l x l`` versions for each level ``l`` smaller than ``H``, weighted 1, 1/2,
    1/4, ... in that order and divided by the sum of the weights used (the authors' code).
    """
    if len(student_feats) != len(teacher_feats):
        raise ValueError(f"hcl_loss got {len(student_feats)} student and {len(teacher_feats)} teacher maps; "
                         f"they must pair up one to one.")
    total = 0.0
    for s, t in zip(student_feats, teacher_feats):
        if s.shape != t.shape:
            raise ValueError(f"hcl_loss needs maps of equal shape, got student {tuple(s.shape)} and teacher "
                             f"{tuple(t.shape)}; fuse the student's features to the teacher's shapes first.")
        s, t = s.float(), t.float()
        weight, weights, loss = 1.0, 1.0, F.mse_loss(s, t)
        for size in levels:
            if size < s.shape[-2]:
                weight /= 2
                weights += weight
                loss = loss + weight * F.mse_loss(F.adaptive_avg_pool2d(s, size), F.adaptive_avg_pool2d(t, size))
        total = total + loss / weights
    return total


# ----------------------------------------------------------------------------- relations (RKD)
def check_embeddings(student: Tensor, teacher: Tensor, min_batch: int, what: str) -> None:
    """Both ``(N, D)`` with the same ``N >= min_batch`` (their ``D`` may differ)."""
    if student.ndim != 2 or teacher.ndim != 2:
        raise ValueError(f"{what} needs (N, D) embeddings, got student {tuple(student.shape)} and teacher "
                         f"{tuple(teacher.shape)}; flatten the features first (e.g. hook the `pool` layer).")
    if student.shape[0] != teacher.shape[0]:
        raise ValueError(f"{what} needs the same samples on both sides, got {student.shape[0]} student and "
                         f"{teacher.shape[0]} teacher embeddings.")
    if student.shape[0] < min_batch:
        raise ValueError(f"{what} needs a batch of at least {min_batch} samples, got {student.shape[0]}; "
                         f"increase the batch size (data.init_args.batch_size).")


@in_float32
def pairwise_distances(embeddings: Tensor) -> Tensor:
    """``(N, N)`` Euclidean distances from the Gram matrix (memory N^2, not N^2 * D).

    Squared distances are clamped at a tiny positive value before the square root, so equal
    embeddings (and the diagonal) give finite gradients.
    """
    squared_norms = embeddings.pow(2).sum(1)
    squared = squared_norms[:, None] + squared_norms[None, :] - 2 * embeddings @ embeddings.t()
    return squared.clamp_min(1e-12).sqrt()


def normalized_distances(embeddings: Tensor) -> Tensor:
    """Distances of the ``N (N - 1)`` ordered distinct pairs, divided by their mean (the paper's mu)."""
    distances = pairwise_distances(embeddings).flatten()[distinct_pairs(embeddings.shape[0], embeddings.device)]
    return distances / distances.mean().clamp_min(1e-12)


def skip(index: Tensor, taken: Tensor) -> Tensor:
    """``index`` counted over ``0..n-1`` without ``taken``: each index at or past ``taken`` moves up by one."""
    return index + (index >= taken).long()


def distinct_pairs(n: int, device=None) -> Tensor:
    """Flat indices into an ``(n, n)`` matrix of its ``n (n - 1)`` off-diagonal entries, row by row: what a
    boolean mask selects, but of a size known in advance (a compiled step, ``capture_step``, needs one)."""
    k = torch.arange(n * (n - 1), device=device)
    row = k // (n - 1)
    return row * n + skip(k % (n - 1), row)


def distinct_triplets(n: int, device=None) -> Tensor:
    """Flat indices into an ``(n, n, n)`` tensor of its ``n (n - 1) (n - 2)`` entries ``[j, i, k]`` with three
    distinct indices, in row-major order (as :func:`distinct_pairs`)."""
    t = torch.arange(n * (n - 1) * (n - 2), device=device)
    j = t // ((n - 1) * (n - 2))
    i = skip((t // (n - 2)) % (n - 1), j)
    k = skip(skip(t % (n - 2), torch.minimum(i, j)), torch.maximum(i, j))
    return (j * n + i) * n + k


@in_float32
def triplet_cosines(embeddings: Tensor) -> Tensor:
    """``cos angle(e_i, e_j, e_k) = <unit(e_i - e_j), unit(e_k - e_j)>`` (vertex ``e_j``) for the
    ``N (N - 1) (N - 2)`` ordered triplets of distinct indices."""
    n = embeddings.shape[0]
    directions = F.normalize(embeddings[:, None, :] - embeddings[None, :, :], dim=2)  # [i, j] = unit(e_i - e_j)
    # cosines[j, i, k] = <unit(e_i - e_j), unit(e_k - e_j)>
    cosines = torch.bmm(directions.transpose(0, 1), directions.transpose(0, 1).transpose(1, 2))
    return cosines.flatten()[distinct_triplets(n, embeddings.device)]


def relation_huber(relation, student: Tensor, teacher: Tensor) -> Tensor:
    """Huber (smooth L1, delta 1) between ``relation(student)`` and ``relation(teacher)``, the teacher
    side without autograd."""
    with torch.no_grad():
        target = relation(teacher.detach())
    return F.smooth_l1_loss(relation(student), target, beta=1.0)


RKD_NORMALIZERS = ("all_entries", "distinct")


def rkd_mean_scale(n: int, order: int, normalizer: str) -> float:
    """Factor from the mean over distinct pairs (``order`` 2) or triplets (3) of ``n`` samples to the
    chosen normalizer: ``all_entries`` averages over all ``n^order`` entries as the authors' code
    does, where the degenerate ones (a repeated index) add zero; ``distinct`` leaves the mean."""
    if normalizer not in RKD_NORMALIZERS:
        raise ValueError(f"rkd normalizer must be one of {RKD_NORMALIZERS}, got {normalizer!r}.")
    if normalizer == "distinct":
        return 1.0
    distinct = 1
    for i in range(order):  # n (n - 1) ... (n - order + 1); a loop, which a compiled step traces
        distinct *= n - i
    return distinct / n ** order


def rkd_distance_loss(student: Tensor, teacher: Tensor, normalizer: str = "all_entries") -> Tensor:
    """RKD distance-wise loss (Park et al., CVPR 2019): Huber (smooth L1, delta 1) between the
    student's and the teacher's pair distances, each normalized by its mean over distinct pairs.
    Scale-invariant in either embedding.

    Args:
        student: ``(N, D_s)`` student embeddings, ``N >= 2``.
        teacher: ``(N, D_t)`` teacher embeddings (no gradient flows to them).
        normalizer: ``all_entries`` (default, the authors' code and the normalizer their published
            weights 25/50 were tuned with): the mean over all ``N^2`` entries of the distance
            matrix, whose diagonal adds zero; ``distinct``: the mean over the ``N (N - 1)`` ordered
            distinct pairs (``N / (N - 1)`` times the default).
    """
    check_embeddings(student, teacher, 2, "rkd_distance_loss")
    return relation_huber(normalized_distances, student, teacher) * rkd_mean_scale(len(student), 2, normalizer)


def rkd_angle_loss(student: Tensor, teacher: Tensor, normalizer: str = "all_entries") -> Tensor:
    """RKD angle-wise loss: Huber (smooth L1, delta 1) between the cosines of the angles the
    student's and the teacher's embeddings form.

    Args:
        student: ``(N, D_s)`` student embeddings, ``N >= 3`` (an angle needs three points).
        teacher: ``(N, D_t)`` teacher embeddings (no gradient flows to them).
        normalizer: ``all_entries`` (default, the authors'): the mean over all ``N^3`` index
            triplets, whose degenerate ones (a repeated index) add zero; ``distinct``: the mean
            over the ``N (N - 1) (N - 2)`` ordered triplets of distinct samples.
    """
    check_embeddings(student, teacher, 3, "rkd_angle_loss")
    return relation_huber(triplet_cosines, student, teacher) * rkd_mean_scale(len(student), 3, normalizer)


def batch_hard_triplet_loss(embeddings: Tensor, labels: Tensor, margin: float = 0.2) -> Tensor:
    """Triplet loss with batch-hard mining: per anchor, its farthest positive and nearest negative,
    ``mean(relu(d(a, p) - d(a, n) + margin))`` over anchors that have both in the batch.

    "In Defense of the Triplet Loss for Person Re-Identification" (Hermans, Beyer, Leibe, 2017),
    https://arxiv.org/abs/1703.07737. A batch without any valid anchor gives 0 (with a graph).
    """
    distances = pairwise_distances(embeddings)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    positives, negatives = same & ~eye, ~same
    valid = positives.any(1) & negatives.any(1)
    if not valid.any():
        return embeddings.sum() * 0.0
    hardest_positive = distances.masked_fill(~positives, float("-inf")).amax(1)
    hardest_negative = distances.masked_fill(~negatives, float("inf")).amin(1)
    return (hardest_positive - hardest_negative + margin).relu()[valid].mean()


# ----------------------------------------------------------------------------- contrast (CRD)
@in_float32
def contrast_scores(embeddings: Tensor, rows: Tensor, temperature: float = 0.07) -> Tensor:
    """``exp(<row, embedding> / T)`` of each sample's memory rows: ``(N, D)`` and ``(N, K + 1, D)``
    give ``(N, K + 1)``: the unnormalized scores of CRD's contrast (Tian et al., ICLR 2020)."""
    return torch.exp(torch.bmm(rows, embeddings.unsqueeze(2)).squeeze(2) / temperature)


def crd_nce_loss(scores: Tensor, num_samples: int, eps: float = 1e-7) -> Tensor:
    """CRD's NCE loss (Tian et al., "Contrastive Representation Distillation", ICLR 2020,
    https://arxiv.org/abs/1910.10699; eq. 18 by the authors' code) of normalized scores, summed over
    the samples' terms and divided by the batch size.

    With ``K`` negatives and the uniform noise ``P_n = 1 / num_samples``, a score ``s`` is the
    positive with probability ``h = s / (s + K P_n + eps)``: the loss is ``-log h`` of the positive
    plus ``-log(K P_n / (s + K P_n + eps))`` (``-log(1 - h)`` but for eps) of each negative.

    Args:
        scores: ``(N, K + 1)`` scores divided by the memory's constant ``Z``, the positive's first.
        num_samples: the size of the training set (rows of the memory), which sets ``P_n``.
        eps: the authors' 1e-7 in the denominators.
    """
    if scores.ndim != 2 or scores.shape[1] < 2:
        raise ValueError(f"crd_nce_loss needs (N, K + 1) scores, the positive first and K >= 1 negatives, "
                         f"got {tuple(scores.shape)}.")
    scores = scores.float()
    noise = (scores.shape[1] - 1) / num_samples
    positive, negatives = scores[:, 0], scores[:, 1:]
    log_h_positive = torch.log(positive / (positive + noise + eps))
    log_not_h_negatives = torch.log(noise / (negatives + noise + eps))
    return -(log_h_positive.sum() + log_not_h_negatives.sum()) / scores.shape[0]


# ----------------------------------------------------------------------------- factors (IE-KD)
def inheritance_loss(factor: Tensor, target: Tensor) -> Tensor:
    """Mean absolute difference of the per-sample L2-normalised, flattened factors.

    ``mean |f_i / ||f_i||_2 - t_i / ||t_i||_2|`` over samples ``i`` and elements (Huang et al.,
    CVPR 2021, eq. 3, with a mean instead of a sum so the scale does not grow with the factor
    size). ``target`` is used as given: detach it to keep gradients away from it.
    """
    if factor.shape != target.shape:
        raise ValueError(f"inheritance/exploration losses need factors of equal shape, got "
                         f"{tuple(factor.shape)} and {tuple(target.shape)}; encode the student "
                         f"feature into the teacher factor's shape first.")
    f = F.normalize(factor.flatten(1).float(), dim=1)
    t = F.normalize(target.flatten(1).float(), dim=1)
    return (f - t).abs().mean()


def exploration_loss(factor: Tensor, target: Tensor) -> Tensor:
    """The negative of :func:`inheritance_loss`: minimising it pushes the factor away from the target."""
    return -inheritance_loss(factor, target)
