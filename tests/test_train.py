"""The training loop (nanofrontier.train): exact resume (fresh objects and a fresh process after Ctrl-C),
gradient accumulation == one big batch, schedule values, clipping, the time budget, fixed-set evaluation,
a custom loss, progress output, and the errors for arguments that would have no effect."""

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import nanofrontier as nf
from nanofrontier.models import GPT, GPTConfig
from nanofrontier.testing import assert_close
from nanofrontier.train import History, ListBatches, RandomBatches, Trainer, fixed_batches, lm_loss

# dropout on, so a resume that lost the random state would show
CFG = GPTConfig(vocab_size=17, block_size=16, n_layer=2, n_head=2, n_embd=16, dropout=0.1)
_rng = np.random.default_rng(0)
# a learnable stream: mostly "next = previous + 1 (mod 17)", some noise
IDS = np.cumsum(np.where(_rng.random(3000) < 0.8, 1, _rng.integers(0, 17, 3000))) % 17
TRAIN, VAL = IDS[:2500], IDS[2500:]


def make(seed=0, cfg=CFG, opt="adamw"):
    nf.manual_seed(seed)
    model = GPT(cfg)
    if opt == "adamw":
        return model, nf.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    return model, nf.optim.SGD(model.parameters(), lr=0.1)


def make_trainer(model, opt, **kw):
    args = dict(eval_batches=fixed_batches(VAL, 3, 4, 8), max_steps=12, eval_every=4, warmup_steps=3,
                progress=False, seed=5)
    args.update(kw)
    batches = args.pop("batches", None) or RandomBatches(TRAIN, 4, 8, seed=1)
    return Trainer(model, opt, batches, **args)


def untimed(history):
    return [{k: v for k, v in row.items() if k not in History.TIME_KEYS} for row in history]


def assert_same_run(a, b):
    """Parameters, optimizer state and history (clock readings aside) bit-identical."""
    for (name, p), q in zip(a.model.named_parameters(), b.model.parameters()):
        np.testing.assert_array_equal(p.numpy(), q.numpy(), err_msg=name)
    sa, sb = a.optimizer.state_dict(), b.optimizer.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    for i, (x, y) in enumerate(zip(sa["state"], sb["state"])):
        assert x[2] == y[2], f"adam step count of parameter {i}"
        np.testing.assert_array_equal(x[0], y[0], err_msg=f"m of parameter {i}")
        np.testing.assert_array_equal(x[1], y[1], err_msg=f"v of parameter {i}")
    assert untimed(a.history) == untimed(b.history)
    assert a.step == b.step and a.tokens == b.tokens


# ---------------------------------------------------------------------------------------- resume


def test_resumed_run_is_bit_identical_to_an_uninterrupted_one(tmp_path):
    ckpt, at5 = tmp_path / "run.safetensors", tmp_path / "at5.safetensors"

    def keep_step5(trainer, row):  # runs after step 5; the file on disk is still the one written at step 5
        if row["step"] == 5:
            at5.write_bytes(ckpt.read_bytes())

    a = make_trainer(*make(), checkpoint=ckpt, checkpoint_every=5, callbacks=keep_step5)
    a.fit()
    assert a.history.stop_reason == "max_steps" and a.step == 12
    assert nf.checkpoint.load(at5, GPT(CFG))["step"] == 5

    # fresh objects, another init and another global random state: all of it must come from the file
    b = make_trainer(*make(seed=99), checkpoint=tmp_path / "b.safetensors")
    b.fit(resume=at5)
    assert b.history.stop_reason == "max_steps"
    assert_same_run(a, b)
    # the history has what was promised: evaluations at 0, 4, 8 and after the last step; lr, loss, grad_norm
    assert [r["step"] for r in a.history if "val_loss" in r] == [0, 4, 8, 12]
    keys = {"lr", "loss", "grad_norm", "tokens", "time", "tokens_per_sec"}
    assert all(keys <= set(r) for r in a.history[:12])
    assert a.history[-1]["val_loss"] < a.history[0]["val_loss"]  # and it learned something


def test_fit_again_continues_like_one_run():
    a = make_trainer(*make(), max_steps=10, eval_every=None)
    a.fit()
    b = make_trainer(*make(), max_steps=10, eval_every=None, callbacks=lambda trainer, row: row["step"] == 5)
    assert b.fit().stop_reason == "callback" and b.step == 6
    b.callbacks = []
    assert b.fit().stop_reason == "max_steps"
    # b evaluated once more, after step 6; evaluations never change the run, so all else is the same
    assert "val_loss" in b.history[6] and "val_loss" not in a.history[6]
    del b.history[6]["val_loss"]
    assert_same_run(a, b)


_CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[2])
from test_train import make, make_trainer

def report(trainer, row):
    print("step", row["step"], flush=True)
    time.sleep(0.01)

t = make_trainer(*make(), checkpoint=sys.argv[1], max_steps=100000, callbacks=report)
h = t.fit()
print(json.dumps({"reason": h.stop_reason, "step": t.step}), flush=True)
"""


def test_ctrl_c_stops_after_the_step_and_leaves_a_checkpoint_that_resumes(tmp_path):
    ckpt = tmp_path / "ctrlc.safetensors"
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(ckpt), str(Path(__file__).parent)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in child.stdout:
            if line.startswith("step") and int(line.split()[1]) >= 5:
                child.send_signal(signal.SIGINT)
                break
        out, err = child.communicate(timeout=60)
    finally:
        child.kill()
    assert child.returncode == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["reason"] == "interrupted" and 6 <= result["step"] < 100000, result
    assert "stopping after this step" in err
    s = result["step"]

    # the checkpoint on disk loads, and resuming it (here, in another process) equals an uninterrupted run
    def stop_at(n):
        return lambda trainer, row: row["step"] == n

    resumed = make_trainer(*make(seed=7), max_steps=100000, callbacks=stop_at(s + 3))
    resumed.fit(resume=ckpt)
    assert resumed.history.stop_reason == "callback" and resumed.step == s + 4
    straight = make_trainer(*make(), max_steps=100000, callbacks=stop_at(s + 3))
    straight.fit()
    assert_same_run(straight, resumed)


# ---------------------------------------------------------------------------------------- accumulation


def test_two_half_batches_equal_one_full_batch():
    """SGD, so parameters follow the gradients linearly (Adam divides near-zero gradients, such as those of
    the attention key biases, by their own size and turns float rounding into lr-sized steps)."""
    cfg = GPTConfig(**{**CFG.__dict__, "dropout": 0.0})  # dropout masks would depend on the micro-batch shape
    batches = [nf.data.get_batch(TRAIN, 8, 8, np.random.default_rng(i)) for i in range(3)]
    runs = {}
    for k in (1, 2, 4):
        t = Trainer(*make(cfg=cfg, opt="sgd"), ListBatches(batches), max_steps=3, schedule="constant",
                    grad_accum=k, grad_clip=None, progress=False)
        t.fit()
        runs[k] = t
    start = make(cfg=cfg)[0]
    moved = max(np.abs(p.numpy() - q.numpy()).max()
                for p, q in zip(runs[1].model.parameters(), start.parameters()))
    assert moved > 1e-3  # the steps did something
    for k in (2, 4):
        for (n, p), q in zip(runs[1].model.named_parameters(), runs[k].model.parameters()):
            assert_close(q, p, atol=1e-6, rtol=1e-5, msg=f"grad_accum={k} vs one batch: {n}")
        # the logged loss is the mean of the micro-batch means == the whole batch's mean loss
        for r1, rk in zip(runs[1].history, runs[k].history):
            assert abs(r1["loss"] - rk["loss"]) < 1e-5
        assert runs[k].tokens == runs[1].tokens == 3 * 8 * 8
        # the last step's accumulated gradients themselves (left in .grad) agree with the one-batch gradient
        for (n, p), q in zip(runs[1].model.named_parameters(), runs[k].model.parameters()):
            assert_close(q.grad, p.grad, atol=1e-6, rtol=1e-4, msg=f"grad_accum={k} gradient of {n}")


# ---------------------------------------------------------------------------------------- schedule, clipping


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_learning_rate_follows_the_schedule(schedule):
    kw = {} if schedule == "constant" else {"min_lr_ratio": 0.2}
    t = make_trainer(*make(), max_steps=20, warmup_steps=5, lr=3e-3, schedule=schedule, eval_batches=None,
                     eval_every=None, **kw)
    t.fit()
    fn = {"cosine": nf.optim.warmup_cosine, "linear": nf.optim.warmup_linear, "constant": None}[schedule]
    for r in t.history:
        s = r["step"]
        want = (3e-3 * min(1.0, (s + 1) / 5) if fn is None
                else fn(s, max_lr=3e-3, warmup_steps=5, total_steps=20, min_lr=6e-4))
        assert r["lr"] == pytest.approx(want, rel=1e-12, abs=0), s
    assert t.optimizer.param_groups[0]["lr"] == t.history[-1]["lr"]  # what the last step used
    assert t.history[0]["lr"] == pytest.approx(3e-3 / 5) and t.history[4]["lr"] == pytest.approx(3e-3)
    assert t.lr_at(20)[0] == pytest.approx(3e-3 if schedule == "constant" else 6e-4)


def test_schedule_per_group_peaks_and_a_custom_function():
    model, _ = make()
    ps = model.parameters()
    opt = nf.optim.AdamW([{"params": ps[:2], "lr": 1e-2}, {"params": ps[2:], "lr": 1e-3}])
    t = make_trainer(model, opt, warmup_steps=0, decay_steps=8, max_steps=4)  # lr=None: each group's own peak
    assert t.lr_at(0) == pytest.approx([1e-2, 1e-3]) and t.lr_at(8) == pytest.approx([1e-3, 1e-4])
    t = make_trainer(*make(), schedule=lambda s: 0.5 ** s, warmup_steps=None, max_steps=4)
    t.fit()
    assert [r["lr"] for r in t.history if "lr" in r] == [1.0, 0.5, 0.25, 0.125]


def test_clipping_scales_the_step_and_logs_the_norm_before():
    cfg = GPTConfig(**{**CFG.__dict__, "dropout": 0.0})
    batch = nf.data.get_batch(TRAIN, 4, 8, np.random.default_rng(3))
    ref, _ = make(cfg=cfg)
    _, loss = ref(*batch)
    loss.backward()
    norm = math.sqrt(sum(float((p.grad.numpy().astype(np.float64) ** 2).sum()) for p in ref.parameters()))
    for clip in (1e-3, None):
        model, _ = make(cfg=cfg)
        before = [p.numpy() for p in model.parameters()]
        opt = nf.optim.SGD(model.parameters(), lr=1.0)
        t = Trainer(model, opt, [batch], max_steps=1, schedule="constant", grad_clip=clip, progress=False)
        t.fit()
        step = math.sqrt(sum(float(((b - p.numpy()).astype(np.float64) ** 2).sum())
                             for b, p in zip(before, model.parameters())))
        if clip is None:
            assert "grad_norm" not in t.history[0]
            assert abs(step - norm) < 1e-4 * norm
        else:
            assert norm > 100 * clip
            assert abs(t.history[0]["grad_norm"] - norm) < 1e-5 * norm
            assert abs(step - clip) < 1e-3 * clip, (step, clip)


# ---------------------------------------------------------------------------------------- budgets, eval


def test_max_seconds_stops_the_run():
    def slow_loss(model, batch):
        time.sleep(0.02)
        return lm_loss(model, batch)

    t = make_trainer(*make(), loss_fn=slow_loss, max_steps=10_000, max_seconds=0.25, eval_every=None)
    h = t.fit()
    assert h.stop_reason == "max_seconds"
    assert 2 <= t.step < 100 and t.elapsed >= 0.25
    assert h[t.step - 2]["time"] < 0.25  # it stopped at the first step that ended past the budget
    assert "val_loss" in h[-1] and h[-1]["step"] == t.step  # and still evaluated at the end
    # a time budget alone: a constant schedule needs no length, a decaying one must be told its length
    t = make_trainer(*make(), max_steps=None, max_seconds=0.05, schedule="constant", eval_batches=None,
                     eval_every=None)
    assert t.fit().stop_reason == "max_seconds"
    t = make_trainer(*make(), max_steps=None, max_seconds=0.05, decay_steps=100, eval_batches=None,
                     eval_every=None)
    assert t.fit().stop_reason == "max_seconds"


def test_evaluation_uses_the_same_fixed_batches_and_does_not_change_training():
    evals = fixed_batches(VAL, 3, 4, 8)
    assert all((a[0] == b[0]).all() for a, b in zip(evals, fixed_batches(VAL, 3, 4, 8)))
    # lr 0: the weights never move, so every evaluation must give exactly the same number ...
    t = make_trainer(*make(), schedule=lambda s: 0.0, warmup_steps=None, max_steps=6, eval_every=2,
                     eval_batches=evals)
    t.fit()
    vals = [r["val_loss"] for r in t.history if "val_loss" in r]
    assert len(vals) == 4 and len(set(vals)) == 1
    # ... the mean loss over those batches in eval mode (no dropout)
    t.model.eval()
    with nf.no_grad():
        want = float(np.mean([t.model(x, y)[1].item() for x, y in evals]))
    assert abs(vals[0] - want) < 1e-6
    # evaluating every step or only at the ends gives the same training run, even with a loss_fn that draws
    # from the global generator, which dropout in training also uses (the random state is put back after eval)
    def drawing_loss(model, batch):
        nf.rand(3)
        return lm_loss(model, batch)

    a = make_trainer(*make(), eval_every=1, loss_fn=drawing_loss)
    a.fit()
    b = make_trainer(*make(), eval_every=None, loss_fn=drawing_loss)
    b.fit()
    assert [r["loss"] for r in a.history if "loss" in r] == [r["loss"] for r in b.history if "loss" in r]
    assert sum("val_loss" in r for r in a.history) == 13 and sum("val_loss" in r for r in b.history) == 2


def test_fit_on_token_ids_is_seeded():
    runs = [nf.train.fit(*make(), TRAIN, VAL, batch_size=4, block_size=8, max_steps=5, eval_iters=2,
                         progress=False, seed=s) for s in (3, 3, 4)]
    assert untimed(runs[0]) == untimed(runs[1]) != untimed(runs[2])


# ---------------------------------------------------------------------------------------- plugging in


def test_custom_loss_fn_with_masks_metrics_and_accumulation():
    """An SFT-style loss: a dict batch with a mask (targets outside it ignored) and a metric of its own."""
    rng = np.random.default_rng(0)

    def make_batch():
        x, y = nf.data.get_batch(TRAIN, 4, 8, rng)
        return {"x": x, "y": y, "mask": (np.arange(8) >= 3)[None, :].repeat(4, 0)}  # first 3 = the "prompt"

    def masked_loss(model, batch):
        targets = np.where(batch["mask"], batch["y"], -100)
        _, loss = model(batch["x"], targets)
        return loss, {"answer_tokens": batch["mask"].sum(), "tokens": int(batch["mask"].sum())}

    train, evals = [make_batch() for _ in range(4)], [make_batch()]
    model, opt = make()
    t = Trainer(model, opt, train, loss_fn=masked_loss, eval_batches=evals, max_steps=4, grad_accum=2,
                progress=False)
    h = t.fit()
    assert [r["answer_tokens"] for r in h if "loss" in r] == [10.0] * 4  # mean of two micro-batches of 2 rows
    assert h[0]["tokens"] == 20 and t.tokens == 80 and h[-1]["val_answer_tokens"] == 20.0
    # row 0's loss: loss_fn on the two halves of batch 0 at the initial weights (train mode, seed 0), averaged
    ref, _ = make()
    nf.manual_seed(0)
    halves = [{k: v[:2] for k, v in train[0].items()}, {k: v[2:] for k, v in train[0].items()}]
    assert h[0]["loss"] == np.mean([masked_loss(ref, half)[0].item() for half in halves])
    assert "val_loss" in h[0] and math.isfinite(h[-1]["val_loss"])
    # a callback can stop the run
    t = Trainer(*make(), train, loss_fn=masked_loss, max_steps=10, progress=False,
                callbacks=[lambda tr, row: row["step"] == 1])
    assert t.fit().stop_reason == "callback" and t.step == 2


def test_train_step_can_be_overridden():
    """A step that is not one loss (e.g. several optimisation passes on one batch, as GRPO does)."""

    class TwoPasses(Trainer):
        def train_step(self, batch):
            first = super().train_step(batch)
            second = super().train_step(batch)
            return {**second, "first_loss": first["loss"]}

    t = TwoPasses(*make(), RandomBatches(TRAIN, 4, 8), max_steps=3, progress=False)
    h = t.fit()
    assert t.step == 3 and t.optimizer.state_dict()["state"][0][2] == 6  # 6 Adam updates in 3 trainer steps
    assert all(r["loss"] < r["first_loss"] for r in h)  # the second pass on the same batch fits it better


def test_loss_fn_mistakes_are_named():
    def vector_loss(model, batch):
        logits, _ = model(*batch)
        return logits

    with pytest.raises(TypeError, match=r"scalar loss Tensor.*shape \(4, 8, 17\)"):
        make_trainer(*make(), loss_fn=vector_loss).fit()
    with pytest.raises(nf.InvalidArgumentError, match=r"\['lr'\] clash"):
        make_trainer(*make(), loss_fn=lambda m, b: (lm_loss(m, b), {"lr": 1.0})).fit()


# ---------------------------------------------------------------------------------------- output


def test_progress_bar_and_plain_prints(capsys, monkeypatch):
    make_trainer(*make(), progress=True, log_every=2, max_steps=4).fit()
    out, err = capsys.readouterr()
    assert "4/4" in err and "loss" in err and "| lr " in err and "tok/s" in err  # the bar, on stderr
    assert out.startswith("step 0: val_loss") and "step 4: val_loss" in out  # evaluations, one line each
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # tqdm not installed
    make_trainer(*make(), progress=True, log_every=2, max_steps=4).fit()
    out = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in out] == ["step 0", "step 0", "step 1", "step 3", "step 4"], out
    assert "val_loss" in out[0] and "val_loss" in out[4]
    assert "| lr 6.67e-03 |" in out[2] and out[2].endswith("tok/s")
    make_trainer(*make(), progress=False, max_steps=4).fit()
    assert capsys.readouterr() == ("", "")


def test_history_is_a_list_of_dicts_with_a_dataframe(monkeypatch):
    h = make_trainer(*make(), max_steps=4).fit()
    assert isinstance(h, list) and all(isinstance(r, dict) for r in h)
    steps, vals = h.column("val_loss")
    assert list(steps) == [0, 4] and h.last("val_loss") == vals[-1] == h[-1]["val_loss"]
    json.dumps(h)  # plain data
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match="pip install pandas"):
        h.to_pandas()


def test_history_to_pandas():
    pd = pytest.importorskip("pandas")
    df = make_trainer(*make(), max_steps=4).fit().to_pandas()
    assert isinstance(df, pd.DataFrame) and len(df) == 5
    assert {"step", "loss", "lr", "val_loss"} <= set(df.columns)


# ---------------------------------------------------------------------------------------- errors


def _gen():
    while True:
        yield nf.data.get_batch(TRAIN, 4, 8, np.random.default_rng(0))


@pytest.mark.parametrize("kw, err, match", [
    (dict(max_steps=None), nf.InvalidArgumentError, "give a budget"),
    (dict(max_steps=0), nf.InvalidArgumentError, "max_steps must be an integer >= 1, got 0"),
    (dict(max_seconds=-1), nf.InvalidArgumentError, "max_seconds must be a number > 0"),
    (dict(eval_batches=None), nf.InvalidArgumentError, "eval_every=4 needs held-out data"),
    (dict(eval_batches=[]), nf.InvalidArgumentError, "eval_batches is empty"),
    (dict(eval_batches=_gen()), nf.InvalidArgumentError, "must be a fixed list of batches"),
    (dict(checkpoint_every=5), nf.InvalidArgumentError, "checkpoint_every=5 needs a checkpoint path"),
    (dict(batches=_gen(), checkpoint="c.safetensors"), nf.InvalidArgumentError, "need the batches' position"),
    (dict(grad_accum=0), nf.InvalidArgumentError, "grad_accum must be an integer >= 1"),
    (dict(grad_clip=0.0), nf.InvalidArgumentError, "None turns clipping off"),
    (dict(schedule="exp"), nf.InvalidArgumentError, "'cosine', 'linear', 'constant' or a function"),
    (dict(schedule=lambda s: 1e-3), nf.InvalidArgumentError, "warmup_steps would have no effect"),
    (dict(schedule="constant", warmup_steps=None, min_lr_ratio=0.5), nf.InvalidArgumentError,
     "min_lr_ratio has no effect with schedule='constant'"),
    (dict(max_steps=None, max_seconds=1.0), nf.InvalidArgumentError, "needs a length"),
    (dict(min_lr_ratio=2.0), nf.InvalidArgumentError, r"min_lr_ratio must be in \[0, 1\]"),
    (dict(lr=-1.0), nf.InvalidArgumentError, "lr must be a finite number > 0"),
    (dict(log_every=5), nf.InvalidArgumentError, "log_every has no effect with progress=False"),
    (dict(progress="yes"), nf.InvalidArgumentError, "progress must be True or False"),
    (dict(loss_fn="ce"), TypeError, "loss_fn must be a function .* not str"),
    (dict(batches=42), TypeError, "batches must be an iterator"),
    (dict(callbacks=[1]), TypeError, "callbacks must be functions"),
    (dict(seed=1.5), TypeError, "seed must be an int or None"),
])
def test_bad_arguments_are_refused(kw, err, match):
    with pytest.raises(err, match=match):
        make_trainer(*make(), **kw)


def test_bad_fit_arguments_and_batches_are_refused(tmp_path):
    model, opt = make()
    with pytest.raises(nf.InvalidArgumentError, match="grad_accum=3 must divide batch_size=4"):
        nf.train.fit(model, opt, TRAIN, batch_size=4, block_size=8, max_steps=2, grad_accum=3)
    with pytest.raises(nf.InvalidArgumentError, match="give batch_size"):
        nf.train.fit(model, opt, TRAIN, max_steps=2)
    with pytest.raises(nf.InvalidArgumentError, match="batch_size only applies"):
        nf.train.fit(model, opt, RandomBatches(TRAIN, 4, 8), batch_size=4, max_steps=2)
    with pytest.raises(nf.InvalidArgumentError, match="eval_iters needs held-out data"):
        nf.train.fit(model, opt, TRAIN, batch_size=4, block_size=8, max_steps=2, eval_iters=5)
    with pytest.raises(nf.InvalidArgumentError, match="too few for a window"):
        RandomBatches(TRAIN[:5], 4, 8)
    with pytest.raises(nf.InvalidArgumentError, match="must divide the batch size 4"):
        make_trainer(model, opt, grad_accum=3).fit()
    with pytest.raises(TypeError, match="splits each batch along its first axis"):
        make_trainer(model, opt, batches=["not arrays"], grad_accum=2, eval_batches=None,
                     eval_every=None).fit()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        make_trainer(model, opt).fit(resume=tmp_path / "missing.safetensors")
    # a plain checkpoint (no trainer state) is refused before anything is loaded
    plain = tmp_path / "plain.safetensors"
    other, _ = make(seed=3)
    nf.checkpoint.save(plain, other)
    before = model.state_dict()
    with pytest.raises(nf.InvalidArgumentError, match="holds no trainer state"):
        make_trainer(model, opt).fit(resume=plain)
    assert all((before[k] == v).all() for k, v in model.state_dict().items())


@pytest.mark.parametrize("change, named", [(dict(n_embd=32), "n_embd=16"), (dict(n_layer=3), "n_layer=2")])
def test_checkpoint_of_another_model_shape_names_the_mismatch(tmp_path, change, named):
    ckpt = tmp_path / "small.safetensors"
    make_trainer(*make(), max_steps=2, checkpoint=ckpt).fit()
    other = GPTConfig(**{**CFG.__dict__, **change})
    model, opt = make(cfg=other)
    before = model.state_dict()
    key, value = next(iter(change.items()))
    want = rf"saved from GPT with {named}; this model: GPT with {key}={value}"
    with pytest.raises(nf.ShapeError, match=want) as e:
        make_trainer(model, opt, max_steps=4).fit(resume=ckpt)
    assert str(ckpt) in str(e.value)
    assert ("wte.weight has shape (17, 16) in the state dict but (17, 32)" in str(e.value)
            if key == "n_embd" else "h.2.attn.c_attn.weight" in str(e.value))
    assert all((before[k] == v).all() for k, v in model.state_dict().items())
