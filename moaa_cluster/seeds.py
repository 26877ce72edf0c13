"""Per-call sampling seeds derived from a base seed and what the call is, so reruns reproduce.

The one formula every seeded call uses (mixture steps, prefs candidates, eval turns, judge
calls): SHA-256 of ``"<base>:<part>:<part>..."``, its first 4 bytes read little-endian, kept
to 31 bits (a seed every engine accepts). Changing it changes every seeded sample of every
run, so it must stay as it is.
"""

from __future__ import annotations

import hashlib


def derive_seed(base: int | None, *parts: object) -> int | None:
    """The seed of the call named by ``parts`` under ``base``; None when ``base`` is None.

    ``derive_seed(7, "row-1", "turn0")`` hashes ``"7:row-1:turn0"``.
    """
    if base is None:
        return None
    key = ":".join(str(p) for p in (base, *parts))
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF
