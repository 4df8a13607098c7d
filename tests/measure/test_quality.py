import torch

from slimkit.measure.quality import accuracy, embedding_agreement, knn_overlap


def test_accuracy():
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [5.0, 0.0], [0.0, 1.0]])
    assert accuracy(logits, torch.tensor([0, 1, 1, 1]))["accuracy"] == 0.75


def test_embedding_agreement_identity_and_noise():
    ref = torch.nn.functional.normalize(torch.randn(200, 16), dim=-1)
    same = embedding_agreement(ref, ref)
    assert abs(same["cosine"] - 1.0) < 1e-6 and same["knn10_overlap"] == 1.0
    noisy = embedding_agreement(ref + 0.3 * torch.randn_like(ref), ref)
    assert noisy["cosine"] < 0.99 and noisy["knn10_overlap"] < 1.0


def test_knn_overlap_of_a_known_case():
    # points on a line: neighbours by cosine are identical for a positive rescaling of the rows
    a = torch.randn(30, 8)
    assert knn_overlap(a, a * 3.0, k=5) == 1.0
    # a random unrelated set shares about k/(n-1) of the neighbours
    b = torch.randn(30, 8)
    assert knn_overlap(a, b, k=5) < 0.6
