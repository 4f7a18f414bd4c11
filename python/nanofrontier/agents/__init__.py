"""Part 7: ReAct agents — a language model (or any text generator) that alternates Thought and Action
lines with tool Observations, in the guide's format::

    import nanofrontier as nf
    from nanofrontier import agents

    kb = agents.KnowledgeBase({"Keldor": "The elevation of Keldor is 347 meters."})
    agent = agents.ReActAgent(generate, [agents.Search(kb), agents.Calculate()], max_steps=6)
    trace = agent.run("What is the elevation of Keldor?")
    trace.answer, trace.steps, print(trace.text)

``generate`` is any callable from text to text: a plain Python function, or one of our models wrapped in
:class:`ModelGenerator`. :func:`trace_example` turns a gold trace into an SFT row whose loss mask skips the
observations (``nf.rl.SFTTrainer`` takes such rows). Modules: :mod:`.react` (the loop and the action
parser), :mod:`.tools` (Search over a knowledge base, a safe Calculate), :mod:`.generators`.
"""

from .generators import ModelGenerator, trace_example
from .react import Action, ReActAgent, Step, Trace, observation_spans, parse_action
from .tools import Calculate, KnowledgeBase, Search

__all__ = [
    "Action",
    "Calculate",
    "KnowledgeBase",
    "ModelGenerator",
    "ReActAgent",
    "Search",
    "Step",
    "Trace",
    "observation_spans",
    "parse_action",
    "trace_example",
]
