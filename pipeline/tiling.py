"""Loop-tiling arithmetic shared by the rewrites and the schedules."""


def largest_divisor(n: int, limit: int) -> int:
    """The largest divisor of `n` that is at most `limit` (1 when `limit` < 1): a tile that splits a loop evenly."""
    return max(d for d in range(1, min(n, max(limit, 1)) + 1) if n % d == 0)
