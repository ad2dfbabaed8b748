-- The derived targets of one run's dataset as (sample, label column, positive), streamed: `positive`
-- NULL marks a pair left out (`--uncertain ignore`); labels the run does not score are skipped.
-- internal
-- param run_id VARCHAR: the run
-- param labels VARCHAR: the run's labels in order (a list, bound as VARCHAR[])
SELECT l.sample_id, list_position($labels::VARCHAR[], l.label) - 1 AS label_column, l.positive
FROM labels l JOIN runs r ON r.dataset_id = l.dataset_id
WHERE r.run_id = $run_id AND list_position($labels::VARCHAR[], l.label) > 0;
