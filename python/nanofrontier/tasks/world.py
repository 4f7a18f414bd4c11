"""Part 7's world: a seeded, invented world of inventions, their inventors, the cities those inventors were
born in and the cities' elevations — held in a knowledge base of short pages — and multi-hop questions
about it in the guide's shape, each with a gold ReAct trace::

    w = nf.tasks.world.make_world(seed=0)
    w.pages["Keldor"]                  # 'The elevation of Keldor is 347 meters.'
    q = w.questions("heldout")[0]
    q.text     # 'What is the elevation of the birthplace of the inventor of the zarkophone?'
    q.answer   # '347 meters'
    print(q.prompt + q.trace)          # Question / Thought 1 / Action 1: Search[...] / Observation 1 / ...

Two kinds of question: ``"elevation"`` (three searches: the inventor, the inventor's birthplace, the city's
elevation) and ``"age"`` (two searches, then ``Calculate[year - birth year]``: how old the inventor was).

Splits are by entity: a fifth of the cities (by hash of the name) are held out, and with them everyone born
there and everything those people invented. A held-out question mentions only held-out names, so a model
trained on the train questions has never seen any name in it, nor any fact about it: to answer, it has to
look things up. The knowledge base holds the whole world (the tools know everything; the model does not).

Tokens (:class:`WorldTokenizer`): the ReAct keywords, the template words, name syllables and the device
suffixes are single tokens (with and without a leading space); everything else is spelled one character at
a time. Digits are always single characters. A trace is about 140 tokens instead of about 480 characters.
"""

import hashlib
import random
import re
from dataclasses import dataclass

from ..exceptions import InvalidArgumentError

PAD, EOS = "<pad>", "<eos>"
KINDS = ("elevation", "age")
SPLITS = ("train", "heldout")
SYLLABLES = ("ba", "bel", "cor", "da", "dor", "fa", "fen", "ga", "gor", "ha", "kel", "ka", "lan", "li",
             "lo", "mar", "mi", "na", "nor", "pa", "pel", "ra", "ren", "sa", "sel", "ta", "tor", "va", "vel",
             "za", "zor", "bri", "dra", "kro", "tri", "mon", "ril", "sha", "tho", "wen")
DEVICES = ("phone", "scope", "meter", "graph", "lamp", "loom", "wheel", "press", "gear", "tron")
# words of the templates (and of the agents' messages) that become single tokens
WORDS = ("Question", "Thought", "Action", "Observation", "Answer", "Search", "Calculate", "What", "How",
         "Now", "The", "I", "is", "the", "elevation", "of", "birthplace", "inventor", "old", "was", "when",
         "it", "invented", "by", "in", "born", "need", "to", "find", "who", "where", "and", "age", "minus",
         "meters", "years", "No", "results", "for", "Unknown", "tool", "action", "Invalid", "Error",
         "not", "a", "number", "expected")


def _hash_heldout(name, fraction_denominator=5):
    return hashlib.sha256(f"world:{name}".encode()).digest()[0] % fraction_denominator == 0


# ------------------------------------------------------------------------------------------- tokenizer


class WorldTokenizer:
    """Greedy longest-match over a fixed vocabulary: ``<pad>`` (0), ``<eos>`` (1), every printable ASCII
    character and newline, then the multi-character pieces (template words, syllables, device suffixes, in
    lower case and capitalised, with and without a leading space). Any ASCII text encodes; a character
    outside ASCII becomes ``?``. ``decode(encode(t)) == t`` for ASCII text."""

    def __init__(self, pieces=None):
        chars = [chr(c) for c in range(32, 127)] + ["\n"]
        if pieces is None:
            pieces = set()
            for w in WORDS + SYLLABLES + DEVICES:
                for form in (w, w.capitalize()):
                    pieces.update((form, " " + form))
            pieces = sorted(pieces)
        self.itos = [PAD, EOS] + chars + [p for p in pieces if len(p) > 1]
        self.stoi = {s: i for i, s in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            raise InvalidArgumentError("WorldTokenizer: duplicate pieces")
        self._longest = max(len(s) for s in self.itos)
        self.pad_id, self.eos_id = 0, 1

    @property
    def vocab_size(self):
        return len(self.itos)

    def encode(self, text):
        """Token ids of ``text`` (``<eos>`` and ``<pad>`` written literally become their ids)."""
        if not isinstance(text, str):
            raise TypeError(f"encode() takes text, got {type(text).__name__}")
        out, i, n, unk = [], 0, len(text), self.stoi["?"]
        while i < n:
            for k in range(min(self._longest, n - i), 0, -1):
                t = self.stoi.get(text[i:i + k])
                if t is not None:
                    out.append(t)
                    i += k
                    break
            else:
                out.append(unk)
                i += 1
        return out

    def decode(self, ids):
        return "".join(self.itos[int(t)] for t in ids)

    def token_strings(self, ids):
        return [self.itos[int(t)] for t in ids]

    def __repr__(self):
        return f"WorldTokenizer(vocab_size={self.vocab_size})"


# ------------------------------------------------------------------------------------------- the world


@dataclass(frozen=True)
class Question:
    """One multi-hop question. ``prompt``: ``"Question: <text>\\n"``; ``trace``: the gold ReAct trace that
    follows it (Thought / Action / Observation lines, then ``Answer: ...``); ``answer``: the gold answer
    text (``"347 meters"``, ``"53 years"``); ``value``: its number; ``invention``: the entity asked about."""

    text: str
    kind: str
    answer: str
    value: int
    invention: str
    trace: str

    @property
    def prompt(self):
        return f"Question: {self.text}\n"

    @property
    def direct_prompt(self):
        """The same question, to be answered at once: ``"Question: <text>\\nAnswer:"``."""
        return f"Question: {self.text}\nAnswer:"


@dataclass(frozen=True)
class World:
    """The generated world (see the module docstring). ``inventions``: name → (inventor, year);
    ``people``: name → (birthplace, birth year); ``cities``: name → elevation in meters; ``heldout_cities``:
    the held-out ones; ``pages``: the knowledge base, title → one-sentence page."""

    seed: int
    inventions: dict
    people: dict
    cities: dict
    heldout_cities: frozenset
    pages: dict

    def split_of(self, invention):
        """``"heldout"`` when the invention's inventor was born in a held-out city, else ``"train"``."""
        person, _ = self.inventions[invention]
        return "heldout" if self.people[person][0] in self.heldout_cities else "train"

    def names(self, split):
        """Every entity name (inventions, people, cities) of ``split``."""
        _check_split(split)
        out = set()
        for inv, (person, _) in self.inventions.items():
            if self.split_of(inv) == split:
                out.update((inv, person, self.people[person][0]))
        return out

    def questions(self, split, kind=None):
        """Every question of ``split`` (``"train"`` or ``"heldout"``), of one ``kind`` or both, in a fixed
        order (invention name, then kind)."""
        _check_split(split)
        kinds = KINDS if kind is None else (kind,)
        for k in kinds:
            if k not in KINDS:
                raise InvalidArgumentError(f"world: kind must be one of {KINDS}, got {k!r}")
        return [self.question(inv, k) for inv in sorted(self.inventions) if self.split_of(inv) == split
                for k in kinds]

    def question(self, invention, kind):
        """The question of ``kind`` about ``invention``, with its gold trace."""
        if invention not in self.inventions:
            raise InvalidArgumentError(f"world: no invention named {invention!r}")
        person, year = self.inventions[invention]
        city, born = self.people[person]
        obs1, obs2 = self.pages[invention], self.pages[person]
        if kind == "elevation":
            elev = self.cities[city]
            text = f"What is the elevation of the birthplace of the inventor of the {invention}?"
            steps = [(f"I need to find who invented the {invention}.",
                      f"Search[inventor of {invention}]", obs1),
                     (f"Now I need to find where {person} was born.", f"Search[{person} birthplace]", obs2),
                     (f"Now I need the elevation of {city}.", f"Search[{city} elevation]", self.pages[city])]
            answer, value = f"{elev} meters", elev
        elif kind == "age":
            age = year - born
            text = f"How old was the inventor of the {invention} when it was invented?"
            steps = [(f"I need to find who invented the {invention} and when.",
                      f"Search[inventor of {invention}]", obs1),
                     (f"Now I need to find when {person} was born.", f"Search[{person}]", obs2),
                     (f"The age is {year} minus {born}.", f"Calculate[{year}-{born}]", str(age))]
            answer, value = f"{age} years", age
        else:
            raise InvalidArgumentError(f"world: kind must be one of {KINDS}, got {kind!r}")
        trace = "".join(f"Thought {n}: {t}\nAction {n}: {a}\nObservation {n}: {o}\n"
                        for n, (t, a, o) in enumerate(steps, 1)) + f"Answer: {answer}\n"
        return Question(text, kind, answer, value, invention, trace)

    @property
    def kb_text(self):
        """The knowledge base as one text, a page per line (sorted by title)."""
        return "".join(self.pages[t] + "\n" for t in sorted(self.pages))


def _check_split(split):
    if split not in SPLITS:
        raise InvalidArgumentError(f"world: split must be one of {SPLITS}, got {split!r}")


def _name(rng, k, capital=True):
    s = "".join(rng.choice(SYLLABLES) for _ in range(k))
    return s.capitalize() if capital else s


def make_world(seed=0, n_inventions=600, n_cities=120):
    """A world of ``n_inventions`` inventions (each by a different person) and ``n_cities`` cities, from
    ``seed``. Names are made of syllables and distinct across the whole world (no person's first or last
    name is a city's name). Years: inventions 1700 … 1999, inventors 20 … 70 years old at the time;
    elevations 2 … 2999 meters."""
    for name, v, lo in (("n_inventions", n_inventions, 1), ("n_cities", n_cities, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise InvalidArgumentError(f"world: {name} must be an int >= {lo}, got {v!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InvalidArgumentError(f"world: seed must be an int, got {seed!r}")
    rng = random.Random(f"world:{seed}")
    taken = set()

    def fresh(make):
        for _ in range(10_000):
            s = make()
            if s not in taken:
                taken.add(s)
                return s
        raise InvalidArgumentError("world: ran out of distinct names; ask for fewer entities")

    cities = {}
    for _ in range(n_cities):
        cities[fresh(lambda: _name(rng, 2))] = rng.randint(2, 2999)
    heldout = frozenset(c for c in cities if _hash_heldout(c))
    city_list = sorted(cities)
    people, inventions = {}, {}

    def person_name():
        for _ in range(10_000):
            first, last = _name(rng, 2), _name(rng, 2)
            if first not in cities and last not in cities:  # no one is named like a city
                return first + " " + last
        raise InvalidArgumentError("world: ran out of person names; ask for fewer cities")

    for _ in range(n_inventions):
        person = fresh(person_name)
        inv = fresh(lambda: _name(rng, rng.randint(1, 2), capital=False) + rng.choice(DEVICES))
        year = rng.randint(1700, 1999)
        people[person] = (rng.choice(city_list), year - rng.randint(20, 70))
        inventions[inv] = (person, year)
    pages = {}
    for inv, (person, year) in inventions.items():
        pages[inv] = f"The {inv} was invented by {person} in {year}."
    for person, (city, born) in people.items():
        pages[person] = f"{person} was born in {city} in {born}."
    for city, elev in cities.items():
        pages[city] = f"The elevation of {city} is {elev} meters."
    return World(seed, inventions, people, cities, heldout, pages)


_NUMBER = re.compile(r"-?\d+")


def score(question, answer_text):
    """1.0 when the first number in ``answer_text`` equals the question's value, else 0.0 (the unit may be
    missing; any other number first is wrong)."""
    if not isinstance(answer_text, str):
        return 0.0
    m = _NUMBER.search(answer_text)
    return 1.0 if m is not None and int(m.group()) == question.value else 0.0
