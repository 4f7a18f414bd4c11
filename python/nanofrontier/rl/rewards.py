"""Rule-based rewards (no learned judge) as plain functions for :class:`nanofrontier.rl.GRPOTrainer`
(or any loop)::

    f(completion, **fields) -> float        # completion: the model's text; fields: the example's

Each names its fields as keyword parameters, so the trainer (which calls a function that has a
``completion`` parameter by keyword, giving it only the extras it names) passes them from the prompt
dicts ``{"prompt": ids, "answer": 42}`` / ``{"prompt": ids, "numbers": [...], "target": 46}``. Extra
fields are ignored (``**_``). None of them raises on any completion text; a non-string gives 0.0.

- :func:`correctness_reward` — 1.0 when the final answer equals ``answer``. The final answer is the
  content of the last ``<answer>…</answer>``, else the rest of the line after the last ``Answer:``
  (:func:`nanofrontier.tasks.arithmetic.extract_answer`). Formatting rules
  (:func:`~nanofrontier.tasks.arithmetic.parse_number`): whitespace and a trailing ``.`` ignored,
  thousands commas ``1,234`` accepted, numbers compared by value (``42`` = ``42.0`` = ``84/2``); an answer
  that is not a number is compared as text after stripping and collapsing whitespace (case kept).
  Marked ``is_correctness_rule`` (the trainer's ``accuracy`` metric uses it).
- :func:`format_reward` (strict) — 1.0 when the whole completion, stripped, is exactly
  ``<think>…</think>`` then ``<answer>…</answer>`` (whitespace between), each tag once, the answer
  non-empty. :func:`lenient_format_reward` — 1.0 for a ``<think>…</think>`` block followed somewhere by a
  non-empty ``<answer>…</answer>``, text allowed around them, and the opening ``<think>`` may be missing
  (for prompts that end with it, as R1-Zero's template does); 0.5 for an ``<answer>…</answer>`` alone.
- :func:`countdown_reward` — 1.0 when the answer (as above; the whole completion if it has neither
  marker) is an expression of the given ``numbers`` that reaches ``target``, checked by
  :func:`nanofrontier.tasks.countdown.check` (its own parser, exact fractions; never ``eval``).
- :func:`sentence_answer_reward` / :func:`sentence_format_reward` — Part 8's rules for answers written as
  one plain sentence ending in ``<number>.`` (``" 7+5=12, 4+8+1=13, so 132."`` or ``" 132."``), parsed by
  :func:`nanofrontier.tasks.prose_sums.parse_answer`: 1.0 when that final number is ``answer`` (marked
  ``is_correctness_rule``); 1.0 when the completion is such a sentence at all.
"""

import re

from ..tasks.arithmetic import extract_answer, parse_number
from ..tasks.countdown import check
from ..tasks.prose_sums import parse_answer as _sentence_answer

_SPACE = re.compile(r"\s+")


def _same(got, answer):
    a = parse_number(str(answer)) if not isinstance(answer, (int, float)) or isinstance(answer, bool) else \
        parse_number(repr(answer)) if isinstance(answer, float) else answer
    g = parse_number(got)
    if a is not None and g is not None:
        return g == a
    return _SPACE.sub(" ", got.strip()) == _SPACE.sub(" ", str(answer).strip())


def correctness_reward(completion, answer, **_):
    """1.0 when the completion's final answer equals ``answer`` (int, or str), else 0.0."""
    got = extract_answer(completion)
    return 1.0 if got is not None and _same(got, answer) else 0.0


correctness_reward.is_correctness_rule = True

_STRICT = re.compile(r"<think>(?:(?!</?think>|</?answer>).)*</think>\s*"
                     r"<answer>((?:(?!</?think>|</?answer>).)*)</answer>", re.DOTALL)
_MAX = 200_000  # completions longer than this score 0 (the regexes stay linear-time on the rest)


def format_reward(completion, **_):
    """Strict: 1.0 for exactly ``<think>…</think>`` then ``<answer>…</answer>`` (non-empty answer)."""
    if not isinstance(completion, str) or len(completion) > _MAX:
        return 0.0
    m = _STRICT.fullmatch(completion.strip())
    return 1.0 if m and m.group(1).strip() else 0.0


def lenient_format_reward(completion, **_):
    """Lenient: 1.0 for a think block (opening tag optional) followed by a non-empty answer block, text
    around allowed; 0.5 for an answer block alone; else 0.0."""
    if not isinstance(completion, str) or len(completion) > _MAX:
        return 0.0
    # plain finds, not a regex search: linear time on any text
    think = completion.find("</think>")
    start = completion.find("<answer>", max(think, 0))
    end = completion.find("</answer>", start) if start >= 0 else -1
    if start < 0 or end < 0 or not completion[start + len("<answer>"):end].strip():
        return 0.0
    return 1.0 if think >= 0 else 0.5


def countdown_reward(completion, numbers, target, **_):
    """1.0 when the completion's answer expression uses only the given ``numbers`` (each at most as
    often as given) and equals ``target``, else 0.0."""
    if not isinstance(completion, str):
        return 0.0
    ans = extract_answer(completion)
    return 1.0 if check(completion if ans is None else ans, numbers, target).ok else 0.0


countdown_reward.is_correctness_rule = True


def sentence_answer_reward(completion, answer, **_):
    """1.0 when the completion is one sentence ending in ``<number>.`` and that number equals ``answer``
    (an int), else 0.0 (:func:`nanofrontier.tasks.prose_sums.parse_answer`)."""
    got = _sentence_answer(completion)
    return 1.0 if got is not None and not isinstance(answer, bool) and got == answer else 0.0


sentence_answer_reward.is_correctness_rule = True


def sentence_format_reward(completion, **_):
    """1.0 when the completion is one sentence ending in ``<number>.``, whatever the number, else 0.0."""
    return 0.0 if _sentence_answer(completion) is None else 1.0
