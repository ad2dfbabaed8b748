-- Every stored figure of one split (what the report lays out).
-- internal
-- param split VARCHAR: the split analysed
SELECT run_id, protocol, metric, label, value, ci_low, ci_high, n_resamples_skipped, params
FROM metrics WHERE split = $split
ORDER BY run_id, protocol, metric, label;
