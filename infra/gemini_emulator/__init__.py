"""Gemini Developer API emulator: generateContent for image models, Files and Batch APIs, quotas,
latency and faults.

Built for offline tests and benchmarks of code that talks to Gemini through the unmodified
``google-genai`` SDK. Run it with ``python -m infra.gemini_emulator`` or in-process with
:class:`BackgroundEmulator`; see README.md for the admin API and the config schema.
"""

from infra.gemini_emulator.app import create_app
from infra.gemini_emulator.config import DEFAULT_CONFIG, ConfigError
from infra.gemini_emulator.server import BackgroundEmulator

__all__ = ["BackgroundEmulator", "ConfigError", "DEFAULT_CONFIG", "create_app"]
