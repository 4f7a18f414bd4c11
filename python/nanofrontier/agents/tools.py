"""The agents' tools: plain Python callables from an argument string to an observation string.

- :class:`KnowledgeBase` and :class:`Search`: look a query up in local pages (title → text). A page whose
  title appears in the query wins (the longest such title); otherwise the page sharing the most words with
  the query (rarer words weigh more; a word on more than 5% of the pages does not count); otherwise
  "No results for ...".
- :class:`Calculate`: exact arithmetic on a parsed expression tree (:mod:`nanofrontier.tasks.expression`,
  with limits on length, nesting, digits, exponents and magnitude). Model text is never ``eval``-ed; a
  refused expression is answered with the reason, never an exception.

Any other callable ``tool(argument: str) -> str`` works as a tool too.
"""

import math
import re
from collections import Counter

from ..exceptions import InvalidArgumentError
from ..tasks import expression

_WORD = re.compile(r"[a-z0-9]+")
STOPWORDS = frozenset("a an the of in on at to is was by for and or what who where when how which".split())


def _words(text):
    return [w for w in _WORD.findall(text.lower()) if w not in STOPWORDS]


class KnowledgeBase:
    """Pages (``{title: text}``) to search. ``search(query)`` returns the best page's text, or None."""

    def __init__(self, pages):
        if not isinstance(pages, dict) or not pages:
            raise InvalidArgumentError("KnowledgeBase: pages must be a non-empty dict {title: text}")
        for t, p in pages.items():
            if not isinstance(t, str) or not isinstance(p, str) or not t.strip():
                raise InvalidArgumentError(f"KnowledgeBase: page {t!r} must map a non-empty title to text")
        self.pages = dict(pages)
        # titles as word sequences, for whole-word matching in a query
        self._titles = {}
        for t in self.pages:
            self._titles.setdefault(tuple(_WORD.findall(t.lower())), []).append(t)
        self._max_title = max(len(k) for k in self._titles)
        df = Counter(w for p in self.pages.values() for w in set(_words(p)))
        n = len(self.pages)
        # a word on more than 5% of the pages ("elevation", "born") says too little to pick one of them
        common = max(1, n // 20)
        self._idf = {w: math.log((n + 1) / (c + 0.5)) for w, c in df.items() if c <= common}
        self._page_words = {t: set(_words(p)) for t, p in self.pages.items()}

    def __len__(self):
        return len(self.pages)

    def lookup(self, query):
        """The title of the best page for ``query`` (see the module docstring), or None."""
        words = _WORD.findall(query.lower())
        best = None
        for i in range(len(words)):  # the longest title that appears as whole words in the query
            for k in range(min(self._max_title, len(words) - i), 0, -1):
                hit = self._titles.get(tuple(words[i:i + k]))
                if hit and (best is None or k > best[0]):
                    best = (k, sorted(hit)[0])
                    break
        if best is not None:
            return best[1]
        q = set(_words(query))
        scored = [(sum(self._idf.get(w, 0.0) for w in q & ws), t) for t, ws in self._page_words.items()]
        score, title = max(scored, key=lambda s: (s[0], [-ord(c) for c in s[1]]), default=(0.0, None))
        return title if score > 0 else None

    def search(self, query):
        t = self.lookup(query)
        return None if t is None else self.pages[t]

    def __repr__(self):
        return f"KnowledgeBase({len(self.pages)} pages)"


class Search:
    """``Search[query]`` over a :class:`KnowledgeBase` (or a ``{title: text}`` dict)."""

    name = "Search"

    def __init__(self, kb, max_query_chars=200):
        self.kb = kb if isinstance(kb, KnowledgeBase) else KnowledgeBase(kb)
        self.max_query_chars = int(max_query_chars)

    def __call__(self, query):
        if not isinstance(query, str) or not query.strip():
            return "Search needs a query, e.g. Search[Keldor elevation]."
        if len(query) > self.max_query_chars:
            return f"The query is longer than {self.max_query_chars} characters."
        page = self.kb.search(query)
        return page if page is not None else f"No results for {query.strip()!r}."

    def __repr__(self):
        return f"Search({self.kb!r})"


class Calculate:
    """``Calculate[expression]``: the exact value of + − × ÷, powers and parentheses on numbers, written
    ``53`` or ``2.5`` (rounded to 6 decimals), or ``Error: <reason>`` for anything refused (see
    :mod:`nanofrontier.tasks.expression`; ``limits`` defaults to ``expression.CALCULATOR``)."""

    name = "Calculate"

    def __init__(self, limits=expression.CALCULATOR):
        if not isinstance(limits, expression.Limits):
            raise TypeError(f"limits must be an expression.Limits, got {type(limits).__name__}")
        self.limits = limits

    def __call__(self, text):
        try:
            return expression.format_value(expression.evaluate(text, self.limits))
        except expression.ExpressionError as e:
            return f"Error: {e}"

    def __repr__(self):
        return f"Calculate(max_chars={self.limits.max_chars}, max_depth={self.limits.max_depth})"
