"""The C++ sampler against HuggingFace's logits processors on seeded random logits."""

import math

import pytest
import torch
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from kiln.runtime.executor import Sampler, SamplingConfig
from kiln._core import apply_penalties, apply_temperature_and_filters

VOCAB = 257


def random_logits(seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(VOCAB, generator=g) * 3


def random_tokens(seed, n):
    g = torch.Generator().manual_seed(seed + 1000)
    return torch.randint(0, VOCAB, (n,), generator=g).tolist()


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("penalty", [0.7, 1.3])
def test_repetition_penalty_matches_hf(seed, penalty):
    logits, tokens = random_logits(seed), random_tokens(seed, 30)
    ours = apply_penalties(logits.tolist(), SamplingConfig(repetition_penalty=penalty), tokens, 20)
    hf = RepetitionPenaltyLogitsProcessor(penalty)(torch.tensor([tokens]), logits[None].clone())[0]
    assert ours == hf.tolist()


def test_presence_and_frequency_penalties_follow_openai():
    logits, tokens = random_logits(7), random_tokens(7, 40)
    prompt, generated = tokens[:25], tokens[25:]
    ours = apply_penalties(logits.tolist(), SamplingConfig(presence_penalty=0.5, frequency_penalty=0.25), tokens, 25)
    expected = logits.clone()
    for t in set(generated):
        expected[t] -= generated.count(t) * 0.25 + 0.5
    assert ours == pytest.approx(expected.tolist(), abs=1e-6)
    untouched = [t for t in range(VOCAB) if t not in generated]
    assert [ours[t] for t in untouched] == [logits[t].item() for t in untouched]
    assert any(t not in generated for t in prompt)  # prompt-only tokens were left alone


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(
    ("kwargs", "warpers"),
    [
        (dict(top_k=60), [TopKLogitsWarper(60)]),
        (dict(top_p=0.9), [TopPLogitsWarper(0.9)]),
        (dict(min_p=0.05), [MinPLogitsWarper(0.05)]),
        (dict(top_k=60, top_p=0.9, min_p=0.05), [TopKLogitsWarper(60), TopPLogitsWarper(0.9), MinPLogitsWarper(0.05)]),
    ],
)
def test_filters_match_hf_warpers(seed, kwargs, warpers):
    logits = random_logits(seed) / 3
    ours = torch.tensor(apply_temperature_and_filters(logits.tolist(), SamplingConfig(temperature=0.8, **kwargs)))
    hf = logits[None].clone()
    for warper in [TemperatureLogitsWarper(0.8), *warpers]:
        hf = warper(None, hf)
    hf = hf[0]
    assert torch.equal(torch.isinf(ours), torch.isinf(hf))
    kept = ~torch.isinf(hf)
    assert 1 < kept.sum() < VOCAB  # the filter did something
    torch.testing.assert_close(ours[kept], hf[kept])


def test_greedy_is_argmax_with_lowest_index_on_ties():
    logits = random_logits(3)
    logits[[17, 99]] = logits.max() + 1.0
    token, log_prob = Sampler(VOCAB).sample(logits.tolist(), SamplingConfig(temperature=0.0))
    assert token == torch.argmax(logits).item() == 17
    assert log_prob == pytest.approx(torch.log_softmax(logits.double(), 0)[17].item(), abs=1e-6)


def test_seeded_sampling_is_reproducible_and_follows_the_distribution():
    logits = torch.log(torch.tensor([0.1, 0.2, 0.3, 0.4]))
    cfg = SamplingConfig(temperature=1.0)

    def draws(seed, n):
        sampler = Sampler(4, seed=seed)
        return [sampler.sample(logits.tolist(), cfg)[0] for _ in range(n)]

    assert draws(11, 100) == draws(11, 100)
    assert draws(11, 100) != draws(12, 100)
    many = draws(5, 20000)
    freqs = [many.count(t) / len(many) for t in range(4)]
    assert freqs == pytest.approx([0.1, 0.2, 0.3, 0.4], abs=0.015)


def test_log_prob_is_of_the_processed_distribution():
    logits = [1.0, 2.0, 4.0]
    cfg = SamplingConfig(temperature=2.0, top_k=2)
    sampler = Sampler(3, seed=9)
    seen = set()
    for _ in range(50):
        token, log_prob = sampler.sample(logits, cfg)
        seen.add(token)
        assert log_prob == pytest.approx(logits[token] / 2 - math.log(math.exp(0.5 * 2) + math.exp(0.5 * 4)), abs=1e-6)
    assert seen == {1, 2}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(temperature=-1.0), "temperature is -1 but must be a finite value >= 0 (0 = greedy)"),
        (dict(top_k=-2), "top_k is -2 but must be >= 0 (0 = off)"),
        (dict(top_p=1.5), "top_p is 1.5 but must be in (0, 1] (1 = off)"),
        (dict(min_p=-0.5), "min_p is -0.5 but must be in [0, 1] (0 = off)"),
        (dict(repetition_penalty=0.0), "repetition_penalty is 0 but must be a finite value > 0 (1 = off)"),
        (dict(presence_penalty=2.5), "presence_penalty is 2.5 but must be in [-2, 2] (0 = off)"),
        (dict(frequency_penalty=-3.0), "frequency_penalty is -3 but must be in [-2, 2] (0 = off)"),
        (dict(), None),
    ],
)
def test_validation_messages(kwargs, message):
    assert SamplingConfig(**kwargs).validate() == message
