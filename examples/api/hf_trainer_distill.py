"""Knowledge distillation inside transformers' ``Trainer``, with slimkit's loss terms.

    python examples/api/hf_trainer_distill.py     # about a minute on 2 cores (needs slimkit[hf])

The teacher is a zoo CNN trained on digits; the student a quarter of its size. The Trainer
runs the loop; ``sk.distill_loss`` adds the distillation term to its loss (``compute_loss``),
and ``sk.measure`` reports what the student bought. ``sk.distill`` (the ``distill`` recipe step
as a verb) trains the same student in slimkit's loop; tests/api/test_examples.py compares them.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

import slimkit.api as sk
from slimkit.data.digits import load_digits_splits
from slimkit.zoo import create_model


class Classifier(nn.Module):
    """What the Trainer expects: keyword inputs, a dict with the loss when labels come."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, pixel_values, labels=None):
        logits = self.net(pixel_values)
        return {"logits": logits, **({"loss": F.cross_entropy(logits, labels)} if labels is not None else {})}


class Rows(torch.utils.data.Dataset):
    def __init__(self, split) -> None:
        self.x, self.y = split.inputs[0], split.targets

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        return {"pixel_values": self.x[i], "labels": self.y[i]}


def student_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 16, 10))


def teacher_net(epochs: int) -> nn.Module:
    from slimkit.tasks import build_task
    from slimkit.tasks.context import Context
    from slimkit.train.config import TrainConfig

    teacher = create_model("cnn_digits", num_classes=10)
    Context(task=build_task("digits-cnn")).train(teacher, TrainConfig(epochs=epochs, lr=3e-3))
    return teacher.eval()


def main(teacher_epochs: int = 10, epochs: int = 8, temperature: float = 4.0, output_dir: str = "runs/hf-distill"):
    import transformers

    torch.manual_seed(0)
    splits = load_digits_splits(image=True)
    teacher = teacher_net(teacher_epochs)
    student = student_net()
    untrained = copy.deepcopy(student)
    kd = sk.distill_loss(student, teacher, splits.train.inputs[0][:2], logits={"temperature": temperature})

    class DistillTrainer(transformers.Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, **kwargs):
            outputs = model(**inputs)
            loss = outputs["loss"] + kd(inputs["pixel_values"], outputs["logits"])
            return (loss, outputs) if return_outputs else loss

    args = transformers.TrainingArguments(output_dir=output_dir, num_train_epochs=epochs, per_device_train_batch_size=32,
                                          learning_rate=1e-2, report_to=[], save_strategy="no", logging_strategy="no",
                                          disable_tqdm=True, use_cpu=True, seed=0)
    DistillTrainer(model=Classifier(student), args=args, train_dataset=Rows(splits.train)).train()
    test = [(splits.test.inputs[0], splits.test.targets)]
    return {"teacher": sk.measure(teacher, test), "student (Trainer + distill_loss)": sk.measure(student.eval(), test),
            "_teacher": teacher, "_student": untrained, "_splits": splits}


if __name__ == "__main__":
    from rich.console import Console
    from rich.table import Table

    table = Table("model", "accuracy", "bytes", "MACs")
    for name, m in main().items():
        if not name.startswith("_"):
            table.add_row(name, f"{m['quality']:.3f}", f"{m['size_bytes']:,}", f"{m['macs']:,}")
    Console().print(table)
