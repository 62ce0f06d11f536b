"""Proximal Policy Optimization (Schulman et al., 2017) on vectorized Mario emulators.

Read it like CleanRL's ppo_atari.py: the config, then `gae`, then `ppo_loss`,
then `train`: collect `num_steps` steps from every env with one batched forward
pass per step, compute advantages with GAE, then a few epochs of minibatch
updates on the clipped objective. Logging, checkpoints, plots and videos are the
shared ones in training.py, as for DDQN.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mario_rl.checkpoint import load_optimizer, optimizer_state, prefixed, set_torch_rng, torch_rng_tensors, unprefixed
from mario_rl.envs import Preprocessing, finished_episodes, make_vec_env
from mario_rl.errors import UserError
from mario_rl.nets import ActorCritic
from mario_rl.policy import save_policy
from mario_rl.training import Run, TrainConfig


@dataclass
class PPOConfig(TrainConfig):
    """PPO with CleanRL's Atari settings, adjusted for Mario where noted."""

    actions: str = "simple"
    """action set: right, right_only, simple or complex"""
    envs: int = 16
    """parallel emulators (grouped into one process per core when they divide evenly)"""
    num_steps: int = 128
    """steps per env in each rollout"""
    env_parts: int = 0
    """the envs step in this many parts, in turns, so the learner's forward pass overlaps emulation
    (0: two when --envs is even and at least 4, else one; docs/performance.md)"""
    lr: float = 2.5e-4
    """Adam learning rate, annealed linearly to 0 when --anneal-lr"""
    anneal_lr: bool = True
    """anneal the learning rate linearly over the run"""
    gamma: float = 0.9
    """discount factor (0.9 as in the tutorial; under sticky actions 0.99 with --reward-scale 0.01 did better
    on 1-2: docs/results/1-2.md)"""
    gae_lambda: float = 0.95
    """lambda of generalized advantage estimation"""
    num_minibatches: int = 4
    """minibatches per epoch"""
    update_epochs: int = 4
    """epochs over each rollout"""
    clip_coef: float = 0.1
    """the surrogate clipping coefficient"""
    clip_vloss: bool = True
    """clip the value loss too"""
    ent_coef: float = 0.01
    """entropy bonus coefficient"""
    vf_coef: float = 0.5
    """value loss coefficient"""
    max_grad_norm: float = 0.5
    """gradient clipping norm"""
    reward_scale: float = 0.05
    """rewards are multiplied by this (a 4-frame step can earn up to 60)"""
    micro_batch: int = 128
    """samples per forward/backward pass; a minibatch's gradient is summed over them (same update, less time)"""
    precision: str = "auto"
    """the convolutions' arithmetic: fp32, bf16 (autocast; weights, optimizer and heads stay float32) or auto
    (bf16 where the CPU computes bfloat16 natively, else fp32; docs/performance.md)"""
    demo: Path | None = None
    """a demonstration (mario-rl explore's demo.json): start episodes along it, moving back as the agent learns"""
    demo_order: str = "backward"
    """backward (near the flag first, moving back as the agent clears), uniform (anywhere along the
    demonstration) or prioritized (anywhere, more often where it clears only sometimes); docs/design.md"""
    demo_back: int = 8
    """demonstration start states (16 frames apart) the start moves back each time"""
    demo_behind: float = 0.3
    """share of the demonstration starts drawn from anywhere after the current ones (the stretches
    already learned), the rest from the current ones; 0 is Salimans and Chen's"""
    demo_retry: float = 0.25
    """share of the non-reset starts taken from the agent's own states shortly before its recent deaths
    (envs.DemoStart); 0: never"""
    demo_success: float = 0.2
    """clear rate from the current starts that moves them back (backward order)"""
    bc_epochs: int = 0
    """epochs of behaviour cloning on the demonstration before the first PPO update (mario_rl.bc; a new run
    only); 0: PPO from a random network"""
    bc_passes: int = 2
    """perturbed passes along the demonstration in the cloning data (mario_rl.bc.demo_dataset)"""
    bootstrap_truncated: bool = True
    """a truncated episode (DemoStart's frame budget) is not a death: its last reward gets gamma x the value of
    its final observation, instead of the zero that ending the episode there would give"""
    device: str = "cpu"
    """where the learner runs: cpu, cuda, or auto (cuda when PyTorch sees a GPU); the emulators run on the CPU"""
    init_policy: Path | None = None
    """a policy file (same network and action set) whose weights a new run starts from: a warm start from
    another stage's policy (mario-rl campaign); ignored on resume"""

    def validate(self) -> None:
        super().validate()
        for name in ("envs", "num_steps", "num_minibatches", "update_epochs", "micro_batch"):
            if getattr(self, name) <= 0:
                raise UserError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.env_parts < 0 or self.env_parts and self.envs % self.env_parts:
            raise UserError(f"--env-parts must divide --envs ({self.envs}), got {self.env_parts}")
        if (self.envs * self.num_steps) % self.num_minibatches:
            raise UserError("--envs x --num-steps must be divisible by --num-minibatches")
        if self.lr <= 0:
            raise UserError(f"--lr must be positive, got {self.lr}")
        if not 0 < self.gamma <= 1 or not 0 <= self.gae_lambda <= 1 or self.reward_scale <= 0:
            raise UserError("--gamma must be in (0, 1], --gae-lambda in [0, 1] and --reward-scale positive")
        if self.demo_back <= 0 or not 0 < self.demo_success <= 1 or not 0 <= self.demo_behind <= 1:
            raise UserError("--demo-back must be positive, --demo-success in (0, 1] and --demo-behind in [0, 1]")
        if self.bc_epochs < 0 or self.bc_passes < 0:
            raise UserError("--bc-epochs and --bc-passes must be at least 0")
        if self.bc_epochs and self.demo is None:
            raise UserError("--bc-epochs clones a demonstration: give one with --demo")
        if not 0 <= self.demo_retry <= 1:
            raise UserError(f"--demo-retry must be in [0, 1], got {self.demo_retry}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise UserError(f"--device must be auto, cpu or cuda, got {self.device!r}")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise UserError(f"--precision must be auto, bf16 or fp32, got {self.precision!r}")
        if self.demo_order not in DEMO_ORDERS:
            raise UserError(f"--demo-order must be one of {', '.join(DEMO_ORDERS)}, got {self.demo_order!r}")


DEMO_ORDERS = ("backward", "uniform", "prioritized")


def learner_device(device: str) -> torch.device:
    """The torch device of --device (auto: cuda when PyTorch sees a GPU)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: PyTorch sees no GPU here")
    return torch.device(device)


def use_bf16(precision: str, device: torch.device = torch.device("cpu")) -> bool:
    """Whether --precision means bfloat16 convolutions on this CPU (auto on a GPU: float32)."""
    if precision != "auto":
        return precision == "bf16"
    if device.type != "cpu":
        return False
    # Without native bfloat16 instructions oneDNN emulates it, slower than float32. The check is
    # PyTorch's own (private: if a version drops it, auto means float32).
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def warm_start(agent: nn.Module, path: Path, actions: str) -> None:
    """Load another ActorCritic policy's weights into `agent` (a new run's network). With another action set
    the torso and value head are loaded and the policy head keeps its fresh initialization."""
    from mario_rl.policy import load_policy

    policy = load_policy(path)
    if policy.meta.get("network") != "ActorCritic":
        raise UserError(f"--init-policy {path}: a {policy.meta.get('network')} policy cannot start an ActorCritic run")
    weights = policy.net.state_dict()
    if policy.actions != actions:
        weights = {k: v for k, v in weights.items() if not k.startswith("policy.")}
    try:
        agent.load_state_dict(weights, strict=policy.actions == actions)
    except RuntimeError as e:
        raise UserError(f"--init-policy {path}: weights do not fit ({str(e).splitlines()[0]})") from None
    what = (
        "all weights" if policy.actions == actions else f"torso and value head ({policy.actions} -> {actions} actions)"
    )
    print(
        f"warm start from {path} ({policy.meta.get('stage')}, {policy.meta.get('steps', 0):,} steps): {what}",
        flush=True,
    )


def truncation_bonus(
    terminated: np.ndarray, truncated: np.ndarray, final_values: torch.Tensor, gamma: float
) -> torch.Tensor:
    """What to add to the last rewards of envs whose episode ended: gamma x V(final observation) where it was
    truncated and not terminated (Mario still alive when the episode was cut), 0 elsewhere. GAE treats every
    end as terminal, so without this the value target of a living Mario is cut to zero there."""
    alive = torch.from_numpy(np.asarray(truncated & ~terminated, dtype=bool))
    return torch.where(alive, gamma * final_values, torch.zeros_like(final_values))


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    dones: torch.Tensor,
    next_value: torch.Tensor,
    next_done: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation over a (T, N) rollout; returns (advantages, returns).

    dones[t] says the observation at step t began a new episode (the previous one
    terminated), so nothing is bootstrapped across it.
    """
    T = rewards.shape[0]
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(next_value)
    for t in reversed(range(T)):
        if t == T - 1:
            not_done, v_next = 1.0 - next_done, next_value
        else:
            not_done, v_next = 1.0 - dones[t + 1], values[t + 1]
        delta = rewards[t] + gamma * v_next * not_done - values[t]
        last = delta + gamma * lam * not_done * last
        advantages[t] = last
    return advantages, advantages + values


def ppo_loss(
    new_logprob: torch.Tensor, old_logprob: torch.Tensor, advantages: torch.Tensor, clip_coef: float
) -> torch.Tensor:
    """The clipped surrogate objective, as a loss: mean of max(-A r, -A clip(r, 1-e, 1+e))."""
    ratio = (new_logprob - old_logprob).exp()
    return torch.max(-advantages * ratio, -advantages * ratio.clamp(1 - clip_coef, 1 + clip_coef)).mean()


def minibatch_backward(
    agent: nn.Module,
    cfg: PPOConfig,
    obs: torch.Tensor,
    actions: torch.Tensor,
    old_logprob: torch.Tensor,
    old_value: torch.Tensor,
    returns: torch.Tensor,
    adv: torch.Tensor,
    bf16: bool = False,
) -> torch.Tensor:
    """Backpropagate one minibatch's PPO loss; return its [policy loss, value loss, entropy, clip fraction].

    The gradient is summed over micro-batches of `cfg.micro_batch` samples, each
    weighted by its share of the minibatch: the same gradient as one pass (a test
    checks it), but convolutions on a CPU run about 30% faster per sample in chunks
    of 64-128 than in one pass of 512, because the chunks stay in cache.
    """
    parts = torch.zeros(4, device=obs.device)
    micro = cfg.micro_batch if obs.device.type == "cpu" else len(obs)
    for lo in range(0, len(obs), micro):
        n = min(micro, len(obs) - lo)
        chunk = slice(lo, lo + n)  # a slice, not an index tensor: no gather, no copy
        # Channels-last frames: oneDNN's convolutions run the forward and backward pass of a
        # 2,048-sample epoch about 20% faster on this CPU than on NCHW frames (the weights stay NCHW).
        # train() stores the rollout channels-last once, so this is no copy there.
        logits, value = agent(obs[chunk].contiguous(memory_format=torch.channels_last), bf16=bf16)
        # Categorical's log_prob and entropy, written out: torch.distributions checks its
        # arguments on every call, which costs more than the arithmetic at these sizes.
        logp = logits.log_softmax(1)
        logprob = logp.gather(1, actions[chunk, None])[:, 0]
        pg_loss = ppo_loss(logprob, old_logprob[chunk], adv[chunk], cfg.clip_coef)
        if cfg.clip_vloss:
            clipped = old_value[chunk] + (value - old_value[chunk]).clamp(-cfg.clip_coef, cfg.clip_coef)
            v_loss = 0.5 * torch.max((value - returns[chunk]) ** 2, (clipped - returns[chunk]) ** 2).mean()
        else:
            v_loss = 0.5 * ((value - returns[chunk]) ** 2).mean()
        entropy = -(logp.exp() * logp).sum(1).mean()
        share = n / len(obs)  # micro-batch means, weighted into the minibatch's mean
        (share * (pg_loss - cfg.ent_coef * entropy + cfg.vf_coef * v_loss)).backward()
        with torch.no_grad():
            clipfrac = ((logprob - old_logprob[chunk]).exp().sub(1).abs() > cfg.clip_coef).float().mean()
            parts += share * torch.stack([pg_loss, v_loss, entropy, clipfrac])
    return parts


def train(cfg: PPOConfig, after_update: Callable[[int, dict], bool | None] | None = None) -> Run:
    """Train PPO on one stage; resumable; returns the finished Run.

    `after_update(step, status)`, if given, is called after every update; training stops
    early when it returns True. status: "reset_flags" (clears of the latest episodes that
    began at a real reset), "demo_done" (the demonstration curriculum has reached the
    start, or there is none) and "save_policy" (writes the current policy file, returns
    its path). The benchmark times the loop with it; `mario-rl solve` evaluates with it.
    """
    cfg.algo = "ppo"
    run = Run(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    torch.set_flush_denormal(True)  # tiny gradients late in training otherwise slow the CPU down
    pre = Preprocessing(cfg.actions)
    dev = learner_device(cfg.device)
    bf16 = use_bf16(cfg.precision, dev)
    demo, curriculum, window, priorities = None, None, None, None
    if cfg.demo is not None:
        from mario_rl.curriculum import BackwardCurriculum, StartPriorities, demo_starts
        from mario_rl.explore import load_demo, save_demo

        # The run keeps its own copy, so that --resume does not depend on the original file.
        copy = run.dir / "demo.json"
        demo = load_demo(copy if copy.exists() else Path(cfg.demo))
        if demo["stage"] != cfg.stage:
            raise UserError(f"{cfg.demo} is a demonstration of {demo['stage']}, not {cfg.stage}")
        save_demo(copy, demo)
        starts = demo_starts(len(demo["frames"]))
        if cfg.demo_order == "backward":
            curriculum = BackwardCurriculum(starts, back=cfg.demo_back, success=cfg.demo_success)
        else:
            window = (0, starts - 1, 0.0)  # every start state, for the whole run
            if cfg.demo_order == "prioritized":
                priorities = StartPriorities(starts)
                if run.resumed_state is not None:
                    from mario_rl.plots import read_episodes

                    # The clear rates behind the weights come back from episodes.csv rather than the checkpoint.
                    past = read_episodes(run.dir / "episodes.csv", extra=("flag", "start"))
                    for start, flag in zip(past.get("start", ()), past.get("flag", ())):
                        if start == start:  # not NaN: rows from before starts were recorded have none
                            priorities.record(int(start), flag > 0)
    envs = make_vec_env(
        cfg.stage,
        cfg.envs,
        cfg.actions,
        sticky=cfg.sticky,
        noop_max=cfg.noop_max,
        demo=demo,
        parts=cfg.env_parts or (2 if cfg.envs % 2 == 0 and cfg.envs >= 4 else 1),
    )
    # Each part of the envs is stepped asynchronously (make_vec_env's parts); a plain vector env is one part.
    env_parts = getattr(envs, "parts", (slice(0, cfg.envs),))
    send = getattr(envs, "step_part_async", lambda p, a: envs.step_async(a))
    receive = getattr(envs, "step_part_wait", lambda p: envs.step_wait())
    n_actions = int(envs.single_action_space.n)
    net_kwargs = {"in_channels": pre.frame_stack, "n_actions": n_actions, "frame_size": pre.frame_size}
    agent = ActorCritic(**net_kwargs).to(dev)
    optimizer = torch.optim.Adam(agent.parameters(), lr=cfg.lr, eps=1e-5)
    batch_size = cfg.envs * cfg.num_steps
    minibatch = batch_size // cfg.num_minibatches
    step, episode = 0, 0

    def annealed_lr(step: int) -> float:
        return cfg.lr * max(0.0, 1.0 - step / cfg.steps)

    print(
        f"learner on {dev}, convolutions in {'bfloat16' if bf16 else 'float32'} (--precision {cfg.precision})",
        flush=True,
    )
    if run.resumed_state is None and cfg.init_policy is not None:
        warm_start(agent, Path(cfg.init_policy), cfg.actions)
    if run.resumed_state is None and demo is not None and cfg.bc_epochs:
        from mario_rl.bc import clone, demo_dataset

        t0 = time.perf_counter()
        data = demo_dataset(
            demo,
            cfg.actions,
            sticky=cfg.sticky,
            passes=cfg.bc_passes,
            gamma=cfg.gamma,
            reward_scale=cfg.reward_scale,
            seed=cfg.seed,
        )
        t1 = time.perf_counter()
        for epoch, h in enumerate(clone(agent, data, epochs=cfg.bc_epochs, lr=cfg.lr, seed=cfg.seed), 1):
            run.log_scalars(epoch, "bc", **h)
        print(
            f"behaviour cloning: {len(data.actions):,} samples in {t1 - t0:.0f} s, {cfg.bc_epochs} epochs in "
            f"{time.perf_counter() - t1:.0f} s; accuracy {h['accuracy']:.2f}, value loss {h['value_loss']:.3f}",
            flush=True,
        )
    if run.resumed_state is not None:
        tensors, state = run.resumed_state
        agent.load_state_dict(unprefixed("agent", tensors))
        load_optimizer(optimizer, state["optim"], tensors)
        set_torch_rng(tensors)
        step, episode = state["step"], state["episode"]
        if curriculum is not None and state["curriculum"] is not None:
            curriculum.lo, curriculum.done = state["curriculum"]["lo"], state["curriculum"]["done"]
        print(f"resumed {run.dir} at step {step:,} (episode {episode})", flush=True)
        if cfg.anneal_lr:
            # The decay's end is --steps, so a new total moves the learning rate at once. Said aloud
            # because it matters: 1-2 resumed at 3.45M steps with 6M instead of 4M went from 3.4e-5
            # to 1.1e-4; its clears from a real reset were 0.30, 0.33 and 0.41 per 100k steps from 3.5M
            # to 3.8M, against 0.40, 0.40 and 0.49 for the same blocks at 4.9e-5 (one run each).
            was, now = optimizer.param_groups[0]["lr"], annealed_lr(step)
            print(f"learning rate {was:.2e} -> {now:.2e} (linear to 0 at --steps {cfg.steps:,})", flush=True)

    def save(step: int) -> None:
        tensors = prefixed("agent", agent.state_dict()) | torch_rng_tensors()
        optim = optimizer_state(optimizer, tensors, bf16_moments=True)
        lo_done = {"lo": curriculum.lo, "done": curriculum.done} if curriculum is not None else None
        run.save_checkpoint(step, tensors, {"optim": optim, "episode": episode, "curriculum": lo_done})
        save_current_policy(step)
        run.record_video(greedy, step)

    def save_current_policy(step: int) -> Path:
        # It acts as it trained, drawing from its distribution: the clear rates seen in training are
        # those of the sampling policy, and an argmax of a still-broad distribution can stall.
        save_policy(
            run.policy_path,
            agent,
            algorithm="ppo",
            network="ActorCritic",
            network_kwargs=net_kwargs,
            preprocessing=pre,
            stage=cfg.stage,
            steps=step,
            extra={"act": "sample"},
        )
        return run.policy_path

    @torch.no_grad()
    def greedy(obs: np.ndarray) -> int:
        return int(agent(torch.from_numpy(np.asarray(obs))[None].to(dev))[0].argmax(1).item())

    obs_buf = torch.zeros((cfg.num_steps, cfg.envs, *envs.single_observation_space.shape), dtype=torch.uint8)
    actions = torch.zeros((cfg.num_steps, cfg.envs), dtype=torch.long)
    logprobs, rewards, dones, values = (torch.zeros((cfg.num_steps, cfg.envs)) for _ in range(4))
    reset_flags = deque(maxlen=20)  # clears of the latest episodes that began at a real reset

    def set_demo_window() -> None:
        start = window if curriculum is None else (*curriculum.window(), cfg.demo_behind)
        weights = None if priorities is None else priorities.weights()
        envs.call("set_demo_window", *start, retry=cfg.demo_retry, weights=weights)

    if demo is not None:
        set_demo_window()
    next_obs, _ = envs.reset(seed=cfg.seed * 1_000_003 + episode)
    next_obs = torch.from_numpy(next_obs)
    next_done = torch.zeros(cfg.envs)
    start_step, t_loop = step, time.perf_counter()
    # One torch thread while the emulators run: after each batched inference, idle OpenMP threads
    # spin on the cores the emulator processes need (docs/performance.md). The update, with the
    # emulators idle, uses every thread.
    update_threads = torch.get_num_threads()
    stats = {}
    try:
        while step < cfg.steps:
            if cfg.anneal_lr:
                optimizer.param_groups[0]["lr"] = annealed_lr(step)
            torch.set_num_threads(1)
            move_window = False
            # Step t of each part: collect its step t-1 (sent a part ago: it ran while the learner
            # worked on the other parts), pick its actions, send them, go on to the next part.
            for t in range(cfg.num_steps + 1):
                for p, part in enumerate(env_parts):
                    if t > 0:
                        obs, reward, terminated, truncated, info = receive(p)
                        rewards[t - 1, part] = torch.from_numpy(np.asarray(reward, np.float32)) * cfg.reward_scale
                        next_obs[part] = torch.from_numpy(obs)
                        # Truncation (the game clock) is rare here; treating it as an end keeps GAE simple.
                        next_done[part] = torch.from_numpy((terminated | truncated).astype(np.float32))
                        if cfg.bootstrap_truncated and (truncated & ~terminated).any():
                            final = (
                                np.stack([o if o is not None else obs[i] for i, o in enumerate(info["final_obs"])])
                                if "final_obs" in info
                                else obs
                            )
                            with torch.no_grad():
                                v = agent(torch.from_numpy(final).to(dev), bf16=bf16)[1].float().cpu()
                            rewards[t - 1, part] += truncation_bonus(terminated, truncated, v, cfg.gamma)
                        step += len(obs)
                        for _, ep in finished_episodes(info):
                            episode += 1
                            run.log_episode(
                                step,
                                episode=episode,
                                **{"return": round(float(ep["r"]), 3)},
                                length=int(ep["l"]),
                                x=int(ep["x"]),
                                flag=int(ep["flag"]),
                                start=int(ep["start"]),
                            )
                            if int(ep["start"]) == 0:
                                reset_flags.append(int(ep["flag"]))
                            if curriculum is not None:
                                move_window |= curriculum.record(int(ep["start"]), bool(ep["flag"]))
                            if priorities is not None:
                                move_window |= priorities.record(int(ep["start"]), bool(ep["flag"]))
                    if t == cfg.num_steps:
                        continue
                    obs_buf[t, part], dones[t, part] = next_obs[part], next_done[part]
                    with torch.no_grad():
                        logits, value = agent(next_obs[part].to(dev), bf16=bf16)
                        logp = logits.log_softmax(1).cpu()
                        value = value.cpu()
                        action = torch.multinomial(logp.exp(), 1)[:, 0]
                    actions[t, part], values[t, part] = action, value
                    logprobs[t, part] = logp.gather(1, action[:, None])[:, 0]
                    send(p, action.numpy())
            if move_window:  # every part is idle now, as a call to the envs needs (priorities: new clear rates)
                set_demo_window()
            with torch.no_grad():
                next_value = agent(next_obs.to(dev), bf16=bf16)[1].cpu()
            torch.set_num_threads(update_threads)
            advantages, returns = gae(rewards, values, dones, next_value, next_done, cfg.gamma, cfg.gae_lambda)

            # Channels-last once per update rather than once per micro-batch and epoch: indexing a
            # channels-last tensor keeps its layout. With slices for micro-batches, the profile's
            # index and copy time in an update fell from about 12% to 6%.
            b_obs = obs_buf.reshape(-1, *obs_buf.shape[2:]).to(dev).contiguous(memory_format=torch.channels_last)
            b_actions, b_logprobs = actions.reshape(-1).to(dev), logprobs.reshape(-1).to(dev)
            b_adv, b_ret, b_val = (t.reshape(-1).to(dev) for t in (advantages, returns, values))
            clipfracs = []
            for _ in range(cfg.update_epochs):
                for mb in torch.randperm(batch_size, device=dev).split(minibatch):
                    adv = b_adv[mb]
                    adv = (adv - adv.mean()) / (adv.std() + 1e-8)  # normalized over the whole minibatch
                    optimizer.zero_grad(set_to_none=True)
                    parts = minibatch_backward(
                        agent, cfg, b_obs[mb], b_actions[mb], b_logprobs[mb], b_val[mb], b_ret[mb], adv, bf16=bf16
                    )
                    nn.utils.clip_grad_norm_(agent.parameters(), cfg.max_grad_norm)
                    optimizer.step()
                    clipfracs.append(parts[3].item())
            pg_loss, v_loss, entropy = parts[:3]
            stats = {
                "policy_loss": pg_loss.item(),
                "value_loss": v_loss.item(),
                "entropy": entropy.item(),
                "clipfrac": float(np.mean(clipfracs)),
                "lr": optimizer.param_groups[0]["lr"],
            }
            run.log_scalars(step, "losses", **stats)
            run.log_scalars(step, "charts", SPS=run.progress.sps)
            demo_status = {}
            if demo is not None:
                start = (
                    {"uniform": "anywhere"}.get(cfg.demo_order, cfg.demo_order)
                    if curriculum is None
                    else "reset"
                    if curriculum.done
                    else f"frame {curriculum.start_frame}"
                )
                demo_status = {"start": start, "clears from reset": f"{sum(reset_flags)}/{len(reset_flags)}"}
            if curriculum is not None:
                run.log_scalars(step, "charts", demo_start_frame=curriculum.start_frame)
            run.tick(step, episodes=episode, loss=stats["value_loss"], entropy=stats["entropy"], **demo_status)
            if after_update is not None:
                status = {
                    "reset_flags": list(reset_flags),
                    "demo_done": curriculum is None or curriculum.done,
                    "save_policy": lambda: save_current_policy(step),
                }
                if after_update(step, status):
                    break
            if step // cfg.checkpoint_every > (step - batch_size) // cfg.checkpoint_every and step < cfg.steps:
                save(step)
        run.finish(step, start_step, t_loop, save)
    finally:
        torch.set_num_threads(update_threads)
        envs.close()
        run.close()
    return run
