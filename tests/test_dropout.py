import pytest
import torch
from torch.nn import functional as F

from dropout import Dropout, drop_probability, dropout, random_words


def dropped_fraction(y):
    return (y == 0).double().mean().item()


@pytest.mark.parametrize("p", [0.1, 0.2, 0.5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_drops_at_rate_p_and_scales_the_rest(p, dtype):
    torch.manual_seed(0)
    x = torch.ones(1 << 20, dtype=dtype)
    y = dropout(x, p)
    assert y.dtype == dtype
    sigma = (p * (1 - p) / x.numel()) ** 0.5
    assert abs(dropped_fraction(y) - p) < 5 * sigma
    scale = torch.tensor(1 / (1 - drop_probability(p)), dtype=dtype)
    assert torch.all(y[y != 0] == scale)
    # The mean is kept, up to the scale's rounding in dtype (1 / 0.9 is 1.109375 in bf16, as in F.dropout).
    expected = (1 - drop_probability(p)) * scale.item()
    assert abs(y.double().mean().item() - expected) < 5 * sigma * scale.item()


def test_every_lane_of_a_random_word_drops_alike():
    # Four elements share each 64-bit draw; a lane with a fixed bit would drop at another rate.
    torch.manual_seed(0)
    p = 0.2  # a threshold below a lane's midpoint: its top bit alone does not decide
    y = dropout(torch.ones(1 << 20), p).view(-1, 4)
    sigma = (p * (1 - p) / y.shape[0]) ** 0.5
    for lane in range(4):
        assert abs(dropped_fraction(y[:, lane]) - p) < 5 * sigma
    # Neighbouring elements are independent: both dropped p^2 of the time.
    both = ((y[:, 0] == 0) & (y[:, 1] == 0)).double().mean().item()
    assert abs(both - p * p) < 5 * (p * p * (1 - p * p) / y.shape[0]) ** 0.5


def test_the_words_drawn_have_64_uniform_bits():
    torch.manual_seed(0)
    words = random_words(1 << 16, "cpu")
    assert words.dtype == torch.int64
    bits = (words[:, None] >> torch.arange(64)) & 1
    assert torch.all((bits.double().mean(0) - 0.5).abs() < 5 * (0.25 / words.numel()) ** 0.5)


def test_seeded_like_torch_and_moves_its_generator():
    x = torch.ones(3, 5, 7)  # 105 elements: not a multiple of four
    torch.manual_seed(1)
    state = torch.get_rng_state()
    a = dropout(x, 0.3)
    assert not torch.equal(state, torch.get_rng_state())
    b = dropout(x, 0.3)
    torch.set_rng_state(state)
    assert torch.equal(dropout(x, 0.3), a)
    assert not torch.equal(a, b)
    assert a.shape == x.shape


def test_gradient_is_the_mask():
    torch.manual_seed(0)
    x = torch.randn(64, 32, requires_grad=True)
    y = dropout(x, 0.25)
    y.sum().backward()
    expected = torch.where(y == 0, 0.0, 1 / (1 - 0.25))
    assert torch.equal(x.grad, expected)


def test_off_when_evaluating_at_p_zero_and_everything_dropped_at_p_one():
    x = torch.randn(10, 10)
    assert dropout(x, 0.5, training=False) is x
    assert dropout(x, 0.0) is x
    assert torch.equal(dropout(x, 1.0), torch.zeros_like(x))
    assert torch.equal(dropout(x, 0.999995), torch.zeros_like(x))  # rounds to 1: no division by zero
    layer = Dropout(0.5).eval()
    assert layer(x) is x


@pytest.mark.parametrize("p", [0.001, 0.9999])
def test_a_p_that_16_bits_cannot_hold_goes_to_torch(p):
    # 0.9999 is within 0.1% of itself, but its keep probability 1 - p is not.
    x = torch.ones(1000)
    torch.manual_seed(3)
    expected = F.dropout(x, p)
    torch.manual_seed(3)
    assert torch.equal(dropout(x, p), expected)


def test_bad_p_is_refused():
    with pytest.raises(ValueError, match="between 0 and 1"):
        Dropout(1.5)
