"""What is learnt: one module per task, each registering one Task (tasks/base.py). A new task is one
new module here, imported below, plus its tests."""

# isort: off
# Registration order is the order the recipe lists the tasks in.
from tuneforge.tasks import chat, causal_lm, seq2seq, classification, regression, image_classification  # noqa: F401
# isort: on
from tuneforge.tasks.base import TASKS, Task, get_task, register

__all__ = ["TASKS", "Task", "get_task", "register"]
