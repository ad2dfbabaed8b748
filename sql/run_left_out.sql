-- One run's (sample, label column) pairs left out of its targets (labels.positive NULL: `--uncertain ignore`);
-- `label_column` is the label's 0-based position in $labels, as in run_scores.
-- internal
-- param run_id VARCHAR: the run
-- param labels VARCHAR: the run's labels in order (a list, bound as VARCHAR[])
SELECT sc.sample_id, list_position($labels::VARCHAR[], sc.label) - 1 AS label_column
FROM scores sc
JOIN labels l ON l.sample_id = sc.sample_id AND l.label = sc.label
WHERE sc.run_id = $run_id AND l.positive IS NULL;
