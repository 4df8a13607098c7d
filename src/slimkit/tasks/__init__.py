"""Built-in tasks (model + data + quality metric), registered by name, all offline."""

from slimkit.tasks import builtin, custom, sequences  # noqa: F401  (registration side effects)
from slimkit.tasks.base import Task, TaskConfig, build_task

__all__ = ["Task", "TaskConfig", "build_task"]
