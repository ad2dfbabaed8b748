-- One run's scores as (sample, label column, logit), streamed: `label_column` is the label's 0-based
-- position in $labels (the run's label order).
-- internal
-- param run_id VARCHAR: the run
-- param labels VARCHAR: the run's labels in order (a list, bound as VARCHAR[])
SELECT sample_id, list_position($labels::VARCHAR[], label) - 1 AS label_column, logit
FROM scores
WHERE run_id = $run_id;
