from services.backoff import Backoff


def test_waits_double_up_to_the_cap_within_the_jitter():
    backoff = Backoff(initial_s=1.0, max_s=8.0, jitter=0.5)
    waits = [backoff.next_wait_s() for _ in range(6)]
    for wait, base in zip(waits, [1, 2, 4, 8, 8, 8], strict=True):
        assert base * 0.5 <= wait <= min(base * 1.5, 8.0)


def test_reset_starts_again_from_the_initial_wait():
    backoff = Backoff(initial_s=0.5, max_s=10.0, jitter=0.0)
    for _ in range(4):
        backoff.next_wait_s()
    backoff.reset()
    assert backoff.next_wait_s() == 0.5
    assert backoff.upcoming_s == 1.0


def test_without_jitter_the_sequence_is_exact():
    backoff = Backoff(initial_s=0.2, max_s=1.0, jitter=0.0)
    assert [backoff.next_wait_s() for _ in range(5)] == [0.2, 0.4, 0.8, 1.0, 1.0]
