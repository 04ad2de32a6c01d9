"""The YCSB generators: YCSB's keys, zipfian skew, latest reads, operation mixes."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.errors import UsageError
from dynctl.bench.config import BenchConfig
from dynctl.bench.report import summarize
from dynctl.ycsb import (
    InsertSequence,
    OperationStream,
    ScrambledZipfian,
    SkewedLatest,
    WorkloadError,
    Zipfian,
    fnv64,
    item_key,
    key_name,
    load_records,
    scan_expectation,
    workload,
    zeta,
)


def test_keys_are_the_ones_ycsb_generates() -> None:
    # YCSB's first hashed keys (CoreWorkload.buildKeyName with Utils.hash), as in its logs.
    assert key_name(0) == b"user6284781860667377211"
    assert key_name(1) == b"user8517097267634966620"


@given(value=st.integers(min_value=0, max_value=2**63 - 1))
@settings(max_examples=200)
def test_fnv64_is_a_non_negative_63_bit_number(value: int) -> None:
    assert 0 <= fnv64(value) <= 2**63


def test_zeta_extends_incrementally() -> None:
    assert zeta(100, 0.99) == pytest.approx(zeta(60, 0.99, 0) + zeta(100, 0.99, 60))
    assert zeta(100, 0.99, 60, zeta(60, 0.99)) == pytest.approx(zeta(100, 0.99))


def test_zipfian_prefers_low_items_with_the_expected_share() -> None:
    items, draws = 1000, 50_000
    zipfian = Zipfian(items, random.Random(7))
    counts = Counter(zipfian.next() for _ in range(draws))
    assert set(counts) <= set(range(items))
    expected_first = 1 / zeta(items, 0.99)  # P(item 0) = 1 / zeta(n)
    assert counts[0] / draws == pytest.approx(expected_first, rel=0.1)
    assert counts[0] > counts[1] > counts[10] > counts[500]


def test_zipfian_item_count_only_grows() -> None:
    zipfian = Zipfian(10, random.Random(1))
    assert all(0 <= zipfian.next(20) < 20 for _ in range(1000))
    with pytest.raises(WorkloadError):
        zipfian.next(5)
    with pytest.raises(WorkloadError):
        Zipfian(0, random.Random(1))


def test_scrambled_zipfian_spreads_hot_keys_but_stays_skewed() -> None:
    records = 10_000
    chooser = ScrambledZipfian(records, random.Random(3))
    counts = Counter(chooser.next() for _ in range(50_000))
    assert all(0 <= record < records for record in counts)
    hottest = [record for record, _ in counts.most_common(10)]
    assert hottest != sorted(hottest) or hottest[0] != 0  # scrambled, not 0, 1, 2, ...
    top_share = sum(n for _, n in counts.most_common(100)) / 50_000
    assert top_share > 0.15  # 1% of the keys take 15x their share of the requests


def test_latest_reads_the_newest_acknowledged_records_most() -> None:
    sequence = InsertSequence(records=1000)
    latest = SkewedLatest(sequence, random.Random(5))
    for _ in range(10):
        sequence.next_insert()
        sequence.acknowledge()
    counts = Counter(latest.next() for _ in range(20_000))
    assert max(counts) == 1009
    assert counts.most_common(1)[0][0] == 1009
    assert counts[1009] > counts[1000] > counts[500]


def test_processes_insert_disjoint_records_and_map_their_own_latest() -> None:
    sequences = [InsertSequence(100, procs=3, proc_index=i) for i in range(3)]
    inserted = [sequence.next_insert() for _ in range(4) for sequence in sequences]
    assert sorted(inserted) == list(range(100, 112))
    assert sequences[1].record_at(50) == 50
    assert sequences[1].record_at(100) == 101 and sequences[1].record_at(101) == 104
    with pytest.raises(WorkloadError):
        InsertSequence(100, procs=2, proc_index=2)


def test_load_records_partition_the_key_space() -> None:
    parts = [list(load_records(10, 3, i)) for i in range(3)]
    assert sorted(sum(parts, [])) == list(range(10))


@pytest.mark.parametrize(("name", "expected"), [
    ("a", {"read": 0.5, "update": 0.5}),
    ("B", {"read": 0.95, "update": 0.05}),
    ("c", {"read": 1.0}),
    ("d", {"read": 0.95, "insert": 0.05}),
    ("f", {"read": 0.5, "read_modify_write": 0.5}),
])
def test_operation_mix_follows_the_workload(name: str, expected: dict[str, float]) -> None:
    stream = OperationStream(workload(name), 1000, random.Random(11))
    draws = 20_000
    ops = Counter(stream.next()[0] for _ in range(draws))
    assert set(ops) == set(expected)
    for op, share in expected.items():
        assert ops[op] / draws == pytest.approx(share, abs=0.015)


def test_workload_d_inserts_new_records_in_sequence() -> None:
    stream = OperationStream(workload("d"), 500, random.Random(2))
    inserts = [record for op, record in (stream.next() for _ in range(5000)) if op == "insert"]
    assert inserts == list(range(500, 500 + len(inserts)))


def test_bad_workload_input_is_a_clear_error() -> None:
    with pytest.raises(WorkloadError, match="unknown workload"):
        workload("g")
    with pytest.raises(WorkloadError, match="records"):
        OperationStream(workload("a"), 0, random.Random(1))


@pytest.mark.parametrize("kwargs", [
    {"ops": 10, "duration": 5.0}, {"ops": None, "duration": None}, {"procs": 4, "concurrency": 2},
    {"value_size": 0}, {"workload": "z"}, {"workload": "e", "items_per_key": 0},
    {"workload": "e", "min_scan": 5, "max_scan": 4}, {"workload": "e", "max_scan": 1001},
    {"workload": "c", "reverse": True}, {"workload": "a", "scan_as_gets": True},
])
def test_bench_config_refuses_inconsistent_knobs(kwargs: dict) -> None:
    with pytest.raises((UsageError, WorkloadError)):
        BenchConfig(**kwargs)


def test_bench_config_shares_work_across_processes() -> None:
    config = BenchConfig(procs=3, concurrency=32)
    assert [config.share(32, i) for i in range(3)] == [11, 11, 10]


def test_summary_merges_histograms_of_every_process() -> None:
    from hdrh.histogram import HdrHistogram

    def process(latencies_us: list[int], errors: dict[str, int]) -> dict:
        histogram = HdrHistogram(1, 60_000_000, 3)
        for value in latencies_us:
            histogram.record_value(value)
        return {"histograms": {"read": histogram.encode()}, "errors": errors,
                "outcomes": {}, "completed": len(latencies_us), "failed": 0,
                "measure_start": 100.0, "measure_end": 102.0, "cpu": 0.5, "wall": 3.0}

    summary = summarize("run", [process([1000] * 90, {}), process([9000] * 10, {"read:X": 2})],
                        [(0.0, 0), (1.0, 50), (2.0, 102)])
    read = summary["operations"]["read"]
    assert read["count"] == 100 and summary["ops"] == 102
    assert read["p50"] == pytest.approx(1.0, rel=0.01)
    assert read["p99"] == pytest.approx(9.0, rel=0.01)
    assert summary["throughput"] == 51.0 and summary["errors"] == {"read:X": 2}
    assert summary["client_cpu_us_per_op"] == pytest.approx(1e6 / 100)
    assert summary["timeline"] == [[1.0, 50.0], [2.0, 52.0]]


def test_bench_help_ends_with_an_example_and_bad_flags_exit_2() -> None:
    from click.testing import CliRunner

    from dynctl.cli import main

    runner = CliRunner()
    help_text = runner.invoke(main, ["bench", "--help"]).output
    assert help_text.rstrip().splitlines()[-1].strip().startswith("dynctl ")
    both = runner.invoke(main, ["--json", "bench", "--ops", "10", "--duration", "1"])
    assert both.exit_code == 2 and '"code"' in both.output
    assert runner.invoke(main, ["bench", "--workload", "g"]).exit_code == 2
    assert runner.invoke(main, ["bench", "-w", "c", "--reverse"]).exit_code == 2


def test_workload_e_items_keep_post_order_within_a_thread() -> None:
    """Record r is post r % G of thread r // G: one partition key per thread, sort keys in
    post order, the next thread on another key."""
    keys = [item_key(record, 1000) for record in range(998, 1002)]
    assert keys[0][0] == keys[1][0] != keys[2][0] == keys[3][0]
    assert keys[0][0] == b"thread%d" % fnv64(0)
    assert [sk for _, sk in keys] == [b"\0\0\x03\xe6", b"\0\0\x03\xe7", b"\0\0\0\0", b"\0\0\0\1"]


@pytest.mark.parametrize(("record", "length", "reverse", "expected"), [
    (0, 100, False, 100), (950, 100, False, 50), (950, 10, False, 10),
    (950, 100, True, 100), (1005, 100, True, 6), (2010, 100, False, 40), (2049, 5, False, 1)])
def test_a_scan_expects_the_posts_its_thread_holds_from_the_start(
        record: int, length: int, reverse: bool, expected: int) -> None:
    """Forward scans stop at the end of the thread, or of the loaded records (2050 here);
    reverse ones at the thread's first post."""
    assert scan_expectation(record, length, 1000, 2050, reverse) == expected


def test_workload_e_is_95_percent_scans() -> None:
    stream = OperationStream(workload("e"), 1000, random.Random(3))
    ops = Counter(stream.next()[0] for _ in range(20_000))
    assert set(ops) == {"scan", "insert"}
    assert 0.94 < ops["scan"] / 20_000 < 0.96
