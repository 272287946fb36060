"""DKD, DIST, logit standardization, CRD and ReviewKD: our losses and parts against fixtures made by
their authors' code (tests/fixtures/comparison/README.md says how), plus invariants and hand checks."""
from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lightning_kd.comparison_parts import ContrastMemory, ContrastSampler, EmbedHead, ReviewFusion
from lightning_kd.losses import (contrast_scores, crd_nce_loss, dist_loss, dkd_loss, dkd_terms, hcl_loss, kd_loss,
                                 standardize_logits)

FIXTURES = Path(__file__).parent / "fixtures" / "comparison"
close = partial(torch.testing.assert_close, rtol=1e-5, atol=1e-6)


def fixture(name: str) -> dict:
    return torch.load(FIXTURES / f"{name}.pt", weights_only=True)


def value_and_grad(fn, x: torch.Tensor):
    x = x.clone().requires_grad_(True)
    value = fn(x)
    value.backward()
    return value.detach(), x.grad


# ----------------------------------------------------------------------------- DKD
def test_dkd_terms_and_gradients_match_mdistiller():
    f = fixture("dkd")
    s, t, y, T = f["student"], f["teacher"], f["target"], f["temperature"]
    for index, name in enumerate(("tckd", "nckd")):
        value, grad = value_and_grad(lambda x: dkd_terms(x, t, y, T)[index], s)
        close(value, f[name])
        close(grad, f[f"{name}_grad"])
    value, grad = value_and_grad(lambda x: dkd_loss(x, t, y, alpha=1.0, beta=8.0, temperature=T), s)
    close(value, f["dkd"])
    close(grad, f["dkd_grad"])


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_dkd_decomposes_classical_kd_per_sample(T):
    """The DKD paper's reformulation: KD = TCKD + (1 - p_target of the teacher) * NCKD, per sample."""
    gen = torch.Generator().manual_seed(7)
    s, t = torch.randn(6, 10, generator=gen) * 3, torch.randn(6, 10, generator=gen) * 3
    y = torch.randint(0, 10, (6,), generator=gen)
    for i in range(6):
        si, ti, yi = s[i:i + 1], t[i:i + 1], y[i:i + 1]
        tckd, nckd = dkd_terms(si, ti, yi, T)
        teacher_target_prob = F.softmax(ti / T, dim=1)[0, yi].item()
        close(kd_loss(si, ti, T), tckd + (1 - teacher_target_prob) * nckd)


def test_dkd_is_zero_for_equal_logits_and_rejects_bad_targets():
    logits = torch.randn(4, 10)
    assert dkd_loss(logits, logits.clone(), torch.tensor([0, 3, 9, 2])).abs().item() < 1e-5
    with pytest.raises(ValueError, match="one class index per sample"):
        dkd_loss(logits, logits, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="at least 2 classes"):
        dkd_loss(logits[:, :1], logits[:, :1], torch.zeros(4, dtype=torch.long))


# ----------------------------------------------------------------------------- DIST
@pytest.mark.parametrize("case", ["dist_t4", "dist_t1", "inter_t4", "intra_t4", "weighted_t2"])
def test_dist_loss_and_gradient_match_the_authors(case):
    f = fixture("dist")
    beta, gamma, tau = f[f"{case}_args"].tolist()
    value, grad = value_and_grad(lambda x: dist_loss(x, f["teacher"], beta=beta, gamma=gamma, temperature=tau),
                                 f["student"])
    close(value, f[case])
    close(grad, f[f"{case}_grad"])


def test_dist_loss_is_zero_for_equal_predictions_and_positive_otherwise():
    logits = torch.randn(8, 10)
    # a constant added to a sample's logits leaves its predictions unchanged; the loss is then 0 up to
    # the eps 1e-8 beside products of norms near 1e-3 (soft predictions at T 4), times T^2
    assert dist_loss(logits + torch.randn(8, 1), logits, temperature=4.0).abs().item() < 1e-3
    assert dist_loss(torch.randn(8, 10), logits, temperature=4.0).item() > 0.01
    with pytest.raises(ValueError, match="N >= 2"):
        dist_loss(logits[:1], logits[:1])


# ----------------------------------------------------------------------------- logit standardization
def test_standardized_logits_and_gradient_match_the_authors():
    f = fixture("ls")
    close(standardize_logits(f["student"]), f["standardized"])
    _, grad = value_and_grad(lambda x: (f["weights"] * standardize_logits(x)).sum(), f["student"])
    close(grad, f["standardized_grad"])


def test_kd_and_dkd_on_standardized_logits_match_the_authors():
    """The LS authors' KD + LS (T 2) and DKD + LS (alpha 9, beta 72, T 2), and their plain KD (T 4)."""
    f = fixture("ls")
    s, t, y = f["student"], f["teacher"], f["target"]
    cases = {"kd_ls": lambda x: kd_loss(standardize_logits(x), standardize_logits(t), 2.0),
             "dkd_ls": lambda x: dkd_loss(standardize_logits(x), standardize_logits(t), y, 9.0, 72.0, 2.0),
             "kd_t4": lambda x: kd_loss(x, t, 4.0)}
    for name, fn in cases.items():
        value, grad = value_and_grad(fn, s)
        close(value, f[name])
        close(grad, f[f"{name}_grad"])


@pytest.mark.parametrize("unbiased", [True, False])
def test_standardized_logits_have_zero_mean_unit_std_and_ignore_shift_and_scale(unbiased):
    logits = torch.randn(6, 10) * 5 + 3
    z = standardize_logits(logits, unbiased=unbiased)
    close(z.mean(dim=1), torch.zeros(6))
    close(z.std(dim=1, correction=1 if unbiased else 0), torch.ones(6))
    close(standardize_logits(logits * 7 - 2, unbiased=unbiased), z)
    # the two conventions differ by sqrt(C / (C - 1)) exactly when eps is 0
    close(standardize_logits(logits, unbiased=False, eps=0) / standardize_logits(logits, eps=0),
          torch.full((6, 10), (10 / 9) ** 0.5))


# ----------------------------------------------------------------------------- CRD
def crd_parts(f: dict):
    initial = f["initial"]
    num_samples, dim, _ = f["settings"].tolist()
    heads = {}
    for side in ("embed_s", "embed_t"):
        weight = initial[f"{side}.linear.weight"]
        heads[side] = EmbedHead(weight.shape[1], dim)
        heads[side].load_state_dict({"linear.weight": weight, "linear.bias": initial[f"{side}.linear.bias"]})
    memory = ContrastMemory(num_samples, dim, temperature=f["temperature"], momentum=f["momentum"])
    memory.student_memory.copy_(initial["contrast.memory_v1"])
    memory.teacher_memory.copy_(initial["contrast.memory_v2"])
    return heads, memory


def test_crd_heads_memory_and_loss_match_repdistiller_over_two_training_steps():
    """Two steps of RepDistiller's CRDLoss (mdistiller's gives the same; the generator checks it):
    Z set by the first batch and kept, rows 10 and 28 updated twice, an SGD step of the heads between."""
    f = fixture("crd")
    heads, memory = crd_parts(f)
    num_samples = memory.num_samples
    params = {name: param for side, head in heads.items() for name, param in head.named_parameters(prefix=side)}
    optimizer = torch.optim.SGD(params.values(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    for batch, expected in zip(f["batches"], f["steps"]):
        optimizer.zero_grad()
        feat = batch["student_feat"].clone().requires_grad_(True)
        student_embed, teacher_embed = heads["embed_s"](feat), heads["embed_t"](batch["teacher_feat"])
        student_scores, teacher_scores = memory(student_embed, teacher_embed, batch["index"], batch["contrast_index"])
        loss = crd_nce_loss(student_scores, num_samples) + crd_nce_loss(teacher_scores, num_samples)
        loss.backward()
        close(student_embed, expected["student_embed"])
        close(teacher_embed, expected["teacher_embed"])
        close(student_scores, expected["student_scores"])
        close(teacher_scores, expected["teacher_scores"])
        close(loss.detach(), expected["loss"])
        close(feat.grad, expected["student_feat_grad"])
        for name, param in params.items():
            close(param.grad, expected["param_grads"][name])
        optimizer.step()
        for name, param in params.items():
            close(param.detach(), expected["params_after"][name])
        close(memory.normalizers, expected["normalizers"])
        close(memory.student_memory, expected["student_memory"])
        close(memory.teacher_memory, expected["teacher_memory"])


def test_crd_nce_loss_is_the_binary_nce_of_each_score_by_hand():
    scores = torch.rand(3, 5) * 2
    noise = 4 / 100
    by_hand = 0.0
    for row in scores.tolist():
        by_hand -= torch.log(torch.tensor(row[0] / (row[0] + noise + 1e-7))).item()
        by_hand -= sum(torch.log(torch.tensor(noise / (s + noise + 1e-7))).item() for s in row[1:])
    close(crd_nce_loss(scores, 100), torch.tensor(by_hand / 3))
    with pytest.raises(ValueError, match="the positive first"):
        crd_nce_loss(scores[:, :1], 100)


LABELS = torch.arange(40) % 5  # 5 classes of 8 samples


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_other_classes_negatives_are_distinct_samples_of_other_classes():
    index = torch.tensor([0, 7, 13, 39])
    sampler = ContrastSampler(20, 40, LABELS)
    drawn = sampler(index, generator=seeded(0))
    assert drawn.shape == (4, 21)
    assert torch.equal(drawn[:, 0], index)
    negatives = drawn[:, 1:]
    assert (LABELS[negatives] != LABELS[index][:, None]).all()
    assert all(len(set(row.tolist())) == 20 for row in negatives)  # 32 candidates >= 20: no repeats
    assert torch.equal(drawn, sampler(index, generator=seeded(0)))


@pytest.mark.parametrize("mode,replacement", [("other_classes", None), ("other_classes", True), ("any", None)])
def test_negatives_are_uniform_over_their_pool(mode, replacement):
    """Frequencies of 64 samples' draws per candidate: within 5 standard deviations of uniform."""
    negatives = 30 if mode == "other_classes" and replacement is None else 1000
    sampler = ContrastSampler(negatives, 40, LABELS, mode=mode, replacement=replacement)
    drawn = sampler(torch.zeros(64, dtype=torch.long), generator=seeded(1))[:, 1:]  # class 0
    counts = torch.bincount(drawn.flatten(), minlength=40).double()
    pool = (LABELS != 0) if mode == "other_classes" else torch.ones(40, dtype=torch.bool)
    assert counts[~pool].sum() == 0
    p = 1 / pool.sum()
    expected, std = drawn.numel() * p, (drawn.numel() * p * (1 - p)) ** 0.5
    assert ((counts[pool] - expected).abs() < 5 * std).all(), counts


def test_more_negatives_than_other_samples_repeat_them_and_relax_picks_the_same_class():
    index = torch.tensor([2, 5, 11])
    drawn = ContrastSampler(50, 40, LABELS, positive="relax")(index, generator=seeded(2))
    assert (LABELS[drawn[:, 0]] == LABELS[index]).all()
    assert len(set(drawn[:, 0].tolist()) - set(index.tolist())) > 0  # not always the sample itself
    assert (LABELS[drawn[:, 1:]] != LABELS[index][:, None]).all()  # 32 candidates for 50 draws: repeats


def test_classes_with_fewer_candidates_than_negatives_draw_with_replacement_the_others_without():
    labels = torch.tensor([0] * 30 + [1] * 5 + [2] * 5)  # class 0 has 10 candidates, classes 1 and 2 have 35
    drawn = ContrastSampler(20, 40, labels)(torch.tensor([0, 30, 35]), generator=seeded(3))[:, 1:]
    assert (labels[drawn] != labels[torch.tensor([0, 30, 35])][:, None]).all()
    assert len(set(drawn[0].tolist())) <= 10
    assert len(set(drawn[1].tolist())) == len(set(drawn[2].tolist())) == 20


def test_contrast_sampler_refuses_modes_that_lack_what_they_need():
    with pytest.raises(ValueError, match="needs the training set's labels"):
        ContrastSampler(4, 40)
    with pytest.raises(ValueError, match="contrast mode must be one of"):
        ContrastSampler(4, 40, LABELS, mode="same_class")
    with pytest.raises(ValueError, match="at least two classes"):
        ContrastSampler(4, 40, torch.zeros(40, dtype=torch.long))
    with pytest.raises(ValueError, match="a class has only 32"):
        ContrastSampler(33, 40, LABELS, replacement=False)
    with pytest.raises(ValueError, match="40 samples"):
        ContrastSampler(4, 40, LABELS[:30])
    assert ContrastSampler(4, 40, mode="any")(torch.tensor([0, 1])).shape == (2, 5)  # no labels needed


# ----------------------------------------------------------------------------- ReviewKD
THEIR_NAMES = {"conv1": "reduce", "att_conv": "attention", "conv2": "output"}


def ours(their_state: dict, levels: int) -> dict:
    """The authors' ABF keys (deepest first: abfs.0 is the deepest) as ReviewFusion's (shallow first)."""
    state = {}
    for key, value in their_state.items():
        level, part, rest = key.split(".", 2)
        state[f"fusions.{levels - 1 - int(level)}.{THEIR_NAMES[part]}.{rest}"] = value
    return state


def review_fusion(f: dict) -> ReviewFusion:
    fusion = ReviewFusion(f["in_channels"], f["out_channels"])
    fusion.load_state_dict(ours(f["initial"], len(f["in_channels"])))
    return fusion


def run_review(fusion: ReviewFusion, student: list, teacher: list):
    features = [x.clone().requires_grad_(True) for x in student]
    outputs = fusion(features, out_sizes=[t.shape[-2:] for t in teacher])
    loss = hcl_loss(outputs, teacher)
    loss.backward()
    return outputs, loss, features


def test_review_fusion_and_hcl_match_reviewkd_over_one_training_step():
    """dvlab's ReviewKD (mdistiller's gives the same loss and gradients; the generator checks it)."""
    f = fixture("reviewkd")
    fusion = review_fusion(f)
    outputs, loss, features = run_review(fusion, f["student"], f["teacher"])
    expected = f["full"]
    for ours_out, theirs in zip(outputs, expected["outputs"]):
        close(ours_out.detach(), theirs)
    close(loss.detach(), expected["loss"])
    for feature, grad in zip(features, expected["feature_grads"]):
        close(feature.grad, grad)
    their_grads = ours(expected["param_grads"], len(features))
    for name, param in fusion.named_parameters():
        close(param.grad, their_grads[name])
    torch.optim.SGD(fusion.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4).step()
    their_state = ours(expected["state_after"], len(features))
    for name, value in fusion.state_dict().items():  # parameters and BN's running statistics
        close(value, their_state[name])


def test_review_fusion_upsamples_smaller_student_maps_like_reviewkd():
    f = fixture("reviewkd")
    outputs, loss, features = run_review(review_fusion(f), f["small_student"], f["teacher"])
    for ours_out, theirs, teacher in zip(outputs, f["small"]["outputs"], f["teacher"]):
        assert ours_out.shape == teacher.shape
        close(ours_out.detach(), theirs)
    close(loss.detach(), f["small"]["loss"])
    for feature, grad in zip(features, f["small"]["feature_grads"]):
        close(feature.grad, grad)


def test_hcl_loss_by_hand_on_a_4x4_map():
    """Levels below the height 4: 2 and 1, weighted 1/2 and 1/4 after the full map's 1."""
    s, t = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    pooled_2x2 = lambda x: x.reshape(2, 3, 2, 2, 2, 2).mean(dim=(3, 5))  # noqa: E731  (rows, cols in blocks of 2)
    full = ((s - t) ** 2).mean()
    level_2 = ((pooled_2x2(s) - pooled_2x2(t)) ** 2).mean()
    level_1 = ((s.mean(dim=(2, 3)) - t.mean(dim=(2, 3))) ** 2).mean()
    close(hcl_loss([s], [t]), (full + level_2 / 2 + level_1 / 4) / 1.75)
    close(hcl_loss([s, s[..., :1, :1]], [t, t[..., :1, :1]]),
          hcl_loss([s], [t]) + ((s[..., :1, :1] - t[..., :1, :1]) ** 2).mean())
    with pytest.raises(ValueError, match="equal shape"):
        hcl_loss([s], [t[:, :2]])


def test_review_fusion_refuses_a_wrong_number_of_features():
    fusion = ReviewFusion([2, 3], [4, 5])
    with pytest.raises(ValueError, match="built for 2 student features"):
        fusion([torch.randn(1, 2, 4, 4)])


# ----------------------------------------------------------------------------- precision
def bf16_cases():
    gen = torch.Generator().manual_seed(9)
    s, t = torch.randn(8, 10, generator=gen) * 3, torch.randn(8, 10, generator=gen) * 3
    y = torch.randint(0, 10, (8,), generator=gen)
    embed = F.normalize(torch.randn(4, 16, generator=gen), dim=1)
    rows = F.normalize(torch.randn(4, 9, 16, generator=gen), dim=2)
    maps = [torch.randn(2, 3, 8, 8, generator=gen), torch.randn(2, 3, 8, 8, generator=gen)]
    return {"dkd": (lambda a, b: dkd_loss(a, b, y), (s, t)),
            "dist": (lambda a, b: dist_loss(a, b, temperature=4.0), (s, t)),
            "standardize": (standardize_logits, (s,)),
            "contrast_scores": (contrast_scores, (embed, rows)),
            "hcl": (lambda a, b: hcl_loss([a], [b]), tuple(maps))}


@pytest.mark.parametrize("name", ["dkd", "dist", "standardize", "contrast_scores", "hcl"])
def test_comparison_losses_compute_in_float32_under_bf16_autocast(name):
    fn, args = bf16_cases()[name]
    rounded = [a.bfloat16().float() for a in args]  # inputs as a bf16 network hands them over
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = fn(*rounded)
    assert mixed.dtype == torch.float32
    close(mixed, fn(*rounded))  # as without autocast
