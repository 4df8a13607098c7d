"""Built-in tasks (model + data + quality metric), registered by name, all offline."""

from slimkit.tasks import builtin, custom  # noqa: F401  (registration side effects)
from slimkit.tasks.base import Task, TaskConfig, build_task

__all__ = ["Task", "TaskConfig", "build_task"]
