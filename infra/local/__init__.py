"""The local stack: emulators + functions-framework processes, as one context manager."""
from infra.local.stack import (
    DEFAULT_PROJECT,
    FUNCTION_TARGETS,
    LOCAL_GEMINI_API_KEY,
    Ports,
    PrerequisiteError,
    Stack,
    StackError,
    check_prerequisites,
)

__all__ = [
    "DEFAULT_PROJECT",
    "FUNCTION_TARGETS",
    "LOCAL_GEMINI_API_KEY",
    "Ports",
    "PrerequisiteError",
    "Stack",
    "StackError",
    "check_prerequisites",
]
