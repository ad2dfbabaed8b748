-- Every stored analysis figure of one split (what the report lays out; Grad-CAM figures apart).
-- internal
-- param split VARCHAR: the split analysed
SELECT run_id, protocol, metric, label, value, ci_low, ci_high, n_resamples_skipped, params
FROM metrics WHERE split = $split AND metric NOT LIKE 'gradcam.%'
ORDER BY run_id, protocol, metric, label;
