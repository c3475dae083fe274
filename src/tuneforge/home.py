"""Where tuneforge keeps caches (converted models): $TUNEFORGE_HOME, default ~/.cache/tuneforge."""

import os
from pathlib import Path


def tuneforge_home() -> Path:
    return Path(os.environ.get("TUNEFORGE_HOME", Path.home() / ".cache" / "tuneforge")).expanduser()
