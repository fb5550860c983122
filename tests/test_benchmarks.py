"""The benchmarks' own summaries: a run may leave a kind of client out and still report."""
from bench.soak import VideoTiming, latency_percentiles, video_summary


def test_a_soak_without_photo_loops_reports_no_photo_percentiles():
    assert latency_percentiles([]) == {"p50": None, "p95": None}
    assert latency_percentiles([10.0, 20.0, 30.0]) == {"p50": 20.0, "p95": 29.0}
    assert video_summary([], VideoTiming(1.0, 1.0)) == {"count": 0}
