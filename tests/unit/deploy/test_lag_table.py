from deploy.lag import PartitionLag, render_table


def test_lag_is_end_minus_committed_and_never_negative() -> None:
    assert PartitionLag("g", "t", 0, committed=4, end=10).lag == 6
    assert PartitionLag("g", "t", 0, committed=12, end=10).lag == 0


def test_table_lists_rows_and_totals_per_group() -> None:
    rows = [
        PartitionLag("g1", "t", 0, 1, 5),
        PartitionLag("g1", "t", 1, 2, 2),
        PartitionLag("g2", "t", 0, 0, 3),
    ]
    table = render_table(rows)
    header = ["GROUP", "TOPIC", "PARTITION", "COMMITTED", "END", "LAG"]
    assert table.splitlines()[0].split() == header
    assert "total lag g1: 4" in table and "total lag g2: 3" in table


def test_empty_table_says_why() -> None:
    assert "no committed offsets" in render_table([])
