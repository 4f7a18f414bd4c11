"""What every generated task shares: a held-out split fixed by a hash of the problem (never by the seed, so
train and test stay disjoint across seeds) and rejection sampling of distinct problems with a bounded
number of tries."""

import hashlib

from ..exceptions import InvalidArgumentError

HELD_OUT_FRACTION = 5  # one problem in 5 (by hash) is held out


def hash_split(text):
    """``"test"`` for one text in ``HELD_OUT_FRACTION`` (by its SHA-256), else ``"train"``."""
    return "test" if hashlib.sha256(text.encode()).digest()[0] % HELD_OUT_FRACTION == 0 else "train"


def draw_distinct(n, draw, max_tries, failure, unique=True):
    """``n`` items from ``draw()`` → ``(key, item)``, or None for a rejected draw; with ``unique`` each key
    at most once. After ``max_tries`` draws: ``InvalidArgumentError(failure(found))``."""
    out, seen, tries = [], set(), 0
    while len(out) < n:
        tries += 1
        if tries > max_tries:
            raise InvalidArgumentError(failure(len(out)))
        got = draw()
        if got is None or (unique and got[0] in seen):
            continue
        seen.add(got[0])
        out.append(got[1])
    return out
