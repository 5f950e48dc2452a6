"""ilgnet: the ILGNet image-aesthetics model (Jin et al., WCSP 2016) as a library and a command-line tool.

```python
import ilgnet_cli
run = ilgnet_cli.score_collection(["~/Photos"])      # same defaults as `ilgnet score`
model = ilgnet_cli.load("ilgnet-ava1")                # weights + the preprocessing that belongs to them
p = model.score(["photo.jpg"])                        # P(high quality) per image
```
"""

from __future__ import annotations

from typing import Any

from ilgnet_cli._version import __version__

__all__ = ["DataError", "IlgnetError", "UsageError", "load", "score_collection", "__version__"]


def __getattr__(name: str) -> Any:
    # Imported on first use: `import ilgnet_cli` (and `ilgnet --help`) stays quick, without torch.
    if name == "score_collection":
        from ilgnet_cli.photos.collection import score_collection

        return score_collection
    if name == "load":
        from ilgnet_cli.predict.api import load

        return load
    if name in ("IlgnetError", "UsageError", "DataError"):
        from ilgnet_cli import errors

        return getattr(errors, name)
    raise AttributeError(f"module 'ilgnet_cli' has no attribute {name!r}")
