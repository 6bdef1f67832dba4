"""Per-trajectory sampling noise: exact draws from the softmax, top-p, and noise drawn in blocks equal to one
draw per token."""

import torch

from drift_lite.sampling import GumbelNoise, PerRowGumbelSampler, row_generator, trajectory_key


def test_trajectory_keys_are_stable_and_distinct():
    keys = {trajectory_key(0, f"p{i}", k) for i in range(50) for k in range(4)}
    assert len(keys) == 200 and all(0 <= key < 1 << 63 for key in keys)
    assert trajectory_key(0, "p1", 2) == trajectory_key(0, "p1", 2) != trajectory_key(1, "p1", 2)


def test_gumbel_sampler_draws_from_the_softmax():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    probs = torch.softmax(logits / 0.7, -1)[0]
    counts = torch.zeros(4)
    for key in range(4000):
        proc = PerRowGumbelSampler([key], temperature=0.7, top_p=1.0, device=torch.device("cpu"))
        counts[proc(None, logits.clone()).argmax()] += 1
    assert torch.allclose(counts / 4000, probs, atol=0.03)


def test_gumbel_noise_in_blocks_equals_one_draw_per_token():
    """Blocks of a whole turn (small vocab), of a few tokens (large vocab) or of one: the same noise, token by
    token, as one `rand(vocab)` per token from the row's generator."""
    tiny = torch.finfo(torch.float32).tiny
    for vocab, max_tokens in ((116, 40), (116, 1), (100_000, 40)):
        noise = GumbelNoise(12345, max_tokens)
        generator = row_generator(12345)
        for _ in range(9):
            uniform = torch.rand(vocab, generator=generator).clamp(min=tiny, max=1.0 - 1e-7)
            assert torch.equal(noise.next(vocab), -torch.log(-torch.log(uniform)))
        assert len(noise.block) == (max_tokens if vocab == 116 else 2)
    whole = GumbelNoise(12345, 40).whole_turn(116)  # one block holds the turn: its 40 tokens' noise
    noise = GumbelNoise(12345, 40)
    assert torch.equal(whole, torch.stack([noise.next(116) for _ in range(40)]))
    assert GumbelNoise(12345, 40).whole_turn(100_000) is None  # 40 tokens of this vocab: more than a block


def test_top_p_never_picks_outside_the_nucleus():
    logits = torch.tensor([[5.0, 4.0, -3.0, -4.0]])
    for key in range(300):
        proc = PerRowGumbelSampler([key], temperature=1.0, top_p=0.9, device=torch.device("cpu"))
        assert proc(None, logits.clone()).argmax().item() in (0, 1)
