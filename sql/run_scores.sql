-- One run's scores as (sample, label column, logit, truth): `column` is the label's 0-based position
-- in $labels (the run's label order); truth is whether the label's value is 1.
-- param run_id VARCHAR: the run
SELECT sc.sample_id, list_position($labels, sc.label) - 1 AS label_column, sc.logit,
       coalesce(l.value = 1, false) AS truth
FROM scores sc
LEFT JOIN labels l ON l.sample_id = sc.sample_id AND l.label = sc.label
WHERE sc.run_id = $run_id;
