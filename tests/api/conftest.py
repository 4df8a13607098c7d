import pytest

from slimkit.tasks import build_task
from slimkit.tasks.context import Context
from slimkit.train.config import TrainConfig


@pytest.fixture(scope="module")
def trained():
    """digits-cnn trained a little (a random network's near-constant outputs would hide differences)."""
    task = build_task("digits-cnn")
    model = task.build_model()
    Context(task=task).train(model, TrainConfig(epochs=3))
    return task, model.eval()
