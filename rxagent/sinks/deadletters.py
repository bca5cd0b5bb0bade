"""Dead letters, as sinks see them: re-exported from :mod:`rxagent.deadletters`.

The classes live in a leaf module so that the pipeline context can use them
without importing the sinks package (which imports the context).
"""

from ..deadletters import (
    DeadLetter,
    DeadLetterSink,
    JsonlDeadLetters,
    MemoryDeadLetters,
    read_dead_letters,
)

__all__ = [
    "DeadLetter",
    "DeadLetterSink",
    "JsonlDeadLetters",
    "MemoryDeadLetters",
    "read_dead_letters",
]
