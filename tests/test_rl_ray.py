"""GRPO and PPO rollouts on Ray actors (nf.rl.RayRollouts) give the same run as in-process: the row
independence it rests on (bit for bit, no Ray needed), then on a real local Ray (``ray.init(num_cpus=2)``):
the same rollouts, rewards, histories, weights and optimizer states for 1, 2 and 3 workers; a worker
killed mid-rollout or between steps replaced with the trajectory unchanged; a reward function's exception
raised in the driver as itself with the worker's traceback; bad settings refused clearly.

The Ray tests are skipped, saying so, where Ray is not installed (``pip install 'nanofrontier[ray]'``);
CI installs it."""

import os
import sys
import threading

import numpy as np
import pytest

import nanofrontier as nf
from nanofrontier.rl import RayRollouts
from nanofrontier.rl.grpo_trainer import GRPOTrainer
from nanofrontier.rl.ppo_trainer import PPOTrainer
from nanofrontier.rl.ray_rollouts import plan_shares, sample_share
from nanofrontier.rl.rollout import pack_rollout

V, TARGET, STOP = 16, 7, 0


def tiny(seed=0):
    nf.manual_seed(seed)
    return nf.models.GPT(vocab_size=V, block_size=32, n_layer=1, n_head=2, n_embd=32)


def prompts_of(n, seed=0):
    """Prompts of 1-4 tokens as dicts whose extra ``target`` reaches the reward functions."""
    rng = np.random.default_rng(seed)
    return [{"prompt": rng.integers(1, V, int(rng.integers(1, 5))).tolist(), "target": TARGET}
            for _ in range(n)]


def frac_target(prompt, completion, target):
    return sum(t == target for t in completion) / max(len(completion), 1)


def is_short(completion):
    return len(completion) < 4


def same_run(a, b):
    """Histories (without clock readings), every model's parameters and every optimizer's state equal
    bit for bit, and the last rollout too."""
    strip = [{k: v for k, v in r.items() if k != "time"} for r in a.history]
    assert strip == [{k: v for k, v in r.items() if k != "time"} for r in b.history]
    for (name, p), (_, q) in zip(a._run_params(), b._run_params()):
        assert np.array_equal(p.numpy(), q.numpy()), f"parameter {name} differs"
    for oa, ob in zip(a.optimizer.optimizers, b.optimizer.optimizers):
        for x, y in zip(oa.state_dict()["state"], ob.state_dict()["state"]):
            assert all(np.array_equal(u, w) for u, w in zip(x[:2], y[:2])) and x[2] == y[2]
    ra, rb = a.last_rollout, b.last_rollout
    for k in ("input_ids", "attention_mask", "completion_mask", "logprobs", "lengths", "prompt_lengths",
              "truncated", "prompt_index", "source_index"):
        assert np.array_equal(getattr(ra, k), getattr(rb, k)), k
    assert ra.completions == rb.completions and ra.prompts == rb.prompts


def grpo(backend="local", reward=(frac_target, is_short), **kw):
    m = tiny()
    kw = {"num_generations": 4, "prompts_per_step": 5, "max_new_tokens": 6, "max_steps": 3, "progress": False,
          "stop_tokens": [STOP], "top_k": 12, "diagnostics": False, "rule_fn": frac_target,
          "reward_weights": [1.0, 0.1] if isinstance(reward, tuple) else None, **kw}
    return GRPOTrainer(m, nf.optim.AdamW(m.parameters(), lr=3e-3), kw.pop("prompts", prompts_of(12)),
                       list(reward) if isinstance(reward, tuple) else reward, rollout_backend=backend, **kw)


def ppo(backend="local", reward=frac_target, **kw):
    p, v = tiny(), nf.rl.ValueModel(tiny(1))
    kw = {"prompts_per_step": 5, "minibatch_size": 5, "ppo_epochs": 2, "max_new_tokens": 6, "max_steps": 3,
          "progress": False, "kl_coef": 0.01, "stop_tokens": [STOP], "diagnostics": False, **kw}
    return PPOTrainer(p, v, nf.optim.AdamW(p.parameters() + v.parameters(), lr=3e-3),
                      kw.pop("prompts", prompts_of(12)), reward=reward, rollout_backend=backend, **kw)


# ------------------------------------------------------------------------------------------------ no Ray


def llama():
    nf.manual_seed(2)
    return nf.models.Llama(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)


@pytest.mark.parametrize("arch", ["gpt", "llama"])
def test_any_split_of_a_rollout_gives_its_rows_bit_for_bit(arch):
    """What makes the Ray rollouts exact, checked without Ray: the prompts cut into 1 .. P+1 shares as
    the workers get them (``plan_shares``), each sampled alone with its rows' ``row_seeds`` (and its
    companion row), joined — equal to ``nf.rl.rollout`` of the whole batch: tokens, log-probs, masks, bit
    for bit. Prompts of unequal lengths (a padded batch), of equal lengths, and a padded batch whose
    shares are unpadded; 1 and 3 completions per prompt."""
    m = tiny() if arch == "gpt" else llama()
    kw = {"max_new_tokens": 10, "stop_tokens": [STOP], "top_k": 10, "temperature": 0.9, "pad_token_id": 0}
    rng = np.random.default_rng(1)
    unequal = [rng.integers(1, V, int(rng.integers(1, 9))).tolist() for _ in range(7)]
    equal = [rng.integers(1, V, 5).tolist() for _ in range(7)]
    mixed = [[1, 2, 3], [4, 5, 6], [7, 8, 9], [10, 11], [12, 13, 14], [15, 1, 2], [3, 4, 5]]
    companions = 0
    for prompts in (unequal, equal, mixed):
        lengths = [len(p) for p in prompts]
        for g in (1, 3):
            whole = nf.rl.rollout(m, prompts, num_completions=g, seed=5, **kw)
            seeds = nf._core.row_seeds(5, len(prompts) * g)
            for workers in range(1, len(prompts) + 2):
                completions, logprobs = [], []
                for a, b, companion in plan_shares(lengths, g, workers):
                    if b > a:
                        companions += companion is not None
                        c, lp = sample_share(m, prompts, range(a, b), g, seeds[a * g:b * g], companion, **kw)
                        completions += c
                        logprobs += lp
                ro = pack_rollout(prompts, g, completions, logprobs, 10, [STOP], 0)
                for k in ("input_ids", "attention_mask", "completion_mask", "logprobs", "truncated"):
                    assert np.array_equal(getattr(ro, k), getattr(whole, k)), (k, g, workers)
    assert companions > 10  # the companion rows were needed (and used) in these splits
    # the plan: an unpadded share of a padded batch gets a prompt of another length; a lone row, itself
    assert plan_shares([3, 3, 2, 3], 2, 2) == [(0, 2, 2), (2, 4, None)]
    assert plan_shares([3, 3, 3], 1, 3) == [(0, 1, 0), (1, 2, 1), (2, 3, 2)]
    assert plan_shares([3], 1, 2) == [(0, 0, None), (0, 1, None)]


def test_row_seeds_refuses_a_huge_batch():
    with pytest.raises(nf.InvalidArgumentError, match="row_seeds: n must be <= 16777216"):
        nf._core.row_seeds(0, 1 << 25)


def test_bad_backend_settings_are_refused():
    with pytest.raises(nf.InvalidArgumentError, match="rollout_backend must be 'local', 'ray' or an "
                                                      "nf.rl.RayRollouts, got 'spark'"):
        grpo("spark")
    with pytest.raises(nf.InvalidArgumentError, match="num_workers must be an integer >= 1, got 0"):
        RayRollouts(num_workers=0)
    with pytest.raises(nf.InvalidArgumentError, match="num_cpus_per_worker must be a finite number"):
        RayRollouts(num_cpus_per_worker=0)
    with pytest.raises(nf.InvalidArgumentError, match="max_restarts must be an integer >= 0"):
        RayRollouts(max_restarts=-1)


def test_without_ray_the_backend_says_how_to_get_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(ImportError, match=r"needs Ray: pip install 'nanofrontier\[ray\]'"):
        grpo("ray")


# ------------------------------------------------------------------------------------------------ Ray


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'nanofrontier[ray]'): the "
                                            "Ray rollout tests are skipped")
    started = not ray.is_initialized()
    if started:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no reports to Ray's servers from a test
        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    # the workers unpickle this module's reward functions by value (they cannot import the test file)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield ray
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def local_grpo():
    tr = grpo()
    tr.train()
    return tr


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_grpo_on_ray_is_the_local_run(ray_local, local_grpo, workers):
    """5 prompts x 4 completions per step over 1, 2, 3 workers (3: shares of 2, 1, 2 prompts, half a CPU
    each): rollouts, rewards (two functions with weights, extras, the held-out rule), three steps of
    learning — all equal to the in-process run bit for bit."""
    backend = RayRollouts(num_workers=workers, num_cpus_per_worker=1 if workers < 3 else 0.5)
    tr = grpo(backend)
    try:
        tr.train()
    finally:
        backend.shutdown()
    same_run(local_grpo, tr)
    assert "rule_score" in tr.history[-1] and "reward/is_short" in tr.history[-1]
    assert backend.restarts == 0


@pytest.mark.skipif(not nf.bf16_supported(), reason="this CPU has no AVX512-BF16")
def test_grpo_on_ray_under_autocast_is_the_local_run(ray_local, local_grpo):
    """Under nf.autocast("bf16") the workers sample in bf16 too (decode reading bf16 weights): two workers
    give the in-process bf16 run bit for bit, and that run is not the float32 one."""
    with nf.autocast("bf16"):
        here = grpo()
        here.train()
        backend = RayRollouts(num_workers=2)
        tr = grpo(backend)
        try:
            tr.train()
        finally:
            backend.shutdown()
    same_run(here, tr)
    assert not np.array_equal(here.last_rollout.logprobs, local_grpo.last_rollout.logprobs), \
        "the bf16 run's log-probs are the float32 run's"


@pytest.mark.parametrize("workers", [2, 3])
def test_ppo_on_ray_is_the_local_run(ray_local, workers):
    """PPO, one completion per prompt: with 3 workers the middle share is a single row (sampled beside
    a copy of itself). With a reward model the workers sample and score only the rule."""
    local = ppo(rule_fn=is_short)
    local.train()
    backend = RayRollouts(num_workers=workers, num_cpus_per_worker=1 if workers < 3 else 0.5)
    tr = ppo(backend, rule_fn=is_short)
    try:
        tr.train()
    finally:
        backend.shutdown()
    same_run(local, tr)
    if workers == 2:
        rm = nf.rl.RewardModel(tiny(4))
        local = ppo(reward=rm, rule_fn=frac_target, max_steps=2)
        local.train()
        backend = RayRollouts(num_workers=2)
        tr = ppo(backend, reward=rm, rule_fn=frac_target, max_steps=2)
        try:
            tr.train()
        finally:
            backend.shutdown()
        same_run(local, tr)
        assert set(tr.last_rollout.worker_scores) == {"rule"}


def test_a_worker_killed_mid_rollout_is_replaced_and_the_run_is_unchanged(ray_local, local_grpo, tmp_path):
    """After step 1 a callback arms a trap: in step 2 the first worker to score a row kills its own
    process (mid-rollout: it has sampled, not returned). Its replacement loads step 2's weights and
    redoes the share. After step 2 another callback kills worker 0 from outside, between steps. The run
    equals the local one."""
    armed, fired = str(tmp_path / "armed"), str(tmp_path / "fired")

    def dies_once(prompt, completion, target):
        if os.path.exists(armed):
            try:
                os.close(os.open(fired, os.O_CREAT | os.O_EXCL))  # exactly one worker wins
                os._exit(1)
            except FileExistsError:
                pass
        return frac_target(prompt, completion, target)

    dies_once.__name__ = "frac_target"  # the history's reward/<name> keys then match the local run's

    def trap(trainer, row):
        if row["step"] == 0:
            open(armed, "w").close()
        if row["step"] == 1:
            assert os.path.exists(fired) and backend.restarts == 1
            ray_local.kill(backend.actors[0])

    backend = RayRollouts(num_workers=2)
    tr = grpo(backend, reward=(dies_once, is_short), callbacks=trap)
    try:
        tr.train()
    finally:
        backend.shutdown()
    assert backend.restarts == 2
    same_run(local_grpo, tr)


def test_max_restarts_bounds_the_replacements(ray_local, tmp_path):
    def always_dies(prompt, completion, target):
        os._exit(1)

    backend = RayRollouts(num_workers=1, max_restarts=1)
    tr = grpo(backend, reward=always_dies, rule_fn=None, max_steps=1)
    try:
        with pytest.raises(RuntimeError, match=r"GRPOTrainer: Ray rollout workers died 2 times in one "
                                               r"rollout \(max_restarts=1\)"):
            tr.train()
    finally:
        backend.shutdown()


def boom_on_prompt_3(prompt, completion, target, index):
    if index == 3:
        return 1 / 0
    return 0.0


def test_a_reward_error_in_a_worker_is_raised_as_itself(ray_local):
    """The same exception as in-process (type and message, naming the function and the row of the whole
    batch), its cause the worker's traceback down to the line that raised."""
    prompts = [dict(p, index=i) for i, p in enumerate(prompts_of(12))]
    kw = {"reward": boom_on_prompt_3, "rule_fn": None, "prompts": prompts, "shuffle": False, "max_steps": 1}
    with pytest.raises(nf.InvalidArgumentError) as here:
        grpo(**kw).train()
    backend = RayRollouts(num_workers=2)
    try:
        with pytest.raises(nf.InvalidArgumentError) as there:
            grpo(backend, **kw).train()
    finally:
        backend.shutdown()
    assert type(there.value) is type(here.value) and str(there.value) == str(here.value)
    assert "reward function 'boom_on_prompt_3' raised ZeroDivisionError on row 12 (prompt 3)" \
        in str(there.value)
    remote = str(there.value.__cause__)
    assert "ZeroDivisionError: division by zero" in remote and "return 1 / 0" in remote
    assert "sample" in remote  # the worker's frames, not the driver's


def test_ray_settings_refused_clearly(ray_local):
    backend = RayRollouts(num_workers=3)  # 3 CPUs on a 2-CPU Ray
    tr = grpo(backend, max_steps=1)
    with pytest.raises(nf.InvalidArgumentError, match=r"3 Ray workers x 1 CPUs need 3 CPUs; the Ray "
                                                      r"cluster has 2"):
        tr.train()
    with pytest.raises(nf.InvalidArgumentError, match="already serves another trainer"):
        grpo(backend)
    lock = threading.Lock()

    def locked(prompt, completion, target):
        with lock:
            return 0.0

    backend = RayRollouts(num_workers=1)
    with pytest.raises(nf.InvalidArgumentError, match="must be picklable to reach the Ray workers"):
        grpo(backend, reward=locked, max_steps=1).train()
    backend.shutdown()
