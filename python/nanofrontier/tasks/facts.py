"""Part 5's task: a small invented world of facts, and a base corpus in which a question is more often
continued (by another question, by itself again, by unrelated text) than answered — so a model pretrained
on it behaves like the guide's raw GPT-3, and post-training (SFT → reward model → PPO, or DPO) has
something to fix. Everything is generated from a seed; no real-world knowledge is needed::

    task = nf.tasks.facts.make_task(seed=0)
    task.questions("heldout")[0].prompt      # 'What is the capital of Vorsena?\\n'
    task.base_corpus[:200]                   # documents ending in '<eos>'
    task.demonstrations("train")[0]          # Example(prompt=..., completion='Its capital is ...<eos>')
    task.pairs("train")[0]                   # Pair(prompt, chosen, rejected, kind='wrong_answer')
    task.score("What is the capital of Vorsena?", "Its capital is Keldor.")
    # {'answered': True, 'correct': ..., 'clean': True, 'answer': 'Keldor'}

The world: four relations over invented names — a country's capital, a device's inventor, where a person
lives, an animal's colour. Each fact is asked one way ("What is the capital of X?") and answered one way
("Its capital is Y."), which is what makes the rule scorer exact: a completion *answered* when its first
line starts with the answer sentence of this question's relation (any well-formed value in the slot), and
is *correct* when the slot holds the true value.

Splits: the questions are split per relation into train and held-out. Demonstrations and the train pairs
use only train questions. For choosing settings without looking at the held-out questions, the train
questions are split once more, per relation, into "fit" and "val" (:data:`VALIDATION_FRACTION` of each
relation's train questions, drawn from the seed): train on the "fit" pairs, compare settings on "val",
then train on all of "train" with the chosen settings and measure "heldout" once.

The base corpus holds every question by default (``heldout_in_base=True``): the base model must have read
the held-out facts to know them, as a pretrained model knows facts its fine-tuning never shows —
post-training teaches the behaviour (answer, then stop), not the facts. With ``heldout_in_base=False`` no
held-out question or answer appears anywhere in the corpus.

Tokens: one per character of a fixed alphabet (letters, digits, space, ``.,?'-`` and newline) plus two
specials written as literal text, ``<pad>`` (id 0) and ``<eos>`` (id 1), the end-of-answer marker and stop
token. A model for this task needs a vocabulary of ``task.tokenizer.vocab_size`` (71) and positions for
``task.block_size`` tokens (a prompt plus its longest completion).

For the trainers and the Part 5 notebooks: ``example_ids`` / ``pair_ids`` / ``prompt_ids`` (token ids as
``nf.rl``'s trainers take them), ``rule_fn`` (the rule as a reward function), ``knowledge_probe`` (does the
model know the facts, apart from whether it answers), ``evaluate(..., ref_model=)`` (rates, and the KL to a
reference on the model's own samples), ``sampled_pairs`` (on-policy pairs judged by the rule), and
:func:`base_model` (the pretrained base model, cached on disk so notebooks share it).
"""

import dataclasses
import hashlib
import json
import os
import random
import re
import shutil
import string
import tempfile
import time
from dataclasses import dataclass

import numpy as np

from ..exceptions import InvalidArgumentError

PAD, EOS = "<pad>", "<eos>"
ALPHABET = string.ascii_letters + string.digits + " .,?'-\n"
RELATIONS = ("capital", "inventor", "home", "color")
COLORS = (
    "red",
    "blue",
    "green",
    "yellow",
    "purple",
    "orange",
    "white",
    "black",
    "grey",
    "pink",
    "silver",
    "golden",
)
# what a rejected completion of a preference pair is, in the guide's words: the raw model continues the
# question with another one, repeats it, writes something unrelated — or answers, wrongly
PAIR_KINDS = ("continuation", "repetition", "unrelated", "wrong_answer")
# the share of each relation's train questions set aside as the "val" split (the rest is "fit")
VALIDATION_FRACTION = 0.25
SPLITS = ("train", "heldout", "fit", "val")


# ---------------------------------------------------------------- tokenizer


class FactsTokenizer:
    """Character-level over :data:`ALPHABET`, plus ``<pad>`` = 0 and ``<eos>`` = 1 written as literal
    text. ``encode`` refuses a character outside the alphabet (``InvalidArgumentError``); ``decode`` turns
    the specials back into their text, or drops them with ``skip_special=True``."""

    specials = (PAD, EOS)

    def __init__(self):
        self.itos = list(self.specials) + sorted(ALPHABET)
        self.stoi = {s: i for i, s in enumerate(self.itos)}
        self.pad_id, self.eos_id = self.stoi[PAD], self.stoi[EOS]
        self.newline_id = self.stoi["\n"]

    @property
    def vocab_size(self):
        return len(self.itos)

    def encode(self, text):
        """``list[int]``: one id per character, one per ``<pad>`` / ``<eos>``."""
        ids, stoi = [], self.stoi
        for piece in re.split(r"(<pad>|<eos>)", text):
            if piece in (PAD, EOS):
                ids.append(stoi[piece])
                continue
            for c in piece:
                i = stoi.get(c)
                if i is None:
                    raise InvalidArgumentError(
                        f"FactsTokenizer.encode: character {c!r} is not in the alphabet"
                    )
                ids.append(i)
        return ids

    def decode(self, ids, skip_special=False):
        """The text of a sequence of ids (any iterable of ints); ``skip_special`` drops the specials."""
        out, n = [], len(self.itos)
        for i in ids:
            i = int(i)
            if not 0 <= i < n:
                raise InvalidArgumentError(
                    f"FactsTokenizer.decode: id {i} is outside the vocabulary [0, {n})"
                )
            if skip_special and i < len(self.specials):
                continue
            out.append(self.itos[i])
        return "".join(out)

    def to_dict(self):
        return {"type": "facts", "itos": list(self.itos)}

    @classmethod
    def from_dict(cls, d):
        tok = cls()
        if d.get("type") != "facts" or d.get("itos") != tok.itos:
            raise InvalidArgumentError(f"FactsTokenizer.from_dict: not this tokenizer's dict: {d!r:.100}")
        return tok

    def __repr__(self):
        return f"FactsTokenizer(vocab_size={self.vocab_size}, pad_id={self.pad_id}, eos_id={self.eos_id})"


# ---------------------------------------------------------------- the world


@dataclass(frozen=True)
class Question:
    """One fact as a question: ``relation`` of ``subject`` is ``answer``."""

    relation: str
    subject: str
    answer: str

    @property
    def text(self):
        return _QUESTION[self.relation].format(s=self.subject)

    @property
    def prompt(self):
        """What a model is given: the question and a newline (the completion follows on the next line)."""
        return self.text + "\n"

    def answer_text(self, value=None):
        """The answer sentence, with the true value or ``value`` in its slot."""
        return _ANSWER[self.relation].format(s=self.subject, v=self.answer if value is None else value)


_QUESTION = {
    "capital": "What is the capital of {s}?",
    "inventor": "Who invented the {s}?",
    "home": "Where does {s} live?",
    "color": "What color is the {s}?",
}
# the answers do not repeat the subject: a tiny model then needs only to recall the value (copying a name
# from the question back into the answer is a skill of its own, which 2 minutes of pretraining do not teach)
_ANSWER = {
    "capital": "Its capital is {v}.",
    "inventor": "It was invented by {v}.",
    "home": "They live in {v}.",
    "color": "It is {v}.",
}
_NAME = r"[A-Z][a-z]+"
_SLOT = {"capital": _NAME, "inventor": _NAME, "home": _NAME, "color": r"[a-z]+"}


@dataclass(frozen=True)
class Example:
    """An SFT demonstration: ``prompt`` (the question and a newline), ``completion`` (ends in ``<eos>``)."""

    prompt: str
    completion: str


@dataclass(frozen=True)
class Pair:
    """A preference: ``chosen`` (the correct answer) ≻ ``rejected`` (of ``kind`` in :data:`PAIR_KINDS`),
    both completions of ``prompt`` ending in ``<eos>``."""

    prompt: str
    chosen: str
    rejected: str
    kind: str


_ONSETS = [
    "b",
    "d",
    "f",
    "g",
    "k",
    "l",
    "m",
    "n",
    "p",
    "r",
    "s",
    "t",
    "v",
    "z",
    "br",
    "dr",
    "gr",
    "kl",
    "tr",
    "th",
    "sh",
    "st",
]
_VOWELS = ["a", "e", "i", "o", "u", "a", "e", "i", "o", "u", "ae", "ou"]
_CODAS = ["", "", "", "n", "r", "l", "s", "th", "m", "x"]
_DEVICE_ENDS = ["scope", "phone", "wheel", "loom", "lamp", "press", "meter", "graph"]
_ANIMAL_ENDS = ["bat", "fox", "mole", "wing", "hound", "toad", "finch", "crab"]
_FILLER_SUBJECTS = [
    "The old mill",
    "The market",
    "A quiet road",
    "The harbour",
    "My neighbour's garden",
    "The library",
    "The north bridge",
    "This winter",
    "The night train",
    "The bakery",
    "Our kitchen",
    "The long valley",
]
_FILLER_PREDICATES = [
    "is closed on Sundays",
    "smells of rain",
    "was painted last year",
    "looks lovely in spring",
    "needs a new roof",
    "is busy in the morning",
    "was quiet all week",
    "has a blue door",
    "is full of birds",
    "stays warm at night",
    "is older than it looks",
    "opens at nine",
]
_FILLER_PLACES = [
    "Many people visit {c} in summer.",
    "The roads around {c} are narrow.",
    "{p} walked to the river and back.",
    "{p} likes to read in the evening.",
    "It rained in {c} for three days.",
    "{p} has two brothers and a cat.",
]


class _Names:
    """Invented names, unique across the whole world (no name is ever two things)."""

    def __init__(self, rng):
        self.rng, self.used = rng, set()

    def _stem(self, syllables):
        r = self.rng
        return "".join(r.choice(_ONSETS) + r.choice(_VOWELS) for _ in range(syllables - 1)) + (
            r.choice(_ONSETS) + r.choice(_VOWELS) + r.choice(_CODAS)
        )

    def take(self, make):
        for _ in range(1000):
            name = make()
            if name not in self.used and 4 <= len(name) <= 9:
                self.used.add(name)
                return name
        raise InvalidArgumentError("facts: ran out of distinct names; ask for fewer entities")

    def proper(self):
        return self.take(lambda: self._stem(self.rng.choice((2, 2, 3))).capitalize())

    def device(self):
        return self.take(lambda: self._stem(1) + self.rng.choice(_DEVICE_ENDS))

    def animal(self):
        return self.take(lambda: self._stem(1) + self.rng.choice(_ANIMAL_ENDS))


# ---------------------------------------------------------------- the task


class FactsTask:
    """The generated task; build it with :func:`make_task`. Attributes: ``tokenizer``, ``base_corpus``
    (one string of documents each ending in ``<eos>``), ``block_size``, ``stop_ids``; methods
    ``questions``, ``demonstrations``, ``pairs``, ``score``, ``batch``, ``evaluate``."""

    def __init__(
        self,
        seed,
        n_per_relation,
        heldout_fraction,
        n_base_docs,
        p_answer,
        p_question,
        p_repeat,
        heldout_in_base,
    ):
        self.seed, self.heldout_in_base = seed, heldout_in_base
        # everything the generated data depends on (the base-model cache is keyed by it)
        self.params = {"seed": seed, "n_per_relation": n_per_relation, "heldout_fraction": heldout_fraction,
                       "n_base_docs": n_base_docs, "p_answer": p_answer, "p_question": p_question,
                       "p_repeat": p_repeat, "heldout_in_base": heldout_in_base}
        self.p_answer, self.p_question, self.p_repeat = p_answer, p_question, p_repeat
        self.tokenizer = FactsTokenizer()
        # the scorer reads a completion's first line only, so generation may stop at a newline as well
        self.stop_ids = (self.tokenizer.eos_id, self.tokenizer.newline_id)
        rng = random.Random(f"facts:{seed}")
        names = _Names(rng)
        n = n_per_relation
        countries = [names.proper() for _ in range(n)]
        cities = [names.proper() for _ in range(n)]
        people = [names.proper() for _ in range(2 * n)]  # n inventors and n residents
        devices = [names.device() for _ in range(n)]
        animals = [names.animal() for _ in range(n)]
        self.cities, self.people = cities, people
        by_rel = {
            "capital": [Question("capital", c, y) for c, y in zip(countries, cities)],
            "inventor": [Question("inventor", d, p) for d, p in zip(devices, people[:n])],
            "home": [Question("home", p, rng.choice(cities)) for p in people[n:]],
            "color": [Question("color", a, rng.choice(COLORS)) for a in animals],
        }
        self._values = {"capital": cities, "inventor": people[:n], "home": cities, "color": list(COLORS)}
        self._split = {"train": [], "heldout": []}
        for rel in RELATIONS:
            qs = list(by_rel[rel])
            rng.shuffle(qs)
            k = min(len(qs) - 1, max(1, round(heldout_fraction * len(qs)))) if heldout_fraction > 0 else 0
            self._split["heldout"] += qs[:k]
            self._split["train"] += qs[k:]
        # validation: a part of the train questions, drawn from a stream of its own so the other data of
        # a seed stay as they were before this split existed
        val_rng = random.Random(f"facts:{seed}:val")
        self._split["fit"], self._split["val"] = [], []
        for rel in RELATIONS:
            qs = [q for q in self._split["train"] if q.relation == rel]
            k = round(VALIDATION_FRACTION * len(qs)) if len(qs) > 1 else 0
            val = set(val_rng.sample(range(len(qs)), k))
            self._split["val"] += [q for i, q in enumerate(qs) if i in val]
            self._split["fit"] += [q for i, q in enumerate(qs) if i not in val]
        self._by_text = {q.text: q for qs in self._split.values() for q in qs}
        self._longest_question = max(len(q.text) for q in self._by_text.values())
        longest_name = max(len(n) for n in cities + people)
        self._longest_unrelated = max(
            max(len(x) for x in _FILLER_SUBJECTS) + 1 + max(len(x) for x in _FILLER_PREDICATES) + 1,
            max(len(x.format(c="", p="")) for x in _FILLER_PLACES) + longest_name,
        )
        self.base_corpus = self._make_base_corpus(n_base_docs, random.Random(f"facts:{seed}:base"))
        longest = max(
            len(self.tokenizer.encode(q.prompt)) + self._longest_completion(q) for q in self.questions()
        )
        self.block_size = longest
        self.max_new_tokens = max(self._longest_completion(q) for q in self.questions())
        self._pairs = {s: self._make_pairs(s, random.Random(f"facts:{seed}:pairs:{s}"))
                       for s in ("train", "heldout")}

    # ------------------------------------------------------------ the data

    def questions(self, split="all"):
        """The questions of ``split``: "train", "heldout", "fit", "val" (the two parts of "train") or
        "all" (a new list each call)."""
        if split == "all":
            return self._split["train"] + self._split["heldout"]
        return list(self._split[_check_split(split)])

    def question(self, text):
        """The :class:`Question` whose text (with or without its trailing newline) is ``text``."""
        q = self._by_text.get(text.rstrip("\n"))
        if q is None:
            raise InvalidArgumentError(f"facts: {text!r:.80} is not a question of this task")
        return q

    def demonstrations(self, split="train"):
        """One :class:`Example` per question of ``split``: the question → its correct answer + ``<eos>``."""
        return [Example(q.prompt, q.answer_text() + EOS) for q in self.questions(split)]

    def pairs(self, split="train", kinds=PAIR_KINDS):
        """Preference pairs on the questions of ``split``, one of each kind in :data:`PAIR_KINDS` per
        question (shuffled), or only those of ``kinds``. "train" pairs are for the reward model and DPO;
        "heldout" pairs (on the held-out questions) are for measuring them only. "fit" and "val" pairs are
        the train pairs of those questions (the same pairs, not new ones)."""
        kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
        bad = [k for k in kinds if k not in PAIR_KINDS]
        if bad or not kinds:
            raise InvalidArgumentError(f"facts.pairs: kinds must be some of {PAIR_KINDS}, got {kinds!r}")
        split = _check_split(split)
        if split in ("fit", "val"):
            prompts = {q.prompt for q in self._split[split]}
            return [p for p in self._pairs["train"] if p.kind in kinds and p.prompt in prompts]
        return [p for p in self._pairs[split] if p.kind in kinds]

    def unrelated(self, rng):
        """One line of unrelated, plausible text (never an answer sentence)."""
        if rng.random() < 0.5:
            return f"{rng.choice(_FILLER_SUBJECTS)} {rng.choice(_FILLER_PREDICATES)}."
        return rng.choice(_FILLER_PLACES).format(c=rng.choice(self.cities), p=rng.choice(self.people))

    def _make_base_corpus(self, n_docs, rng):
        # a document: a question, then 1-3 lines, each (relative to the latest question) its answer, another
        # question, the same question again, or an unrelated line; documents end in <eos>
        pool = self.questions("all" if self.heldout_in_base else "train")
        docs = []
        for _ in range(n_docs):
            q = rng.choice(pool)
            lines = [q.text]
            for _ in range(rng.choice((1, 2, 3))):
                u = rng.random()
                if u < self.p_answer:
                    lines.append(q.answer_text())
                elif u < self.p_answer + self.p_question:
                    q = _other(rng, pool, q)
                    lines.append(q.text)
                elif u < self.p_answer + self.p_question + self.p_repeat:
                    lines.append(q.text)
                else:
                    lines.append(self.unrelated(rng))
            docs.append("\n".join(lines) + EOS)
        return "".join(docs)

    def _make_pairs(self, split, rng):
        out = []
        pool = self.questions(split)  # the other question of a continuation comes from the same split
        for q in pool:
            chosen = q.answer_text() + EOS
            other = _other(rng, pool, q)
            wrong = rng.choice([v for v in self._values[q.relation] if v != q.answer])
            rejected = {
                "continuation": other.text,
                "repetition": q.text,
                "unrelated": self.unrelated(rng),
                "wrong_answer": q.answer_text(wrong),
            }
            out += [Pair(q.prompt, chosen, rejected[k] + EOS, k) for k in PAIR_KINDS]
        rng.shuffle(out)
        return out

    def _longest_completion(self, q):
        # the longest answer sentence (any value in the slot), question or unrelated line, plus <eos>
        longest_value = max(len(v) for v in self._values[q.relation])
        sentence = len(q.answer_text()) - len(q.answer) + longest_value
        return max(sentence, self._longest_question, self._longest_unrelated) + 1

    # ------------------------------------------------------------ the rule

    def score(self, question, completion):
        """Score a completion by rule, with no learned judge. ``question``: a :class:`Question` or its
        text; ``completion``: the generated text (``<eos>`` and what follows it are ignored).

        Returns ``{"answered", "correct", "clean", "answer"}``: *answered* when the completion's first line
        starts with the answer sentence of this question's relation (any well-formed value in the slot —
        a capitalised name, or a lower-case colour — then the full stop); *correct* when that value is the
        true one; *clean* when the line holds nothing else (the model answered and stopped); *answer* the
        value it gave (None if it did not answer)."""
        q = question if isinstance(question, Question) else self.question(question)
        text = completion.split(EOS, 1)[0].split("\n", 1)[0].replace(PAD, "")
        text = text.lstrip(" ")
        head, tail = _ANSWER[q.relation].split("{v}")
        head = head.format(s=q.subject)
        m = re.match(re.escape(head) + f"({_SLOT[q.relation]})" + re.escape(tail), text)
        if m is None:
            return {"answered": False, "correct": False, "clean": False, "answer": None}
        value = m.group(1)
        return {
            "answered": True,
            "correct": value == q.answer,
            "clean": text[m.end() :].strip() == "",
            "answer": value,
        }

    # ------------------------------------------------------------ tensors for training

    def batch(self, prompts, completions):
        """Right-padded arrays in the post-training convention, prompt then completion in one row:
        ``input_ids`` (B, T) int64 (``<pad>`` after the end), ``attention_mask`` (B, T) bool (prompt and
        completion tokens), ``completion_mask`` (B, T) bool (the completion tokens, the ones scored)."""
        if len(prompts) != len(completions) or not prompts:
            raise InvalidArgumentError(
                f"facts.batch: {len(prompts)} prompts and {len(completions)} completions;"
                " need the same number, at least one"
            )
        enc = self.tokenizer.encode
        rows = [(enc(p), enc(c)) for p, c in zip(prompts, completions)]
        t = max(len(p) + len(c) for p, c in rows)
        ids = np.full((len(rows), t), self.tokenizer.pad_id, np.int64)
        attn = np.zeros((len(rows), t), bool)
        comp = np.zeros((len(rows), t), bool)
        for r, (p, c) in enumerate(rows):
            ids[r, : len(p) + len(c)] = p + c
            attn[r, : len(p) + len(c)] = True
            comp[r, len(p) : len(p) + len(c)] = True
        return {"input_ids": ids, "attention_mask": attn, "completion_mask": comp}

    def evaluate(
        self,
        model,
        split="heldout",
        samples_per_question=1,
        temperature=1.0,
        top_k=None,
        seed=0,
        max_new_tokens=None,
        ref_model=None,
    ):
        """Generate from ``model`` for every question of ``split`` (``samples_per_question`` times each, in
        one batch) and score by rule. Returns ``{"answer_rate", "accuracy", "clean_rate", "n", "samples"}``:
        rates over all samples (accuracy = correct / all), ``samples`` a list of (question text, completion
        text, score). Generation stops at ``<eos>`` or a newline (``stop_ids``).

        ``ref_model``: also measure how far ``model`` has moved from it: ``"kl"``, the mean over the samples
        of the summed log p_model − log p_ref of each completion's tokens (stop token included) — the k1
        (Monte Carlo) estimate of KL(model ‖ ref) per completion, in nats, unbiased at ``temperature=1``
        with no ``top_k`` (otherwise a measure of the drift on what was sampled, not the KL) — and
        ``"kl_sem"``, its standard error."""
        if samples_per_question < 1:
            raise InvalidArgumentError(
                f"facts.evaluate: samples_per_question must be >= 1, got {samples_per_question}"
            )
        qs = [q for q in self.questions(split) for _ in range(samples_per_question)]
        prompts = [self.tokenizer.encode(q.prompt) for q in qs]
        tokens, _ = model.generate(
            prompts,
            max_new_tokens or self.max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            seed=seed,
            stop_tokens=list(self.stop_ids),
        )
        samples = []
        for q, t in zip(qs, tokens):
            text = self.tokenizer.decode(t)
            samples.append((q.text, text, self.score(q, text)))
        n = len(samples)
        rate = {k: sum(s[2][k] for s in samples) / n for k in ("answered", "correct", "clean")}
        out = {
            "answer_rate": rate["answered"],
            "accuracy": rate["correct"],
            "clean_rate": rate["clean"],
            "n": n,
            "samples": samples,
        }
        if ref_model is not None:
            logp = self._completion_logp
            kl = logp(model, prompts, tokens) - logp(ref_model, prompts, tokens)
            out["kl"], out["kl_sem"] = float(kl.mean()), float(kl.std() / np.sqrt(max(1, n - 1)))
        return out

    def _completion_logp(self, model, prompts, tokens, chunk=64):
        """(N,) float64: the summed log-probs of each completion under ``model`` (no gradients)."""
        from .. import no_grad
        from ..rl.sequences import pack, sequence_logprobs

        out = []
        with no_grad():
            for i in range(0, len(prompts), chunk):
                comps = [list(t) for t in tokens[i : i + chunk]]
                b = pack(prompts[i : i + chunk], comps, self.tokenizer.pad_id)
                lp = sequence_logprobs(model, b.input_ids, b.completion_mask)
                out.append(lp.numpy().astype(np.float64))
        return np.concatenate(out)

    # ------------------------------------------------------------ token ids for the nf.rl trainers

    def example_ids(self, examples=None, split="train"):
        """``(prompt_ids, completion_ids)`` per demonstration, as ``nf.rl.SFTTrainer`` takes them:
        ``examples`` (a list of :class:`Example`) or, when None, every demonstration of ``split``."""
        enc = self.tokenizer.encode
        examples = self.demonstrations(split) if examples is None else examples
        return [(enc(e.prompt), enc(e.completion)) for e in examples]

    def pair_ids(self, pairs):
        """``(prompt_ids, chosen_ids, rejected_ids)`` per :class:`Pair`, as ``nf.rl.RewardTrainer`` and
        ``nf.rl.DPOTrainer`` take them."""
        enc = self.tokenizer.encode
        return [(enc(p.prompt), enc(p.chosen), enc(p.rejected)) for p in pairs]

    def prompt_ids(self, split="train"):
        """The prompts of ``split`` as ``nf.rl.PPOTrainer`` / ``GRPOTrainer`` take them: one dict per
        question, ``{"prompt": ids, "question": text}``."""
        enc = self.tokenizer.encode
        return [{"prompt": enc(q.prompt), "question": q.text} for q in self.questions(split)]

    def rule_fn(self, what="answered"):
        """The rule as a reward function ``f(prompt, completion, **extras) -> float`` for the online
        trainers (with ``decode=task.tokenizer.decode``): 1.0 when :meth:`score` says ``what``
        ("answered", "correct" or "clean") of the completion of that prompt, else 0.0. Named
        ``rule_<what>`` (the trainers log it under that name)."""
        if what not in ("answered", "correct", "clean"):
            raise InvalidArgumentError(
                f"facts.rule_fn: what must be 'answered', 'correct' or 'clean', got {what!r}"
            )

        def rule(prompt, completion, **extras):
            if not isinstance(prompt, str) or not isinstance(completion, str):
                raise InvalidArgumentError("facts rule: prompt and completion must be text (give the trainer "
                                           "decode=task.tokenizer.decode)")
            return float(self.score(prompt, completion)[what])

        rule.__name__ = rule.__qualname__ = f"rule_{what}"
        return rule

    def sampled_pairs(self, model, split="train", samples_per_question=4, temperature=1.0, seed=0):
        """On-policy preference pairs: ``samples_per_question`` completions of each question of ``split``
        sampled from ``model`` and judged by the rule; every sample that is not a correct, clean answer
        becomes the rejected side of a pair whose chosen side is the correct answer (kind "sampled"). The
        rejected texts are what this model actually writes, so DPO pushes down its own mistakes rather
        than text it would never produce. Returns a list of :class:`Pair` (possibly empty, when every
        sample was right)."""
        if samples_per_question < 1:
            raise InvalidArgumentError(f"facts.sampled_pairs: samples_per_question must be >= 1, got "
                                       f"{samples_per_question}")
        r = self.evaluate(model, split, samples_per_question=samples_per_question, temperature=temperature,
                          seed=seed)
        out = []
        for text, completion, sc in r["samples"]:
            if sc["correct"] and sc["clean"]:
                continue
            q = self.question(text)
            out.append(Pair(q.prompt, q.answer_text() + EOS, completion, "sampled"))
        return out

    def knowledge_probe(self, model, split="heldout"):
        """Knowledge apart from behaviour: given the question and the start of its answer sentence
        ("...Its capital is "), does greedy decoding fill in the true value? The fraction right over the
        questions of ``split``."""
        qs = self.questions(split)
        heads = [q.answer_text().split(q.answer)[0] for q in qs]
        n_new = max(len(v) for vals in self._values.values() for v in vals) + 2  # value, ".", stop
        toks, _ = model.generate([self.tokenizer.encode(q.prompt + h) for q, h in zip(qs, heads)],
                                 n_new, temperature=0.0, stop_tokens=list(self.stop_ids))
        right = [self.score(q, h + self.tokenizer.decode(t))["correct"] for q, h, t in zip(qs, heads, toks)]
        return float(np.mean(right))

    def __repr__(self):
        return (
            f"FactsTask(seed={self.seed}, questions={len(self.questions())} "
            f"(train {len(self._split['train'])}, heldout {len(self._split['heldout'])}), "
            f"base_corpus={len(self.base_corpus):,} chars, pairs={len(self._pairs['train'])})"
        )


def _other(rng, pool, q):
    """A question of ``pool`` other than ``q`` (``q`` itself if it is the only one)."""
    if len(pool) < 2:
        return q
    while True:
        o = rng.choice(pool)
        if o is not q:
            return o


def _check_split(split):
    if split not in SPLITS:
        raise InvalidArgumentError(f"facts: split must be one of {SPLITS} or 'all', got {split!r}")
    return split


def cache_dir():
    """Where :func:`base_model` keeps pretrained base models: ``facts_base/`` under
    :func:`nanofrontier.data.cache_dir` (``$NANOFRONTIER_CACHE`` if set, else the per-user cache)."""
    from ..data import cache_dir as root

    return str(root("facts_base"))


def base_model(task, *, n_layer=2, n_head=4, n_embd=128, steps=2000, batch_size=16, block_size=128, lr=3e-3,
               warmup_steps=50, weight_decay=0.1, seed=0, cache=True, directory=None, progress=False):
    """The base model of ``task``: a GPT pretrained by next-token loss on ``task.base_corpus`` (random
    windows of ``block_size``, AdamW betas 0.9/0.99, warmup then cosine to 0.1 × ``lr``, clip 1.0), the
    raw model post-training starts from. Returns ``(model, info)``; ``info`` holds ``steps``, ``tokens``,
    ``seconds`` and ``cpu_seconds`` of the pretraining (as measured when it ran), ``loss`` (last step),
    ``knowledge`` (:meth:`FactsTask.knowledge_probe` on the held-out questions), ``cached`` (True when
    loaded from disk) and ``path``.

    With ``cache=True`` the weights are saved under ``directory`` (default :func:`cache_dir`) in a folder
    named by a hash of everything the result depends on (the task's parameters, the model and training
    settings, the seed), written to a temporary folder and renamed into place, so notebooks share one
    pretraining and a concurrent or interrupted run never leaves half a model. The same call on another
    machine gives the same weights up to floating-point summation order."""
    from .. import manual_seed, optim, train
    from ..models import GPT, GPTConfig

    for name, v in (("n_layer", n_layer), ("n_head", n_head), ("n_embd", n_embd), ("steps", steps),
                    ("batch_size", batch_size), ("block_size", block_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise InvalidArgumentError(f"facts.base_model: {name} must be an int >= 1, got {v!r}")
    if block_size < task.block_size:
        raise InvalidArgumentError(f"facts.base_model: block_size={block_size} is shorter than the task's "
                                   f"longest prompt + completion ({task.block_size} tokens)")
    settings = {"task": task.params, "n_layer": n_layer, "n_head": n_head, "n_embd": n_embd, "steps": steps,
                "batch_size": batch_size, "block_size": block_size, "lr": lr, "warmup_steps": warmup_steps,
                "weight_decay": weight_decay, "seed": seed, "version": 1}
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    path = os.path.join(directory or cache_dir(), f"{key}")
    if cache and os.path.isfile(os.path.join(path, "info.json")):
        with open(os.path.join(path, "info.json")) as f:
            info = json.load(f)
        with np.load(os.path.join(path, "weights.npz")) as z:
            model = GPT._from_state(info["config"], {k: z[k] for k in z.files})
        model.eval()
        info.update(cached=True, path=path)
        return model, info

    manual_seed(seed)
    config = GPTConfig(vocab_size=task.tokenizer.vocab_size, block_size=block_size, n_layer=n_layer,
                       n_head=n_head, n_embd=n_embd, bias=False)
    model = GPT(config)
    ids = np.array(task.tokenizer.encode(task.base_corpus), dtype=np.int64)
    opt = optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=weight_decay)
    t0, c0 = time.perf_counter(), time.process_time()
    hist = train.fit(model, opt, ids, batch_size=batch_size, block_size=block_size, max_steps=steps, lr=lr,
                     warmup_steps=warmup_steps, min_lr_ratio=0.1, seed=seed, progress=progress)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    model.eval()
    info = {"steps": steps, "tokens": steps * batch_size * block_size, "seconds": seconds, "cpu_seconds": cpu,
            "loss": float(hist.last("loss")), "knowledge": task.knowledge_probe(model, "heldout"),
            "parameters": model.num_parameters(), "load": os.getloadavg()[0], "settings": settings,
            "config": dataclasses.asdict(config)}
    if cache:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{key}.", dir=os.path.dirname(path))
        try:
            np.savez(os.path.join(tmp, "weights.npz"), **model.state_dict())
            with open(os.path.join(tmp, "info.json"), "w") as f:
                json.dump(info, f, indent=1)
            os.replace(tmp, path)
        except OSError:
            if not os.path.isfile(os.path.join(path, "info.json")):  # not a concurrent writer's success
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    info.update(cached=False, path=path if cache else None)
    return model, info


def make_task(
    seed=0,
    *,
    n_per_relation=12,
    heldout_fraction=0.25,
    n_base_docs=20000,
    p_answer=0.25,
    p_question=0.35,
    p_repeat=0.15,
    heldout_in_base=True,
):
    """Build the task from ``seed`` (same seed → same world, corpus, splits and pairs).

    ``n_per_relation`` facts for each of the four relations (12: a 4-layer, 128-wide GPT knows all 48
    after ≈ 1,600-1,800 steps of 16 × 128 tokens; twice as many facts need far more); ``heldout_fraction``
    of each relation's questions held out; ``n_base_docs`` documents in the base corpus, where each line
    after a question is its answer with probability ``p_answer``, another question with ``p_question``,
    the same question again with ``p_repeat``, and unrelated text otherwise. ``heldout_in_base``: whether
    held-out questions (and so their answers) appear in the base corpus (see the module docstring)."""
    if not isinstance(seed, int):
        raise InvalidArgumentError(f"facts.make_task: seed must be an int, got {seed!r}")
    if not 2 <= n_per_relation <= 200:
        raise InvalidArgumentError(
            f"facts.make_task: n_per_relation must be in [2, 200], got {n_per_relation}"
        )
    if not 0 <= heldout_fraction < 1:
        raise InvalidArgumentError(
            f"facts.make_task: heldout_fraction must be in [0, 1), got {heldout_fraction}"
        )
    if n_base_docs < 0:
        raise InvalidArgumentError(f"facts.make_task: n_base_docs must be >= 0, got {n_base_docs}")
    for name, p in (("p_answer", p_answer), ("p_question", p_question), ("p_repeat", p_repeat)):
        if not 0 <= p <= 1:
            raise InvalidArgumentError(f"facts.make_task: {name} must be in [0, 1], got {p}")
    if p_answer + p_question + p_repeat > 1 + 1e-9:
        raise InvalidArgumentError(
            f"facts.make_task: p_answer + p_question + p_repeat = {p_answer + p_question + p_repeat:.3f} > 1"
        )
    return FactsTask(
        seed, n_per_relation, heldout_fraction, n_base_docs, p_answer, p_question, p_repeat, heldout_in_base
    )
