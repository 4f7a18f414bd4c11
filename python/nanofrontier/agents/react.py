"""The ReAct loop (Yao et al. 2022, "ReAct: Synergizing Reasoning and Acting in Language Models") in the
guide's format::

    Question: What is the elevation of the birthplace of the inventor of the telephone?
    Thought 1: I need to find who invented the telephone.
    Action 1: Search[inventor of telephone]
    Observation 1: Alexander Graham Bell invented the telephone.
    ...
    Answer: 47 meters

The generator (a model, or any Python function from text to text) writes the Thought and Action lines; the
loop stops reading it at the word ``Observation`` (whatever the generator wrote after that is thrown away:
observations come from tools, never from the generator), runs the tool, writes ``Observation n: <result>``
and asks again — until an ``Answer:`` line or the step limit.

Nothing the generator writes can crash the loop: an action that is not ``Tool[argument]``, an unknown
tool, a tool that raises, an empty reply — each becomes an observation saying what was wrong, and the
loop goes on (the step still counts).
"""

import re
from dataclasses import dataclass, field

from ..exceptions import InvalidArgumentError

STOP = "Observation"
_ACTION_LINE = re.compile(r"Action\s*\d*\s*:[ \t]*([^\n]*)")
_THOUGHT_LINE = re.compile(r"Thought\s*\d*\s*:[ \t]*([^\n]*)")
_ANSWER_LINE = re.compile(r"Answer\s*:[ \t]*([^\n]*)")
_CALL = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\[(.*)\]$", re.S)


@dataclass(frozen=True)
class Action:
    """A parsed action: ``tool`` and ``argument``, or ``error`` (a message for the observation)."""

    tool: str = None
    argument: str = None
    error: str = None


def parse_action(text, tools=None, max_chars=300):
    """Read ``Tool[argument]`` from an action string. Returns an :class:`Action` whose ``error`` says what
    is wrong (and how to write it) when the text is not one call of a known tool; never raises."""
    if not isinstance(text, str):
        return Action(error=f"Invalid action: expected text, got {type(text).__name__}.")
    s = text.strip()
    if not s:
        return Action(error="Invalid action: it is empty. Write Tool[argument], e.g. Search[Keldor].")
    if len(s) > max_chars:
        return Action(error=f"Invalid action: longer than {max_chars} characters.")
    m = _CALL.match(s)
    if m is None:
        shown = s if len(s) <= 60 else s[:57] + "..."
        return Action(error=f"Invalid action {shown!r}: write Tool[argument], e.g. Search[Keldor].")
    tool, arg = m.group(1), m.group(2).strip()
    if tools is not None and tool not in tools:
        names = ", ".join(sorted(tools)) or "none"
        return Action(tool=tool, argument=arg, error=f"Unknown tool {tool!r}; the tools are {names}.")
    return Action(tool=tool, argument=arg)


@dataclass
class Step:
    """One Thought / Action / Observation round. ``text``: what the generator wrote (cut before
    ``Observation``); ``thought``, ``action`` (the raw action string, or None): read from it."""

    n: int
    text: str
    thought: str = None
    action: str = None
    tool: str = None
    argument: str = None
    observation: str = None
    error: bool = False


@dataclass
class Trace:
    """A finished run: the ``question``, its ``steps``, the ``answer`` (None when there was none),
    ``stopped`` (``"answer"``, ``"step_limit"``) and the whole transcript ``text``."""

    question: str
    steps: list = field(default_factory=list)
    answer: str = None
    stopped: str = None
    text: str = ""

    @property
    def tool_calls(self):
        return [(s.tool, s.argument) for s in self.steps if s.tool is not None and not s.error]


class ReActAgent:
    """Alternate generator text and tool calls.

    ``generate``: a callable from a prompt text to its continuation text; if it has a true ``batched``
    attribute it takes a list of prompts and returns a list of continuations (:meth:`run_many` then asks
    it about every unfinished question at once). ``tools``: a dict ``{name: callable(argument) -> str}``
    or a list of tools with a ``name`` attribute. ``max_steps``: tool calls before the run is stopped
    without an answer. ``max_observation_chars``: longer observations are cut (with "...")."""

    def __init__(self, generate, tools, *, max_steps=6, max_observation_chars=300, max_action_chars=300):
        if not callable(generate):
            raise TypeError(f"generate must be callable (text -> text), got {type(generate).__name__}")
        if not isinstance(tools, dict):
            tools = list(tools)
            for t in tools:
                if not hasattr(t, "name"):
                    raise TypeError(f"a tool in a list needs a .name; pass a dict {{name: tool}} ({t!r})")
            tools = {t.name: t for t in tools}
        for name, t in tools.items():
            if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise InvalidArgumentError(f"tool name {name!r} must be a word (letters, digits, _)")
            if not callable(t):
                raise TypeError(f"tool {name!r} is not callable")
        for name, v in (("max_steps", max_steps), ("max_observation_chars", max_observation_chars),
                        ("max_action_chars", max_action_chars)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InvalidArgumentError(f"{name} must be an int >= 1, got {v!r}")
        self.generate, self.tools, self.max_steps = generate, tools, max_steps
        self.max_observation_chars, self.max_action_chars = max_observation_chars, max_action_chars

    @staticmethod
    def prompt(question):
        return f"Question: {question.strip()}\n"

    def run(self, question):
        """Run on one question (text); returns its :class:`Trace`."""
        return self.run_many([question])[0]

    def run_many(self, questions):
        """Run on a list of questions; returns their :class:`Trace` objects in order."""
        traces = []
        for q in questions:
            if not isinstance(q, str) or not q.strip():
                raise InvalidArgumentError(f"a question must be non-empty text, got {q!r}")
            traces.append(Trace(q, text=self.prompt(q)))
        active = list(range(len(traces)))
        for n in range(1, self.max_steps + 1):
            if not active:
                break
            outs = self._ask([traces[i].text for i in active])
            still = []
            for i, out in zip(active, outs):
                if not self._advance(traces[i], n, out):
                    still.append(i)
            active = still
        for i in active:
            traces[i].stopped = "step_limit"
        return traces

    def _ask(self, prompts):
        if getattr(self.generate, "batched", False):
            outs = list(self.generate(prompts))
            if len(outs) != len(prompts):
                raise InvalidArgumentError(f"the batched generator returned {len(outs)} texts for "
                                           f"{len(prompts)} prompts")
        else:
            outs = [self.generate(p) for p in prompts]
        return [o if isinstance(o, str) else "" for o in outs]

    def _advance(self, trace, n, out):
        """Append one round to ``trace``; True when it ended with an answer."""
        cut = out.find(STOP)
        text = out if cut < 0 else out[:cut]  # never trust an observation the generator wrote
        text = text.replace("<eos>", "")
        step = Step(n, text)
        thought = _THOUGHT_LINE.search(text)
        step.thought = thought.group(1).strip() if thought else None
        action = _ACTION_LINE.search(text)
        answer = _ANSWER_LINE.search(text)
        if answer is not None and (action is None or answer.start() < action.start()):
            body = text[:answer.end()]
            trace.text += body + ("" if body.endswith("\n") else "\n")
            trace.steps.append(step)
            trace.answer, trace.stopped = answer.group(1).strip(), "answer"
            return True
        if action is not None:
            text = text[:action.end()]  # one action per round: anything after it is dropped
            step.text = text
            step.action = action.group(1).strip()
            parsed = parse_action(step.action, self.tools, self.max_action_chars)
            step.tool, step.argument = parsed.tool, parsed.argument
            if parsed.error is not None:
                obs, step.error = parsed.error, True
            else:
                obs = self._call(parsed.tool, parsed.argument)
                step.error = obs.startswith("Error")
        else:
            obs, step.error = "Invalid: no action. Write 'Action n: Tool[argument]' or 'Answer: ...'.", True
        obs = " ".join(obs.split())  # one line
        if len(obs) > self.max_observation_chars:
            obs = obs[:self.max_observation_chars - 3] + "..."
        step.observation = obs
        trace.text += text + ("" if not text or text.endswith("\n") else "\n") + f"{STOP} {n}: {obs}\n"
        trace.steps.append(step)
        return False

    def _call(self, tool, argument):
        try:
            obs = self.tools[tool](argument)
        except Exception as e:  # noqa: BLE001  (a tool's failure is an observation, not a crash)
            return f"Error: {tool} failed ({type(e).__name__}: {e})"
        return obs if isinstance(obs, str) else str(obs)

    def __repr__(self):
        return f"ReActAgent(tools={sorted(self.tools)}, max_steps={self.max_steps})"


def observation_spans(text):
    """``[(start, end), ...]``: the character spans of ``text`` a tool wrote — on each line that starts
    with ``Observation``, everything after that word up to and including the line's newline. These are the
    spans a model is trained NOT to predict (its loss is masked there)."""
    spans, pos = [], 0
    for line in text.splitlines(keepends=True):
        if line.startswith(STOP):
            spans.append((pos + len(STOP), pos + len(line)))
        pos += len(line)
    return spans
